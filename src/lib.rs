//! Berth: an OCI container registry.
//!
//! Berth implements the OCI Distribution Specification v1.1 (and the Docker Registry HTTP API
//! v2). It runs as the `berth` server, or inside another program as a library:
//!
//! - [`registry::Registry`] holds a [`storage::BlobStore`] (bytes) and a
//!   [`metadata::MetadataStore`] (everything else) and implements the registry's semantics;
//! - [`http::router`] serves it as an `axum::Router` under `/v2`, and [`http::health_router`]
//!   answers liveness and readiness probes;
//! - [`oci`] has the vocabulary: digests, names, references, manifests and media types.
//!
//! Uploads stream through a fixed budget of part buffers, are hashed as they arrive, and save
//! their hash state with the session, so any process can continue them.
//!
//! # Embedding
//!
//! An in-memory registry on a free port, and a blob pushed to it with a plain HTTP client:
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use berth::Registry;
//! use berth::metadata::memory::MemoryMetadataStore;
//! use berth::oci::DigestAlgorithm;
//! use berth::storage::memory::MemoryBlobStore;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let registry = Registry::new(
//!     Arc::new(MemoryBlobStore::new(8 << 20)),
//!     Arc::new(MemoryMetadataStore::new()),
//! );
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
//! let addr = listener.local_addr().unwrap();
//! let app = berth::http::router(registry);
//! tokio::spawn(berth::http::serve(listener, app, std::future::pending(), Duration::from_secs(1)));
//!
//! let blob = b"hello, registry";
//! let digest = DigestAlgorithm::Sha256.digest(blob);
//! let client = reqwest::Client::new();
//! let pushed = client
//!     .post(format!("http://{addr}/v2/demo/blobs/uploads/?digest={digest}"))
//!     .body(&blob[..])
//!     .send()
//!     .await
//!     .unwrap();
//! assert_eq!(pushed.status(), 201);
//! let pulled = client
//!     .get(format!("http://{addr}/v2/demo/blobs/{digest}"))
//!     .send()
//!     .await
//!     .unwrap();
//! assert_eq!(&pulled.bytes().await.unwrap()[..], blob);
//! # }
//! ```
//!
//! `examples/embed.rs` mounts the router inside an existing axum application behind a custom
//! `tower` authentication layer.
//!
//! # Features
//!
//! - `sqlite`, `postgres`: the SQL metadata store ([`metadata::sql`]) for each database;
//! - `s3`: the S3 blob store ([`storage::s3`]);
//! - `cli`: the `berth` binary;
//! - `otel`: OpenTelemetry trace export from the binary (OTLP/HTTP);
//! - `auth`: Berth's own authorizers (htpasswd, ACL files, Docker token authentication) and
//!   token issuer ([`auth`]); the [`auth::Authorizer`] trait is always there;
//! - `events`: delivery of the registry's events to webhooks and to an [`events::EventSink`]
//!   of the embedding program ([`events`]); the outbox is written in every build;
//! - `ui`: the web UI (`ui`): catalog, repositories, manifests and referrers in a browser,
//!   under the same access control as the API.
//!
//! All are on by default; `--no-default-features` builds the core library with the filesystem
//! and in-memory stores.
#![warn(missing_docs)]

pub mod auth;
pub mod buffers;
pub mod client;
pub mod error;
#[cfg(feature = "events")]
pub mod events;
pub mod glob;
pub mod hmac;
pub mod http;
pub mod instruments;
#[cfg(test)]
mod layers;
pub mod metadata;
pub mod oci;
pub mod registry;
pub mod storage;
pub mod timestamps;
#[cfg(feature = "ui")]
pub mod ui;
pub mod upstream;

pub use error::{Condition, ErrorCode, RegistryError, RegistryResult};
pub use registry::{Registry, RegistryBuilder, RegistryOptions};
