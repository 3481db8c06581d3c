//! What a receiver gets: the body in one of two formats, and the signature over it.
//!
//! - CloudEvents 1.0 in structured mode (`application/cloudevents+json`, one event), or its
//!   batch form (`application/cloudevents-batch+json`, an array) when an endpoint batches.
//! - The notification envelope of CNCF Distribution
//!   (`application/vnd.docker.distribution.events.v1+json`): `{"events": [...]}` with
//!   `target.mediaType/digest/size/length/repository/url/tag`, `request`, `actor` and
//!   `source`, so that consumers written for Distribution work unchanged.

use serde_json::{Value, json};

use crate::hmac::hmac_sha256;
use crate::metadata::events::{EventAction, NewEvent};
use crate::timestamps::rfc3339_millis;

/// The body format of an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PayloadFormat {
    /// CloudEvents 1.0, structured mode.
    CloudEvents,
    /// CNCF Distribution's notification envelope.
    Distribution,
}

/// Media type of Distribution's envelope.
pub const DISTRIBUTION_MEDIA_TYPE: &str = "application/vnd.docker.distribution.events.v1+json";
/// Media type of one structured CloudEvent.
pub const CLOUDEVENT_MEDIA_TYPE: &str = "application/cloudevents+json";
/// Media type of a batch of structured CloudEvents.
pub const CLOUDEVENT_BATCH_MEDIA_TYPE: &str = "application/cloudevents-batch+json";
/// The header carrying `sha256=<hex HMAC-SHA256 of the body>` under the endpoint's secret.
pub const SIGNATURE_HEADER: &str = "x-berth-signature-256";

/// Who sends the events, as payloads name it.
#[derive(Clone, Debug, Default)]
pub struct Source {
    /// The URL clients reach the registry at, without a trailing slash, if configured:
    /// CloudEvents' `source` and Distribution's `target.url` are built on it.
    pub public_url: Option<String>,
    /// This process, for Distribution's `source.instanceID`.
    pub instance: String,
}

impl Source {
    fn uri(&self) -> String {
        self.public_url
            .clone()
            .unwrap_or_else(|| "urn:berth:registry".to_owned())
    }

    fn object_url(&self, event: &NewEvent) -> Option<String> {
        let base = self.public_url.as_deref()?;
        let digest = event.digest.as_deref()?;
        let kind = match event.action {
            EventAction::BlobDelete => "blobs",
            _ => "manifests",
        };
        Some(format!("{base}/v2/{}/{kind}/{digest}", event.repository))
    }
}

/// CloudEvents' `type` of an action.
pub fn cloudevent_type(action: EventAction) -> &'static str {
    match action {
        EventAction::Push => "dev.berth.manifest.pushed",
        EventAction::Delete => "dev.berth.manifest.deleted",
        EventAction::TagDelete => "dev.berth.tag.deleted",
        EventAction::BlobDelete => "dev.berth.blob.deleted",
        EventAction::RepositoryCreate => "dev.berth.repository.created",
        EventAction::Pull => "dev.berth.manifest.pulled",
    }
}

/// One event as a structured CloudEvent.
pub fn cloudevent(event: &NewEvent, source: &Source) -> Value {
    let subject = match (&event.tag, &event.digest) {
        (Some(tag), _) => format!("{}:{tag}", event.repository),
        (None, Some(digest)) => format!("{}@{digest}", event.repository),
        (None, None) => event.repository.clone(),
    };
    let mut data = json!({ "repository": event.repository, "action": event.action.as_str() });
    if let Some(digest) = &event.digest {
        data["digest"] = json!(digest);
    }
    if let Some(media_type) = &event.media_type {
        data["mediaType"] = json!(media_type);
    }
    if let Some(size) = event.size {
        data["size"] = json!(size);
    }
    if let Some(tag) = &event.tag {
        data["tag"] = json!(tag);
    }
    if let Some(url) = source.object_url(event) {
        data["url"] = json!(url);
    }
    if let Some(actor) = &event.origin.actor {
        data["actor"] = json!(actor);
    }
    json!({
        "specversion": "1.0",
        "id": event.id,
        "source": source.uri(),
        "type": cloudevent_type(event.action),
        "subject": subject,
        "time": rfc3339_millis(event.at),
        "datacontenttype": "application/json",
        "data": data,
    })
}

