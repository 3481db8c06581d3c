//! Berth inside an existing axum application, with the application deciding who may do what.
//!
//! ```text
//! cargo run --example embed              # serve on 127.0.0.1:5050 until Ctrl-C
//! cargo run --example embed -- --demo    # serve on a free port, push and pull a blob, exit
//! ```
//!
//! The application keeps its own routes (`/`), mounts Berth's `/v2` API, and plugs its own
//! access rules into Berth through the `Authorizer` trait: here, API keys sent as bearer tokens,
//! each allowed to pull and push under one namespace. Berth asks the authorizer before every
//! operation (with the accesses the operation needs) and answers its refusals with the spec's
//! 401 and 403; it also asks the caller's `Grant` which repositories the catalog may show and
//! whether a cross-repository mount's source may be read. The application also hears of what
//! changed through an `EventSink`, with the outbox's guarantees (at least once, in commit order
//! per repository).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use axum::Router;
use axum::routing::get;
use berth::Registry;
use berth::auth::{Access, AccessRequest, Authorizer, Denial, Grant, Resource};
use berth::events::payload::PayloadFormat;
use berth::events::{Deliverer, DeliveryOptions, Endpoint, EventSink, Target};
use berth::metadata::events::{NewEvent, Subscription, Subscriptions};
use berth::metadata::memory::MemoryMetadataStore;
use berth::storage::memory::MemoryBlobStore;
use http::{HeaderValue, header};

/// The application's side of Berth's events: here, each one is printed and passed on.
struct Announcements(tokio::sync::mpsc::UnboundedSender<NewEvent>);

#[async_trait]
impl EventSink for Announcements {
    async fn deliver(&self, events: &[NewEvent]) -> Result<(), String> {
        for event in events {
            println!("event: {} in {}", event.action.as_str(), event.repository);
            self.0.send(event.clone()).map_err(|e| e.to_string())?;
        }
        Ok(())
    }
}

/// What one API key may do: pull and push in the repositories under `namespace/`.
#[derive(Debug)]
struct Namespace {
    owner: String,
    namespace: String,
}

impl Grant for Namespace {
    fn subject(&self) -> Option<&str> {
        Some(&self.owner)
    }

    fn allows(&self, access: &Access) -> bool {
        match &access.resource {
            Resource::Repository(name) => name
                .strip_prefix(&self.namespace)
                .is_some_and(|rest| rest.starts_with('/')),
            Resource::Catalog => true,
        }
    }
}

/// API keys of the application's users.
struct ApiKeys {
    keys: HashMap<String, (String, String)>,
}

#[async_trait]
impl Authorizer for ApiKeys {
    async fn authorize(&self, request: &AccessRequest<'_>) -> Result<Arc<dyn Grant>, Denial> {
        let key = request
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        let Some((owner, namespace)) = key.and_then(|k| self.keys.get(k)) else {
            return Err(Denial::Unauthenticated {
                challenge: HeaderValue::from_static("Bearer realm=\"example\""),
                message: "an API key is required".to_owned(),
            });
        };
        let grant = Namespace {
            owner: owner.clone(),
            namespace: namespace.clone(),
        };
        match request.needs.iter().find(|a| !grant.allows(a)) {
            None => Ok(Arc::new(grant)),
            Some(refused) => Err(Denial::Forbidden {
                challenge: None,
                message: format!("{owner} may not have {refused}"),
            }),
        }
    }
}

fn app(registry: Registry, authorizer: Arc<dyn Authorizer>) -> Router {
    let api = berth::http::Api::new(registry.clone()).authorizer(authorizer);
    Router::new()
        .route(
            "/",
            get(|| async { "my service, with a registry under /v2\n" }),
        )
        .merge(api.router())
        .merge(berth::http::health_router(registry))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let demo = std::env::args().any(|a| a == "--demo");
    let keys = ApiKeys {
        keys: HashMap::from([
            (
                "key-of-ana".to_owned(),
                ("ana".to_owned(), "ana".to_owned()),
            ),
            (
                "key-of-ben".to_owned(),
                ("ben".to_owned(), "ben".to_owned()),
            ),
        ]),
    };
    // A throwaway registry in memory; use the SQL and S3 stores for real data. The store writes
    // an event for every change the subscription wants, in the change's own transaction.
    let metadata = Arc::new(
        MemoryMetadataStore::new().with_subscriptions(Subscriptions(vec![Subscription {
            endpoint: "app".to_owned(),
            repositories: vec![],
            actions: vec![],
        }])),
    );
    let (announced, mut announcements) = tokio::sync::mpsc::unbounded_channel();
    let deliverer = Deliverer::new(
        metadata.clone(),
        vec![Endpoint {
            name: "app".to_owned(),
            target: Target::Sink(Arc::new(Announcements(announced))),
            format: PayloadFormat::CloudEvents,
            timeout: Duration::from_secs(10),
            max_in_flight: 4,
            batch_size: 100,
            max_attempts: 25,
            max_age: Duration::from_secs(3600),
        }],
        DeliveryOptions::default(),
    )?;
    tokio::spawn(deliverer.run(std::future::pending()));
    let registry = Registry::builder(Arc::new(MemoryBlobStore::new(8 << 20)), metadata)
        .upload_buffers(4)
        .build();
    let listener = tokio::net::TcpListener::bind(if demo {
        "127.0.0.1:0"
    } else {
        "127.0.0.1:5050"
    })
    .await?;
    let addr = listener.local_addr()?;
    println!("serving on http://{addr} (API keys: key-of-ana, key-of-ben)");
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let server = tokio::spawn(berth::http::serve(
        listener,
        app(registry, Arc::new(keys)),
        shutdown,
        Duration::from_secs(5),
    ));
    if !demo {
        server.await??;
        return Ok(());
    }

    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let refused = client.get(format!("{base}/v2/")).send().await?;
    assert_eq!(refused.status(), 401);
    println!("GET /v2/ without a key: {}", refused.status());

    let blob = b"hello from an embedded registry";
    let digest = berth::oci::DigestAlgorithm::Sha256.digest(blob);
    let pushed = client
        .post(format!("{base}/v2/ana/app/blobs/uploads/?digest={digest}"))
        .bearer_auth("key-of-ana")
        .body(&blob[..])
        .send()
        .await?;
    assert_eq!(pushed.status(), 201);
    println!("ana pushed {digest} to ana/app: {}", pushed.status());
    let created = tokio::time::timeout(Duration::from_secs(5), announcements.recv())
        .await?
        .ok_or("the event sink closed")?;
    assert_eq!(created.repository, "ana/app");

    let pulled = client
        .get(format!("{base}/v2/ana/app/blobs/{digest}"))
        .bearer_auth("key-of-ana")
        .send()
        .await?;
    assert_eq!(pulled.status(), 200);
    assert_eq!(&pulled.bytes().await?[..], blob);
    println!("ana pulled it back byte-identical");

    let denied = client
        .get(format!("{base}/v2/ana/app/blobs/{digest}"))
        .bearer_auth("key-of-ben")
        .send()
        .await?;
    assert_eq!(denied.status(), 403);
    println!("ben may not read ana/app: {}", denied.status());

    let health = client.get(format!("{base}/readyz")).send().await?;
    assert_eq!(health.status(), 200);
    println!("readiness without a key: {}", health.status());
    Ok(())
}
