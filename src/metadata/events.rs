//! The event outbox: what changed in the registry, written in the same transaction as the
//! change, one row per event and endpoint that subscribes to it, so that an acknowledged
//! change is never lost for a receiver and a refused one is never reported.
//!
//! Rows are made only for endpoints whose filters match: with no subscriptions, a change
//! writes nothing more. Delivery (`crate::events`) claims an endpoint at a time, reads its
//! due rows in commit order and settles each.

use crate::glob::glob_match;
use crate::oci::{Digest, RepositoryName, Tag};

/// What happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventAction {
    /// A manifest was pushed (one event per tag it was pushed with, or one without a tag).
    Push,
    /// A manifest was deleted: by a client, the collector, retention or a mirror's eviction.
    Delete,
    /// A tag was deleted.
    TagDelete,
    /// A blob was deleted from a repository through the API.
    BlobDelete,
    /// A repository received its first content.
    RepositoryCreate,
    /// A manifest was pulled (`GET`): only for endpoints that name this action, since it
    /// makes every pull a write.
    Pull,
}

impl EventAction {
    /// Every action.
    pub const ALL: [EventAction; 6] = [
        EventAction::Push,
        EventAction::Delete,
        EventAction::TagDelete,
        EventAction::BlobDelete,
        EventAction::RepositoryCreate,
        EventAction::Pull,
    ];

    /// The name used in configuration, in rows and in `berth events`.
    pub fn as_str(self) -> &'static str {
        match self {
            EventAction::Push => "push",
            EventAction::Delete => "delete",
            EventAction::TagDelete => "tag_delete",
            EventAction::BlobDelete => "blob_delete",
            EventAction::RepositoryCreate => "repository_create",
            EventAction::Pull => "pull",
        }
    }

    /// The action named `name`.
    pub fn parse(name: &str) -> Option<EventAction> {
        EventAction::ALL.into_iter().find(|a| a.as_str() == name)
    }
}

/// One endpoint's filters: which changes make a row for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Subscription {
    /// The endpoint's name (unique).
    pub endpoint: String,
    /// Repository globs (`crate::glob` syntax); empty for every repository.
    pub repositories: Vec<String>,
    /// Actions; empty for every action but [`EventAction::Pull`], which is only sent where
    /// named.
    pub actions: Vec<EventAction>,
}

impl Subscription {
    /// Whether a change of `action` in `repository` is for this endpoint.
    pub fn wants(&self, repository: &str, action: EventAction) -> bool {
        self.wants_action(action)
            && (self.repositories.is_empty()
                || self.repositories.iter().any(|g| glob_match(g, repository)))
    }
}

impl Subscription {
    fn wants_action(&self, action: EventAction) -> bool {
        if self.actions.is_empty() {
            action != EventAction::Pull
        } else {
            self.actions.contains(&action)
        }
    }
}

/// Every endpoint's subscription, as the metadata store applies them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Subscriptions(pub Vec<Subscription>);

impl Subscriptions {
    /// Whether any endpoint may want `action` at all (so a store can skip reading what an
    /// event of it would say).
    pub fn any_wants(&self, action: EventAction) -> bool {
        self.0.iter().any(|s| s.wants_action(action))
    }

    /// The rows to write for `events`: one per event and endpoint that wants it, in order.
    pub fn rows<'a>(
        &'a self,
        events: &'a [NewEvent],
    ) -> impl Iterator<Item = (&'a NewEvent, &'a str)> {
        events.iter().flat_map(move |e| {
            self.0
                .iter()
                .filter(move |s| s.wants(&e.repository, e.action))
                .map(move |s| (e, s.endpoint.as_str()))
        })
    }
}

/// A change to record, as the transaction that makes it knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewEvent {
    /// A random id, the same for every endpoint and every attempt (receivers deduplicate on
    /// it).
    pub id: String,
    /// What happened.
    pub action: EventAction,
    /// Where.
    pub repository: String,
    /// The manifest or blob, if the event is about one.
    pub digest: Option<String>,
    /// Its media type, where known.
    pub media_type: Option<String>,
    /// Its size in bytes, where known.
    pub size: Option<u64>,
    /// The tag, for pushes with a tag and tag deletes.
    pub tag: Option<String>,
    /// Unix milliseconds.
    pub at: i64,
    /// Who asked for the change; empty for changes the registry made itself.
    pub origin: EventOrigin,
}

