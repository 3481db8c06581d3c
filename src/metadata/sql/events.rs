//! The event outbox (see `crate::metadata::events`): rows written inside the transactions of
//! the changes they report, the endpoint claims of delivering replicas, and the reads and
//! settlements of delivery, `berth events` and pruning.

use sqlx::Row;
use sqlx::any::AnyRow;

use super::SqlMetadataStore;
use super::dialect::{built, json_integers};
use super::rows::i64_of;
use super::transactions::{WriteTx, retrying};
use crate::metadata::events::{
    DeliveryOutcome, DeliveryState, EndpointBacklog, EndpointClaim, EventAction, EventOrigin,
    NewEvent, OutboxEvent, OutboxQuery,
};
use crate::metadata::{MetadataError, MetadataResult};

const COLUMNS: &str = "seq, event_id, endpoint, action, repository, digest, media_type, size, \
                       tag, created_at, state, attempts, next_attempt_at, last_error, settled_at, \
                       actor, request_id, client_addr, user_agent";

impl SqlMetadataStore {
    /// Writes the rows of `events` for the endpoints subscribed to them, in `tx`: they commit
    /// with the change or not at all. Nothing is written when no endpoint wants them.
    pub(super) async fn record_events(
        &self,
        tx: &mut WriteTx,
        events: &[NewEvent],
    ) -> MetadataResult<()> {
        for (event, endpoint) in self.subscriptions.rows(events) {
            sqlx::query(
                "INSERT INTO event_outbox (event_id, endpoint, action, repository, digest, \
                 media_type, size, tag, created_at, next_attempt_at, actor, request_id, \
                 client_addr, user_agent) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $9, $10, $11, $12, $13)",
            )
            .bind(event.id.as_str())
            .bind(endpoint)
            .bind(event.action.as_str())
            .bind(event.repository.as_str())
            .bind(event.digest.as_deref())
            .bind(event.media_type.as_deref())
            .bind(event.size.map(i64_of))
            .bind(event.tag.as_deref())
            .bind(event.at)
            .bind(event.origin.actor.as_deref())
            .bind(event.origin.request_id.as_deref())
            .bind(event.origin.client_addr.as_deref())
            .bind(event.origin.user_agent.as_deref())
            .execute(&mut **tx)
            .await?;
        }
        Ok(())
    }

    pub(super) fn announces(&self, action: EventAction) -> bool {
        self.subscriptions.any_wants(action)
    }