/// One event as an entry of Distribution's envelope.
pub fn distribution_event(event: &NewEvent, source: &Source) -> Value {
    // Distribution knows push, pull, delete and mount: every removal is a delete (of a tag
    // when `target.tag` is set), and a repository's creation is announced as `create`.
    let (action, method) = match event.action {
        EventAction::Push => ("push", "PUT"),
        EventAction::Delete | EventAction::TagDelete | EventAction::BlobDelete => {
            ("delete", "DELETE")
        }
        EventAction::RepositoryCreate => ("create", "PUT"),
        EventAction::Pull => ("pull", "GET"),
    };
    let mut target = json!({ "repository": event.repository });
    let media_type = match event.action {
        EventAction::BlobDelete => Some("application/octet-stream"),
        _ => event.media_type.as_deref(),
    };
    if let Some(media_type) = media_type {
        target["mediaType"] = json!(media_type);
    }
    if let Some(digest) = &event.digest {
        target["digest"] = json!(digest);
    }
    if let Some(size) = event.size {
        target["size"] = json!(size);
        target["length"] = json!(size);
    }
    if let Some(tag) = &event.tag {
        target["tag"] = json!(tag);
    }
    if let Some(url) = source.object_url(event) {
        target["url"] = json!(url);
    }
    let origin = &event.origin;
    let actor = match &origin.actor {
        Some(name) => json!({ "name": name }),
        None => json!({}),
    };
    let host = source
        .public_url
        .as_deref()
        .and_then(|u| u.split_once("://"))
        .map(|(_, rest)| rest.split('/').next().unwrap_or(rest).to_owned())
        .unwrap_or_default();
    json!({
        "id": event.id,
        "timestamp": rfc3339_millis(event.at),
        "action": action,
        "target": target,
        "request": {
            "id": origin.request_id.as_deref().unwrap_or(&event.id),
            "addr": origin.client_addr.as_deref().unwrap_or_default(),
            "host": host,
            "method": method,
            "useragent": origin.user_agent.as_deref().unwrap_or_default(),
        },
        "actor": actor,
        "source": { "addr": host, "instanceID": source.instance },
    })
}

/// The body and content type of `events` in `format` (one CloudEvent alone is sent in
/// structured mode, several as a batch).
pub fn body(
    format: PayloadFormat,
    events: &[&NewEvent],
    source: &Source,
) -> (Vec<u8>, &'static str) {
    match format {
        PayloadFormat::CloudEvents if events.len() == 1 => (
            cloudevent(events[0], source).to_string().into_bytes(),
            CLOUDEVENT_MEDIA_TYPE,
        ),
        PayloadFormat::CloudEvents => {
            let list: Vec<Value> = events.iter().map(|e| cloudevent(e, source)).collect();
            (
                Value::Array(list).to_string().into_bytes(),
                CLOUDEVENT_BATCH_MEDIA_TYPE,
            )
        }
        PayloadFormat::Distribution => {
            let list: Vec<Value> = events
                .iter()
                .map(|e| distribution_event(e, source))
                .collect();
            (
                json!({ "events": list }).to_string().into_bytes(),
                DISTRIBUTION_MEDIA_TYPE,
            )
        }
    }
}

/// The value of [`SIGNATURE_HEADER`] for `body` under `secret`.
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    format!("sha256={}", hex::encode(hmac_sha256(secret, body)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::events::EventOrigin;
    use crate::oci::{Digest, RepositoryName, Tag};

    #[test]
    fn signatures_depend_on_the_secret() {
        assert_ne!(signature(b"one", b"body"), signature(b"two", b"body"));
    }

    fn pushed() -> NewEvent {
        let digest = Digest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        NewEvent::new(
            EventAction::Push,
            &RepositoryName::parse("team/app").unwrap(),
            0,
        )
        .with_digest(&digest)
        .with_object("application/vnd.oci.image.manifest.v1+json", 512)
        .with_tag(&Tag::parse("v1").unwrap())
        .by(&EventOrigin {
            actor: Some("alice".into()),
            request_id: Some("req-1".into()),
            client_addr: Some("192.0.2.7".into()),
            user_agent: Some("docker/27.0".into()),
        })
    }

    #[test]
    fn both_formats_carry_the_event() {
        let source = Source {
            public_url: Some("https://registry.example.com".into()),
            instance: "replica-1".into(),
        };
        let event = pushed();
        let ce = cloudevent(&event, &source);
        assert_eq!(ce["specversion"], "1.0");
        assert_eq!(ce["id"], event.id.as_str());
        assert_eq!(ce["type"], "dev.berth.manifest.pushed");
        assert_eq!(ce["subject"], "team/app:v1");
        assert_eq!(ce["data"]["size"], 512);
        let (bytes, media_type) = body(PayloadFormat::Distribution, &[&event, &event], &source);
        assert_eq!(media_type, DISTRIBUTION_MEDIA_TYPE);
        let envelope: Value = serde_json::from_slice(&bytes).unwrap();
        let entry = &envelope["events"][1];
        assert_eq!(entry["action"], "push");
        assert_eq!(entry["target"]["tag"], "v1");
        assert_eq!(entry["target"]["length"], 512);
        assert_eq!(
            entry["target"]["url"],
            format!(
                "https://registry.example.com/v2/team/app/manifests/{}",
                event.digest.as_deref().unwrap()
            )
        );
        assert_eq!(entry["source"]["addr"], "registry.example.com");
        assert_eq!(entry["actor"]["name"], "alice");
        assert_eq!(entry["request"]["id"], "req-1");
        assert_eq!(entry["request"]["addr"], "192.0.2.7");
        assert_eq!(entry["request"]["useragent"], "docker/27.0");
        assert_eq!(ce["data"]["actor"], "alice");
        let anonymous = NewEvent {
            origin: EventOrigin::default(),
            ..event.clone()
        };
        let entry = distribution_event(&anonymous, &source);
        assert_eq!(
            entry["actor"],
            json!({}),
            "no actor for the registry's own changes"
        );
        assert_eq!(entry["request"]["id"], event.id.as_str());
        assert!(
            cloudevent(&anonymous, &source)["data"]
                .get("actor")
                .is_none()
        );
    }
}