/// Who asked for a change through the API, as events report it (Distribution's `actor` and
/// `request`). Changes the registry makes on its own (collection, a mirror's eviction) have
/// an empty origin.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EventOrigin {
    /// The user the caller authenticated as; `None` for an anonymous caller.
    pub actor: Option<String>,
    /// The id of the request (its `X-Request-Id`).
    pub request_id: Option<String>,
    /// The client's address (behind a trusted proxy, the address the proxy names).
    pub client_addr: Option<String>,
    /// The client's `User-Agent`.
    pub user_agent: Option<String>,
}

impl NewEvent {
    /// An event about `repository`, with a fresh id.
    pub fn new(action: EventAction, repository: &RepositoryName, at: i64) -> NewEvent {
        NewEvent {
            id: uuid::Uuid::new_v4().to_string(),
            action,
            repository: repository.as_str().to_owned(),
            digest: None,
            media_type: None,
            size: None,
            tag: None,
            at,
            origin: EventOrigin::default(),
        }
    }

    /// The same, asked for by `origin`.
    pub fn by(mut self, origin: &EventOrigin) -> NewEvent {
        self.origin = origin.clone();
        self
    }

    /// The same, about `digest`.
    pub fn with_digest(mut self, digest: &Digest) -> NewEvent {
        self.digest = Some(digest.as_str().to_owned());
        self
    }

    /// The same, with the object's media type and size.
    pub fn with_object(mut self, media_type: &str, size: u64) -> NewEvent {
        self.media_type = Some(media_type.to_owned());
        self.size = Some(size);
        self
    }

    /// The same, about `tag`.
    pub fn with_tag(mut self, tag: &Tag) -> NewEvent {
        self.tag = Some(tag.as_str().to_owned());
        self
    }
}

/// Where an outbox row stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeliveryState {
    /// Not delivered yet; due at `next_attempt_at`.
    Pending,
    /// The endpoint acknowledged it.
    Delivered,
    /// Given up on after too many attempts or too long: kept, counted, replayable.
    Dead,
}

impl DeliveryState {
    /// The name stored in rows.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }

    /// The state named `name`.
    pub fn parse(name: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
        ]
        .into_iter()
        .find(|s| s.as_str() == name)
    }
}

/// One event for one endpoint, as the outbox holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The row's position: rows of one endpoint are delivered in this order per repository.
    pub seq: i64,
    /// The endpoint.
    pub endpoint: String,
    /// The event.
    pub event: NewEvent,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts started so far (an attempt counts from when it is sent).
    pub attempts: u32,
    /// When it is due next (Unix milliseconds).
    pub next_attempt_at: i64,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    /// When it was delivered or dead-lettered.
    pub settled_at: Option<i64>,
}

/// Who delivers to an endpoint, as a claim found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EndpointClaim {
    /// The claimant, until the lease it asked for.
    Held,
    /// Another replica, whose lease runs until `until` (Unix milliseconds; `None` when the
    /// claim could not tell: another replica was writing it at that moment).
    HeldElsewhere {
        /// The end of the other replica's lease.
        until: Option<i64>,
    },
}

/// What became of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeliveryOutcome {
    /// Acknowledged by the endpoint.
    Delivered,
    /// Failed; try again at `next_attempt_at`.
    Retry {
        /// Unix milliseconds.
        next_attempt_at: i64,
        /// Why it failed.
        error: String,
    },
    /// Failed for the last time: dead-lettered.
    Dead {
        /// Why it failed.
        error: String,
    },
    /// Not sent after all (its repository's group stopped at an earlier failure, or the lease
    /// was lost): the attempt counted for it before the round is given back.
    Unsent,
}