    pub(super) async fn announce(&self, events: &[NewEvent]) -> MetadataResult<()> {
        if self.subscriptions.rows(events).next().is_none() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        self.record_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn claim_event_endpoint(
        &self,
        endpoint: &str,
        owner: &str,
        lease_until: i64,
        now: i64,
    ) -> MetadataResult<EndpointClaim> {
        // The row is locked only while the lease is written: a replica that finds it locked
        // skips it (another is claiming it) instead of waiting.
        let claimed = sqlx::query(built(format!(
            "UPDATE event_endpoints SET owner = $2, lease_until = $3 WHERE name = \
             (SELECT name FROM event_endpoints WHERE name = $1 AND (owner = $2 OR lease_until < $4) {})",
            self.dialect.lock("FOR UPDATE SKIP LOCKED")
        )))
        .bind(endpoint)
        .bind(owner)
        .bind(lease_until)
        .bind(now)
        .execute(&self.pool)
        .await?;
        if claimed.rows_affected() > 0 {
            return Ok(EndpointClaim::Held);
        }
        let made = sqlx::query(
            "INSERT INTO event_endpoints (name, owner, lease_until) VALUES ($1, $2, $3) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(endpoint)
        .bind(owner)
        .bind(lease_until)
        .execute(&self.pool)
        .await?;
        if made.rows_affected() > 0 {
            return Ok(EndpointClaim::Held);
        }
        // Held by another replica (or being claimed by one): until when, so that this one
        // does not look for due rows again before it could take over.
        let held = sqlx::query("SELECT owner, lease_until FROM event_endpoints WHERE name = $1")
            .bind(endpoint)
            .fetch_optional(&self.pool)
            .await?;
        let until = match held {
            Some(row) => {
                let holder: String = row.try_get("owner")?;
                let until: i64 = row.try_get("lease_until")?;
                (holder != owner && until >= now).then_some(until)
            }
            None => None,
        };
        Ok(EndpointClaim::HeldElsewhere { until })
    }

    pub(super) async fn due_events(
        &self,
        endpoint: &str,
        now: i64,
        limit: u32,
    ) -> MetadataResult<Vec<OutboxEvent>> {
        // A row waits while an earlier row of its repository waits for a retry: receivers see
        // each repository's changes in commit order.
        retrying!(async {
            let rows = sqlx::query(built(format!(
                "SELECT {COLUMNS} FROM event_outbox o WHERE o.endpoint = $1 AND o.state = 'pending' \
                 AND o.next_attempt_at <= $2 AND NOT EXISTS (SELECT 1 FROM event_outbox p \
                 WHERE p.endpoint = o.endpoint AND p.repository = o.repository \
                 AND p.state = 'pending' AND p.seq < o.seq AND p.next_attempt_at > $2) \
                 ORDER BY o.seq LIMIT $3"
            )))
            .bind(endpoint)
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?;
            rows.iter().map(outbox_event).collect()
        }
        .await)
    }

    pub(super) async fn start_event_attempts(&self, seqs: &[i64]) -> MetadataResult<()> {
        if seqs.is_empty() {
            return Ok(());
        }
        let seqs_sql = self.dialect.integers(1);
        sqlx::query(built(format!(
            "UPDATE event_outbox SET attempts = attempts + 1 \
             WHERE seq IN {seqs_sql} AND state = 'pending'"
        )))
        .bind(json_integers(seqs))
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(super) async fn settle_events(
        &self,
        outcomes: &[(i64, DeliveryOutcome)],
        now: i64,
    ) -> MetadataResult<()> {
        if outcomes.is_empty() {
            return Ok(());
        }
        let mut tx = self.write_tx().await?;
        for (seq, outcome) in outcomes {
            let query = match outcome {
                DeliveryOutcome::Delivered => sqlx::query(
                    "UPDATE event_outbox SET state = 'delivered', \
                     settled_at = $2, last_error = NULL WHERE seq = $1 AND state = 'pending'",
                )
                .bind(*seq)
                .bind(now),
                DeliveryOutcome::Retry {
                    next_attempt_at,
                    error,
                } => sqlx::query(
                    "UPDATE event_outbox SET next_attempt_at = $2, \
                     last_error = $3 WHERE seq = $1 AND state = 'pending'",
                )
                .bind(*seq)
                .bind(*next_attempt_at)
                .bind(error.as_str()),
                DeliveryOutcome::Dead { error } => sqlx::query(
                    "UPDATE event_outbox SET state = 'dead', \
                     settled_at = $2, last_error = $3 WHERE seq = $1 AND state = 'pending'",
                )
                .bind(*seq)
                .bind(now)
                .bind(error.as_str()),
                DeliveryOutcome::Unsent => sqlx::query(
                    "UPDATE event_outbox SET attempts = attempts - 1 \
                     WHERE seq = $1 AND state = 'pending' AND attempts > 0",
                )
                .bind(*seq),
            };
            query.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(super) async fn event_backlog(
        &self,
        with_delivered: bool,
    ) -> MetadataResult<Vec<EndpointBacklog>> {
        let states = if with_delivered {
            ""
        } else {
            "WHERE state = 'pending' OR state = 'dead'"
        };
        retrying!(
            async {
                let rows = sqlx::query(built(format!(
                    "SELECT endpoint, state, COUNT(*) AS n, MIN(created_at) AS oldest \
                     FROM event_outbox {states} GROUP BY endpoint, state ORDER BY endpoint",
                )))
                .fetch_all(&self.pool)
                .await?;
                let mut backlog: Vec<EndpointBacklog> = Vec::new();
                for row in &rows {
                    let endpoint: String = row.try_get("endpoint")?;
                    let state: String = row.try_get("state")?;
                    let n: i64 = row.try_get("n")?;
                    let oldest: Option<i64> = row.try_get("oldest")?;
                    if backlog.last().is_none_or(|b| b.endpoint != endpoint) {
                        backlog.push(EndpointBacklog {
                            endpoint: endpoint.clone(),
                            ..EndpointBacklog::default()
                        });
                    }
                    let Some(entry) = backlog.last_mut() else {
                        continue;
                    };
                    let n = u64::try_from(n).unwrap_or(0);
                    match DeliveryState::parse(&state) {
                        Some(DeliveryState::Pending) => {
                            entry.pending = n;
                            entry.oldest_pending_at = oldest;
                        }
                        Some(DeliveryState::Delivered) => entry.delivered = n,
                        Some(DeliveryState::Dead) => entry.dead = n,
                        None => {
                            return Err(MetadataError::Corrupt(format!("event state {state:?}")));
                        }
                    }
                }
                Ok(backlog)
            }
            .await
        )
    }

    pub(super) async fn outbox_events(
        &self,
        query: OutboxQuery<'_>,
    ) -> MetadataResult<Vec<OutboxEvent>> {
        retrying!(
            async {
                let rows = sqlx::query(built(format!(
                    "SELECT {COLUMNS} FROM event_outbox WHERE ($1 = '' OR endpoint = $1) \
                 AND ($2 = '' OR state = $2) AND seq > $3 ORDER BY seq LIMIT $4"
                )))
                .bind(query.endpoint.unwrap_or(""))
                .bind(query.state.map_or("", DeliveryState::as_str))
                .bind(query.after)
                .bind(i64::from(query.limit))
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(outbox_event).collect()
            }
            .await
        )
    }

    pub(super) async fn replay_events(
        &self,
        endpoint: &str,
        from: i64,
        to: i64,
        now: i64,
    ) -> MetadataResult<u64> {
        let replayed = sqlx::query(
            "UPDATE event_outbox SET state = 'pending', attempts = 0, next_attempt_at = $4, \
             last_error = NULL, settled_at = NULL \
             WHERE endpoint = $1 AND seq >= $2 AND seq <= $3 AND state <> 'pending'",
        )
        .bind(endpoint)
        .bind(from)
        .bind(to)
        .bind(now)
        .execute(&self.pool)
        .await?;
        Ok(replayed.rows_affected())
    }

    pub(super) async fn prune_events(
        &self,
        delivered_before: i64,
        dead_before: i64,
        limit: u32,
    ) -> MetadataResult<u64> {
        let pruned = sqlx::query(
            "DELETE FROM event_outbox WHERE seq IN (SELECT seq FROM event_outbox \
             WHERE (state = 'delivered' AND settled_at < $1) OR (state = 'dead' AND settled_at < $2) \
             ORDER BY seq LIMIT $3)",
        )
        .bind(delivered_before)
        .bind(dead_before)
        .bind(i64::from(limit))
        .execute(&self.pool)
        .await?;
        Ok(pruned.rows_affected())
    }
}

fn outbox_event(row: &AnyRow) -> MetadataResult<OutboxEvent> {
    let corrupt =
        |what: &str, value: &str| MetadataError::Corrupt(format!("event {what} {value:?}"));
    let action: String = row.try_get("action")?;
    let state: String = row.try_get("state")?;
    let size: Option<i64> = row.try_get("size")?;
    let attempts: i64 = row.try_get("attempts")?;
    Ok(OutboxEvent {
        seq: row.try_get("seq")?,
        endpoint: row.try_get("endpoint")?,
        event: NewEvent {
            id: row.try_get("event_id")?,
            action: EventAction::parse(&action).ok_or_else(|| corrupt("action", &action))?,
            repository: row.try_get("repository")?,
            digest: row.try_get("digest")?,
            media_type: row.try_get("media_type")?,
            size: size.map(|s| u64::try_from(s).unwrap_or(0)),
            tag: row.try_get("tag")?,
            at: row.try_get("created_at")?,
            origin: EventOrigin {
                actor: row.try_get("actor")?,
                request_id: row.try_get("request_id")?,
                client_addr: row.try_get("client_addr")?,
                user_agent: row.try_get("user_agent")?,
            },
        },
        state: DeliveryState::parse(&state).ok_or_else(|| corrupt("state", &state))?,
        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        next_attempt_at: row.try_get("next_attempt_at")?,
        last_error: row.try_get("last_error")?,
        settled_at: row.try_get("settled_at")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::tests::sqlite_store;
    use crate::metadata::events::test_support::push_empty_index;
    use crate::metadata::events::{
        DeliveryOutcome, DeliveryState, EndpointClaim, EventAction, EventOrigin, OutboxQuery,
        Subscription, Subscriptions,
    };
    use crate::metadata::{MetadataStore, NewManifest, PutManifestOutcome};
    use crate::oci::{DigestAlgorithm, ParsedManifest, RepositoryName, media_type};

    fn subscriptions() -> Subscriptions {
        Subscriptions(vec![
            Subscription {
                endpoint: "all".into(),
                repositories: vec![],
                actions: vec![],
            },
            Subscription {
                endpoint: "pushes".into(),
                repositories: vec!["a/**".into()],
                actions: vec![EventAction::Push],
            },
        ])
    }

    async fn push(store: &dyn MetadataStore, repository: &str, tag: &str, seed: u32) {
        let origin = EventOrigin {
            actor: Some("alice".into()),
            request_id: Some(format!("request-{seed}")),
            ..EventOrigin::default()
        };
        let outcome = push_empty_index(
            store,
            repository,
            tag,
            &seed.to_string(),
            Some(&origin),
            1000,
        )
        .await;
        assert_eq!(outcome, PutManifestOutcome::Stored);
    }

    #[tokio::test]
    async fn rows_commit_with_the_change_and_are_delivered_in_order_per_repository() {
        let (_dir, store) = sqlite_store().await;
        let store = store.with_subscriptions(subscriptions());
        push(&store, "a/one", "v1", 1).await;
        push(&store, "a/one", "v2", 2).await;
        push(&store, "b/two", "v1", 3).await;
        let all = store.due_events("all", 1000, 100).await.unwrap();
        let seen: Vec<(&str, &str)> = all
            .iter()
            .map(|r| (r.event.repository.as_str(), r.event.action.as_str()))
            .collect();
        assert_eq!(
            seen,
            [
                ("a/one", "repository_create"),
                ("a/one", "push"),
                ("a/one", "push"),
                ("b/two", "repository_create"),
                ("b/two", "push")
            ]
        );
        let pushes = store.due_events("pushes", 1000, 100).await.unwrap();
        assert_eq!(
            pushes.len(),
            2,
            "only a/** pushes for the filtered endpoint"
        );
        assert_eq!(
            pushes[0].event.id, all[1].event.id,
            "one id for every endpoint"
        );
        assert_eq!(pushes[0].event.origin.actor.as_deref(), Some("alice"));
        assert_eq!(
            pushes[0].event.origin.request_id.as_deref(),
            Some("request-1"),
            "who asked, kept with the row"
        );

        // An attempt counts from when it starts: one that never settles still counted.
        store.start_event_attempts(&[all[0].seq]).await.unwrap();

        // A retry of a/one's first row holds back the rest of a/one, not b/two.
        let outcomes = [(
            all[0].seq,
            DeliveryOutcome::Retry {
                next_attempt_at: 5000,
                error: "answered 500".into(),
            },
        )];
        store.settle_events(&outcomes, 1000).await.unwrap();
        let due: Vec<String> = store
            .due_events("all", 2000, 100)
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.event.repository)
            .collect();
        assert_eq!(due, ["b/two", "b/two"]);
        store.start_event_attempts(&[all[3].seq]).await.unwrap();
        store
            .settle_events(&[(all[3].seq, DeliveryOutcome::Unsent)], 1000)
            .await
            .unwrap();
        assert_eq!(
            store.due_events("all", 2000, 100).await.unwrap()[0].attempts,
            0,
            "a row the round did not send gets its attempt back"
        );
        let delivered: Vec<_> = all[3..]
            .iter()
            .map(|r| (r.seq, DeliveryOutcome::Delivered))
            .collect();
        store.settle_events(&delivered, 2000).await.unwrap();
        let later = store.due_events("all", 5000, 100).await.unwrap();
        assert_eq!(later.len(), 3, "a/one is due again, in order");
        assert_eq!(later[0].attempts, 1);
        assert_eq!(later[0].last_error.as_deref(), Some("answered 500"));

        let dead = [(
            later[0].seq,
            DeliveryOutcome::Dead {
                error: "gave up".into(),
            },
        )];
        store.settle_events(&dead, 6000).await.unwrap();
        let backlog = store.event_backlog(true).await.unwrap();
        let all_backlog = backlog.iter().find(|b| b.endpoint == "all").unwrap();
        assert_eq!(
            (all_backlog.pending, all_backlog.delivered, all_backlog.dead),
            (2, 2, 1)
        );
        let gauges = store.event_backlog(false).await.unwrap();
        let all_gauges = gauges.iter().find(|b| b.endpoint == "all").unwrap();
        assert_eq!(
            (all_gauges.pending, all_gauges.delivered, all_gauges.dead),
            (2, 0, 1),
            "delivered rows are not read for the gauges"
        );
        let listed = store
            .outbox_events(OutboxQuery {
                endpoint: Some("all"),
                state: Some(DeliveryState::Dead),
                after: 0,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(
            store
                .replay_events("all", listed[0].seq, listed[0].seq, 7000)
                .await
                .unwrap(),
            1
        );
        let replayed = store.due_events("all", 7000, 100).await.unwrap();
        assert_eq!(replayed[0].event.id, listed[0].event.id);
        assert_eq!(replayed[0].attempts, 0);

        assert_eq!(store.prune_events(2001, 0, 100).await.unwrap(), 2);
        assert_eq!(store.prune_events(2001, 0, 100).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn one_replica_at_a_time_holds_an_endpoint() {
        let (_dir, store) = sqlite_store().await;
        let claim = async |owner: &str, until: i64, now: i64| {
            store
                .claim_event_endpoint("e", owner, until, now)
                .await
                .unwrap()
        };
        assert_eq!(claim("one", 100, 0).await, EndpointClaim::Held);
        assert_eq!(
            claim("two", 200, 50).await,
            EndpointClaim::HeldElsewhere { until: Some(100) },
            "and the other learns until when"
        );
        assert_eq!(claim("one", 300, 60).await, EndpointClaim::Held, "renewed");
        assert_eq!(
            claim("two", 400, 301).await,
            EndpointClaim::Held,
            "taken over"
        );
    }

    #[tokio::test]
    async fn a_refused_push_and_no_subscriptions_write_nothing() {
        let (_dir, store) = sqlite_store().await;
        push(&store, "a/one", "v1", 1).await;
        let every_row = OutboxQuery {
            limit: 100,
            ..OutboxQuery::default()
        };
        assert!(store.outbox_events(every_row).await.unwrap().is_empty());
        let store = store.with_subscriptions(subscriptions());
        let body = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","size":1}]}"#;
        let parsed = ParsedManifest::parse(Some(media_type::OCI_INDEX), body).unwrap();
        let outcome = store
            .put_manifest(NewManifest {
                repository: &RepositoryName::parse("a/new").unwrap(),
                digest: &DigestAlgorithm::Sha256.digest(body),
                parsed: &parsed,
                content: body,
                tags: &[],
                immutable: &[],
                require_references: true,
                announce: Some(&EventOrigin::default()),
                now: 1000,
            })
            .await
            .unwrap();
        assert!(matches!(
            outcome,
            PutManifestOutcome::MissingReferences { .. }
        ));
        assert!(store.outbox_events(every_row).await.unwrap().is_empty());
    }
}