/// One endpoint's rows, counted.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EndpointBacklog {
    /// The endpoint.
    pub endpoint: String,
    /// Rows not delivered yet.
    pub pending: u64,
    /// Rows delivered and not yet pruned.
    pub delivered: u64,
    /// Dead-lettered rows.
    pub dead: u64,
    /// When the oldest pending event happened (Unix milliseconds).
    pub oldest_pending_at: Option<i64>,
}

/// Which rows `berth events` lists.
#[derive(Clone, Copy, Debug, Default)]
pub struct OutboxQuery<'a> {
    /// Only this endpoint's.
    pub endpoint: Option<&'a str>,
    /// Only rows in this state.
    pub state: Option<DeliveryState>,
    /// Only rows after this position.
    pub after: i64,
    /// Most rows to return.
    pub limit: u32,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subscription(repositories: &[&str], actions: &[EventAction]) -> Subscription {
        Subscription {
            endpoint: "hook".into(),
            repositories: repositories.iter().map(|s| s.to_string()).collect(),
            actions: actions.to_vec(),
        }
    }

    #[test]
    fn subscriptions_filter_by_repository_glob_and_action() {
        let all = subscription(&[], &[]);
        assert!(all.wants("any/thing", EventAction::BlobDelete));
        assert!(
            !all.wants("any/thing", EventAction::Pull),
            "pulls only where named"
        );
        assert!(!Subscriptions(vec![all.clone()]).any_wants(EventAction::Pull));
        let pulls = subscription(&[], &[EventAction::Pull]);
        assert!(pulls.wants("any/thing", EventAction::Pull));
        let team = subscription(&["team-a/**"], &[EventAction::Push]);
        assert!(team.wants("team-a/app/web", EventAction::Push));
        assert!(!team.wants("team-a/app/web", EventAction::Delete));
        assert!(!team.wants("team-b/app", EventAction::Push));
        for action in EventAction::ALL {
            assert_eq!(EventAction::parse(action.as_str()), Some(action));
        }
        assert_eq!(EventAction::parse("pulled"), None);
    }

    #[test]
    fn rows_are_one_per_event_and_wanting_endpoint_in_order() {
        let subs = Subscriptions(vec![
            Subscription {
                endpoint: "a".into(),
                ..subscription(&[], &[])
            },
            Subscription {
                endpoint: "b".into(),
                ..subscription(&["x"], &[])
            },
        ]);
        let repo = |n: &str| RepositoryName::parse(n).unwrap();
        let events = [
            NewEvent::new(EventAction::Push, &repo("x"), 1),
            NewEvent::new(EventAction::Push, &repo("y"), 2),
        ];
        let rows: Vec<_> = subs
            .rows(&events)
            .map(|(e, to)| (e.repository.clone(), to))
            .collect();
        assert_eq!(
            rows,
            [("x".into(), "a"), ("x".into(), "b"), ("y".into(), "a")]
        );
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::EventOrigin;
    use crate::metadata::{MetadataStore, NewManifest, PutManifestOutcome};
    use crate::oci::{DigestAlgorithm, ParsedManifest, RepositoryName, Tag, media_type};

    /// Pushes an index with no children (so that it needs no blobs), told apart by `seed`, to
    /// `repository:tag` at `now`, announced as asked for by `announce`.
    pub(crate) async fn push_empty_index(
        store: &dyn MetadataStore,
        repository: &str,
        tag: &str,
        seed: &str,
        announce: Option<&EventOrigin>,
        now: i64,
    ) -> PutManifestOutcome {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"{}","manifests":[],"annotations":{{"seed":"{seed}"}}}}"#,
            media_type::OCI_INDEX
        );
        let parsed = ParsedManifest::parse(Some(media_type::OCI_INDEX), body.as_bytes())
            .expect("an empty index parses");
        store
            .put_manifest(NewManifest {
                repository: &RepositoryName::parse(repository).expect("a valid name"),
                digest: &DigestAlgorithm::Sha256.digest(body.as_bytes()),
                parsed: &parsed,
                content: body.as_bytes(),
                tags: &[Tag::parse(tag).expect("a valid tag")],
                immutable: &[],
                require_references: true,
                announce,
                now,
            })
            .await
            .expect("the push is stored")
    }
}
