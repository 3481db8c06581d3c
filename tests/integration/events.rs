//! Events: a real HTTP receiver in the test process gets what the registry changed, signed,
//! in both payload formats, at least once and in commit order per repository, through
//! failures, timeouts, a receiver that goes away, a killed replica, a database outage and
//! several replicas delivering at once; nothing for what was refused or not subscribed to.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use reqwest::Method;
use serde::Deserialize;

use crate::util::*;

/// A webhook receiver: records every request, and answers 500 to the next `fail` requests
/// and nothing (for `hang_ms`, 3 s unless set) to the next `hang` ones.
struct Receiver {
    addr: SocketAddr,
    state: Arc<ReceiverState>,
}

#[derive(Default)]
struct ReceiverState {
    requests: Mutex<Vec<Request>>,
    fail: AtomicUsize,
    hang: AtomicUsize,
    hang_ms: AtomicU64,
    /// Requests that arrived, answered or not yet.
    arrived: AtomicUsize,
}

#[derive(Clone)]
struct Request {
    headers: HeaderMap,
    body: Bytes,
    accepted: bool,
}

impl Receiver {
    async fn start() -> Receiver {
        let state: Arc<ReceiverState> = Arc::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::clone(&state);
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let state = Arc::clone(&shared);
                async move {
                    let take = |n: &AtomicUsize| {
                        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
                            .is_ok()
                    };
                    // A request left hanging was given up on by its sender: it never counts
                    // as accepted.
                    state.arrived.fetch_add(1, Ordering::SeqCst);
                    let hung = take(&state.hang);
                    if hung {
                        let ms = match state.hang_ms.load(Ordering::SeqCst) {
                            0 => 3000,
                            ms => ms,
                        };
                        tokio::time::sleep(Duration::from_millis(ms)).await;
                    }
                    let accepted = !hung && !take(&state.fail);
                    state.requests.lock().unwrap().push(Request {
                        headers,
                        body,
                        accepted,
                    });
                    if accepted {
                        StatusCode::NO_CONTENT
                    } else {
                        StatusCode::INTERNAL_SERVER_ERROR
                    }
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.ok() });
        Receiver { addr, state }
    }

    fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    fn requests(&self) -> Vec<Request> {
        self.state.requests.lock().unwrap().clone()
    }

    /// Every event of the accepted requests (or of all, with `all`), in arrival order.
    fn events(&self, all: bool) -> Vec<serde_json::Value> {
        self.requests()
            .iter()
            .filter(|r| all || r.accepted)
            .flat_map(|r| events_in(&r.body))
            .collect()
    }
}

/// The events of one body: a CloudEvent, a batch of them, or Distribution's envelope.
fn events_in(body: &[u8]) -> Vec<serde_json::Value> {
    let value: serde_json::Value = serde_json::from_slice(body).unwrap();
    match value {
        serde_json::Value::Array(list) => list,
        serde_json::Value::Object(ref map) if map.contains_key("events") => {
            value["events"].as_array().unwrap().clone()
        }
        other => vec![other],
    }
}

/// A process of a fresh deployment with `webhooks` (TOML `[[webhook]]` entries, where
/// `@SECRET_FILE@` names a file holding `s3cr3t`) and quick polling.
fn with_webhooks(webhooks: &str, extra: &[(&str, &str)]) -> Server {
    let deployment = deployment_with_webhooks(webhooks, extra);
    deployment.start()
}

fn deployment_with_webhooks(webhooks: &str, extra: &[(&str, &str)]) -> Arc<Deployment> {
    let config = webhook_config(webhooks);
    let mut settings = vec![
        ("BERTH_CONFIG", config.as_str()),
        ("BERTH_EVENT_POLL_INTERVAL", "50ms"),
        ("BERTH_PUBLIC_URL", "https://registry.example.com"),
    ];
    settings.extend_from_slice(extra);
    Deployment::new(&settings)
}

/// A `[[webhook]]` entry named `name` for `url`, with `settings` (TOML lines) after them.
fn webhook(name: &str, url: &str, settings: &str) -> String {
    format!("[[webhook]]\nname = \"{name}\"\nurl = \"{url}\"\n{settings}")
}

/// A config file holding `webhooks`, with `@SECRET_FILE@` naming a file beside it.
fn webhook_config(webhooks: &str) -> String {
    let dir = std::env::temp_dir().join(format!("berth-events-{}", unique_seed()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("webhooks.toml");
    let secret = dir.join("secret");
    std::fs::write(&secret, "s3cr3t\n").unwrap();
    let webhooks = webhooks.replace("@SECRET_FILE@", &secret.display().to_string());
    std::fs::write(&config, webhooks).unwrap();
    config.display().to_string()
}

fn hmac_hex(secret: &[u8], body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref())
}

async fn wait_for_events(receiver: &Receiver, count: usize) -> Vec<serde_json::Value> {
    eventually(
        &format!("{count} events at the receiver"),
        Duration::from_secs(30),
        async || receiver.events(false).len() >= count,
    )
    .await;
    receiver.events(false)
}

/// What each CloudEvent says, as `type subject`.
fn summary(events: &[serde_json::Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| {
            format!(
                "{} {}",
                e["type"].as_str().unwrap(),
                e["subject"].as_str().unwrap()
            )
        })
        .collect()
}

/// A process with `webhooks` and Basic authentication of `auth_fixtures::USERS` (whose files
/// live as long as the returned value).
fn with_webhooks_and_users(webhooks: &str) -> (Server, crate::auth_fixtures::AuthFiles) {
    let files = crate::auth_fixtures::AuthFiles::new();
    let settings = files.basic_settings();
    let settings: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    (with_webhooks(webhooks, &settings), files)
}

/// A client of `server` signed in as `user` (one of `auth_fixtures::USERS`), naming itself
/// `agent` in `User-Agent`.
fn signed_in(server: &Server, user: &str, agent: &str) -> Client {
    let credentials = crate::auth_fixtures::basic(user, crate::auth_fixtures::password_of(user));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(reqwest::header::AUTHORIZATION, credentials.parse().unwrap());
    headers.insert(reqwest::header::USER_AGENT, agent.parse().unwrap());
    Client {
        base: format!("http://{}", server.addr),
        http: reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .default_headers(headers)
            .build()
            .unwrap(),
    }
}

async fn push_and_delete_events_reach_a_signed_cloudevents_webhook() {
    let receiver = Receiver::start().await;
    let (server, _users) = with_webhooks_and_users(&webhook(
        "ci",
        &receiver.url(),
        "secret_file = \"@SECRET_FILE@\"\n",
    ));
    // Alice makes every change: each event names her.
    let c = signed_in(&server, "alice", "events-test/1.0");
    let image = c.push_image("alice/app", "v1", unique_seed()).await;
    // A pull is no event unless a webhook names the action.
    c.get("/v2/alice/app/manifests/v1").await.expect(200, None);
    c.call(Method::DELETE, "/v2/alice/app/manifests/v1")
        .await
        .expect(202, None);
    let config_digest = sha256(&image.config);
    c.call(
        Method::DELETE,
        &format!("/v2/alice/app/blobs/{config_digest}"),
    )
    .await
    .expect(202, None);
    c.call(
        Method::DELETE,
        &format!("/v2/alice/app/manifests/{}", image.digest),
    )
    .await
    .expect(202, None);

    let events = wait_for_events(&receiver, 5).await;
    assert_eq!(
        summary(&events),
        [
            "dev.berth.repository.created alice/app".to_owned(),
            "dev.berth.manifest.pushed alice/app:v1".to_owned(),
            "dev.berth.tag.deleted alice/app:v1".to_owned(),
            format!("dev.berth.blob.deleted alice/app@{config_digest}"),
            format!("dev.berth.manifest.deleted alice/app@{}", image.digest),
        ]
    );
    let pushed = &events[1];
    assert_eq!(pushed["specversion"], "1.0");
    assert_eq!(pushed["source"], "https://registry.example.com");
    assert_eq!(pushed["data"]["digest"], image.digest.as_str());
    assert_eq!(pushed["data"]["size"], image.manifest.len());
    assert_eq!(
        pushed["data"]["url"],
        format!(
            "https://registry.example.com/v2/alice/app/manifests/{}",
            image.digest
        )
    );
    for event in &events {
        assert_eq!(event["data"]["actor"], "alice", "{event}");
    }
    let ids: BTreeSet<&str> = events.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), events.len(), "every event has an id of its own");
    for request in receiver.requests() {
        assert_eq!(
            request.headers["content-type"],
            "application/cloudevents+json"
        );
        let signature = request.headers["x-berth-signature-256"].to_str().unwrap();
        assert_eq!(
            signature,
            format!("sha256={}", hmac_hex(b"s3cr3t", &request.body)),
            "the signature verifies with the secret (its file's trailing newline is not part of it)"
        );
        assert_ne!(
            signature,
            format!("sha256={}", hmac_hex(b"wrong", &request.body)),
            "and not with another"
        );
    }
}

async fn refused_pushes_and_unsubscribed_changes_make_no_event() {
    let receiver = Receiver::start().await;
    let server = with_webhooks(
        &webhook(
            "team-a",
            &receiver.url(),
            "repositories = [\"team-a/**\"]\nactions = [\"push\"]\n",
        ),
        &[("BERTH_IMMUTABLE_TAGS", "**:release")],
    );
    let c = server.client();
    // Not subscribed: another repository, another action.
    c.push_image("team-b/app", "v1", unique_seed()).await;
    let first = c.push_image("team-a/app", "release", unique_seed()).await;
    c.call(Method::DELETE, "/v2/team-a/app/manifests/release")
        .await
        .expect(403, Some("DENIED"));
    // Refused: an immutable tag moved, a manifest whose blobs are missing.
    let other = c.push_image("team-a/app", "other", unique_seed()).await;
    c.put_manifest(
        "team-a/app",
        "release",
        "application/vnd.oci.image.manifest.v1+json",
        &other.manifest,
    )
    .await
    .expect(403, Some("DENIED"));
    let missing = image_manifest(
        &sha256(b"no such config"),
        14,
        &[(&sha256(b"no such layer"), 13)],
        None,
    );
    c.put_manifest(
        "team-a/app",
        "missing",
        "application/vnd.oci.image.manifest.v1+json",
        &missing,
    )
    .await
    .expect(400, Some("MANIFEST_BLOB_UNKNOWN"));
    let events = wait_for_events(&receiver, 2).await;
    // A moment for anything that should not come.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        summary(&receiver.events(true)),
        [
            "dev.berth.manifest.pushed team-a/app:release",
            "dev.berth.manifest.pushed team-a/app:other"
        ]
    );
    assert_eq!(events[0]["data"]["digest"], first.digest.as_str());
}

async fn a_failing_or_slow_receiver_gets_each_event_again_with_its_id_in_order() {
    let receiver = Receiver::start().await;
    receiver.state.fail.store(2, Ordering::SeqCst);
    receiver.state.hang.store(1, Ordering::SeqCst);
    let server = with_webhooks(
        &webhook(
            "flaky",
            &receiver.url(),
            "timeout = \"500ms\"\nactions = [\"push\"]\n",
        ),
        &[],
    );
    let c = server.client();
    let mut tags = Vec::new();
    for tag in ["t1", "t2", "t3", "t4"] {
        c.push_image("flaky/app", tag, unique_seed()).await;
        tags.push(format!("dev.berth.manifest.pushed flaky/app:{tag}"));
    }
    let delivered = wait_for_events(&receiver, 4).await;
    assert_eq!(
        summary(&delivered),
        tags,
        "commit order, through the retries"
    );
    let delivered_ids: BTreeSet<String> = delivered
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    let attempted = receiver.events(true);
    assert!(
        attempted.len() > delivered.len(),
        "the failed attempts reached the receiver too"
    );
    for event in &attempted {
        assert!(
            delivered_ids.contains(event["id"].as_str().unwrap()),
            "a retried event keeps its id: {event}"
        );
    }
}

async fn dead_letters_are_kept_listed_and_replayed() {
    let receiver = Receiver::start().await;
    receiver.state.fail.store(usize::MAX, Ordering::SeqCst);
    let (server, _users) = with_webhooks_and_users(&webhook(
        "down",
        &receiver.url(),
        "max_attempts = 2\nactions = [\"push\"]\n",
    ));
    let c = signed_in(&server, "alice", "dead-letter-test/1.0");
    let image = c.push_image("alice/dead", "v1", unique_seed()).await;
    let listed = |state: &str| events_listed(&server.deployment, &["--state", state]);
    eventually(
        "the event to be dead-lettered",
        Duration::from_secs(30),
        async || listed("dead")["events"].as_array().unwrap().len() == 1,
    )
    .await;
    let dead = listed("dead");
    let row = &dead["events"][0];
    assert_eq!(row["endpoint"], "down");
    assert_eq!(row["digest"], image.digest.as_str());
    assert_eq!(row["attempts"], 2);
    assert!(row["last_error"].as_str().unwrap().contains("500"), "{row}");
    assert_eq!(row["origin"]["actor"], "alice", "{row}");
    assert_eq!(row["origin"]["user_agent"], "dead-letter-test/1.0", "{row}");
    assert_eq!(row["origin"]["client_addr"], "127.0.0.1", "{row}");
    assert!(row["origin"]["request_id"].is_string(), "{row}");
    assert_eq!(dead["endpoints"][0]["dead"], 1);
    assert_eq!(receiver.events(true).len(), 2, "two attempts, then no more");
    let text = ok(&mut server.deployment.command(&["events", "--state", "dead"]));
    assert!(
        text.contains("down") && text.contains("alice/dead:v1") && text.contains(" alice "),
        "{text}"
    );

    receiver.state.fail.store(0, Ordering::SeqCst);
    let seq = row["seq"].as_i64().unwrap().to_string();
    ok(&mut server
        .deployment
        .command(&["events", "replay", "--endpoint", "down", "--from", &seq]));
    let delivered = wait_for_events(&receiver, 1).await;
    assert_eq!(delivered[0]["id"], row["id"], "replayed with its own id");
    eventually(
        "the replayed event to be settled",
        Duration::from_secs(10),
        async || listed("delivered")["events"].as_array().unwrap().len() == 1,
    )
    .await;
}

/// What `berth events ARGS --json` prints on `deployment`.
fn events_listed(deployment: &Deployment, args: &[&str]) -> serde_json::Value {
    let out = ok(&mut deployment.command(&[&["events"], args, &["--json"]].concat()));
    serde_json::from_str(&out).unwrap()
}

/// The rows of `deployment`'s outbox, in `seq` order.
fn outbox_rows(deployment: &Deployment) -> Vec<serde_json::Value> {
    let listed = events_listed(deployment, &["--state", "all", "--limit", "1000"]);
    listed["events"].as_array().unwrap().clone()
}

/// A deployment with `webhooks` whose processes export metrics at the returned admin client.
fn observed_deployment_with_webhooks(
    webhooks: &str,
    extra: &[(&str, &str)],
) -> (Arc<Deployment>, Client) {
    let admin = format!("127.0.0.1:{}", free_port());
    let mut settings = vec![("BERTH_ADMIN_LISTEN", admin.as_str())];
    settings.extend_from_slice(extra);
    let deployment = deployment_with_webhooks(webhooks, &settings);
    (deployment, Client::new(&format!("http://{admin}")))
}

async fn events_outlive_a_receiver_away_for_a_minute_and_a_killed_replica() {
    // The receiver is reached through a proxy that takes it away: connections refused for
    // the first half of the minute, accepted and never answered for the second.
    let receiver = Receiver::start().await;
    let proxy = TcpProxy::start(receiver.addr).await;
    proxy.disable();
    let away_since = std::time::Instant::now();
    let url = format!("http://127.0.0.1:{}/hook", proxy.port);
    // A short lease, so that the restarted replica takes over the killed one's soon; retries
    // at most 4 s apart, so that the events go out soon after the receiver is back.
    let (deployment, admin) = observed_deployment_with_webhooks(
        &webhook("away", &url, "actions = [\"push\"]\ntimeout = \"1s\"\n"),
        &[("BERTH_EVENT_LEASE", "2s"), ("BERTH_EVENT_RETRY_MAX", "4s")],
    );
    let mut server = deployment.start();
    let c = server.client();
    let mut expected = Vec::new();
    for tag in ["a", "b"] {
        c.push_image("away/app", tag, unique_seed()).await;
        expected.push(format!("dev.berth.manifest.pushed away/app:{tag}"));
    }
    // Attempts fail while nobody listens; the replica is killed with the events pending
    // (committed, not delivered), and one more change is made after its restart.
    tokio::time::sleep(Duration::from_secs(2)).await;
    server.kill();
    server.restart();
    let c = server.client();
    c.push_image("away/app", "c", unique_seed()).await;
    expected.push("dev.berth.manifest.pushed away/app:c".to_owned());
    tokio::time::sleep(Duration::from_secs(30).saturating_sub(away_since.elapsed())).await;
    proxy.stall();
    tokio::time::sleep(Duration::from_secs(60).saturating_sub(away_since.elapsed())).await;
    let attempted: Vec<u64> = outbox_rows(&deployment)
        .iter()
        .map(|row| row["attempts"].as_u64().unwrap())
        .collect();
    // The later ones of its repository are held back behind it: never sent, though a round
    // read while it runs shows one attempt counted for them (a round counts its attempts
    // before sending, and gives the unsent ones back when it settles).
    assert!(
        attempted.len() == 3 && attempted[0] >= 5 && attempted[1..].iter().all(|&n| n <= 1),
        "the first event attempted again and again while the receiver was away, the later \
         ones of its repository held back behind it: {attempted:?}"
    );

    assert!(
        receiver.requests().is_empty(),
        "nothing reached the receiver"
    );
    proxy.enable();
    let delivered = wait_for_events(&receiver, 3).await;
    assert_eq!(
        summary(&delivered),
        expected,
        "all of them, in commit order"
    );
    eventually(
        "the deliveries to be settled",
        Duration::from_secs(10),
        async || {
            outbox_rows(&deployment)
                .iter()
                .all(|row| row["state"] == "delivered")
        },
    )
    .await;
    let metrics = scrape(&admin).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "berth_events_redelivered_total",
            &[("endpoint", "away")]
        ),
        1.0,
        "the first event counted as delivered after earlier attempts (on the restarted \
         process, which made some of them); the later ones were never sent"
    );
}

async fn a_replica_killed_while_its_request_is_in_flight_is_taken_over_and_the_resend_counted() {
    let receiver = Receiver::start().await;
    receiver.state.hang.store(1, Ordering::SeqCst);
    receiver.state.hang_ms.store(20_000, Ordering::SeqCst);
    let (deployment, admin) = observed_deployment_with_webhooks(
        &webhook(
            "inflight",
            &receiver.url(),
            "actions = [\"push\"]\ntimeout = \"3s\"\n",
        ),
        &[("BERTH_EVENT_LEASE", "2s")],
    );
    let mut server = deployment.start();
    server
        .client()
        .push_image("inflight/app", "v1", unique_seed())
        .await;
    eventually(
        "the request to reach the receiver",
        Duration::from_secs(10),
        async || receiver.state.arrived.load(Ordering::SeqCst) >= 1,
    )
    .await;
    // Killed while the receiver holds the request: nothing was settled.
    server.kill();
    let rows = outbox_rows(&deployment);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (
            &rows[0]["state"],
            &rows[0]["attempts"],
            &rows[0]["last_error"]
        ),
        (&"pending".into(), &1.into(), &serde_json::Value::Null),
        "the attempt counted before it was sent, and nothing settled"
    );
    server.restart();
    // The new process takes the webhook over once the killed one's lease ends (the 2 s asked
    // for are raised to 3 x the timeout + 2 s = 11 s) and sends the event again.
    let delivered = wait_for_events(&receiver, 1).await;
    assert_eq!(
        summary(&delivered),
        ["dev.berth.manifest.pushed inflight/app:v1"]
    );
    let arrived = receiver.state.arrived.load(Ordering::SeqCst);
    assert_eq!(arrived, 2, "sent once more, and only once");
    eventually(
        "the delivery to be settled",
        Duration::from_secs(10),
        async || outbox_rows(&deployment)[0]["state"] == "delivered",
    )
    .await;
    assert_eq!(outbox_rows(&deployment)[0]["attempts"], 2);
    let metrics = scrape(&admin).await;
    assert_eq!(
        metric_sum(
            &metrics,
            "berth_events_redelivered_total",
            &[("endpoint", "inflight")]
        ),
        1.0,
        "the resend is counted"
    );
}

async fn replicas_deliver_each_event_once() {
    let receiver = Receiver::start().await;
    let deployment = deployment_with_webhooks(
        &webhook(
            "shared",
            &receiver.url(),
            "actions = [\"push\"]\nmax_in_flight = 8\n",
        ),
        &[],
    );
    let replicas: Vec<Server> = (0..3).map(|_| deployment.start()).collect();
    let clients: Vec<Client> = replicas.iter().map(Server::client).collect();
    let pushes = futures::future::join_all((0..24).map(|i| {
        let c = &clients[i % clients.len()];
        async move {
            c.push_image(
                &format!("shared/app{}", i % 6),
                &format!("t{i}"),
                unique_seed(),
            )
            .await
        }
    }))
    .await;
    let delivered = wait_for_events(&receiver, pushes.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let delivered_now = receiver.events(true);
    assert_eq!(delivered.len(), pushes.len());
    assert_eq!(
        delivered_now.len(),
        pushes.len(),
        "no event went out twice while nothing failed"
    );
    // Per repository, events arrive in commit order: the order of their outbox rows.
    let rows = outbox_rows(&deployment);
    assert!(
        rows.iter().all(|row| row["attempts"] == 1),
        "one attempt each"
    );
    let seq_of: BTreeMap<String, i64> = rows
        .iter()
        .map(|row| {
            (
                row["id"].as_str().unwrap().to_owned(),
                row["seq"].as_i64().unwrap(),
            )
        })
        .collect();
    let mut by_repository: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for event in &delivered_now {
        by_repository
            .entry(event["data"]["repository"].as_str().unwrap().to_owned())
            .or_default()
            .push(seq_of[event["id"].as_str().unwrap()]);
    }
    assert_eq!(by_repository.len(), 6);
    for (repository, seqs) in &by_repository {
        assert_eq!(seqs.len(), 4, "{repository}");
        assert!(
            seqs.is_sorted(),
            "{repository} arrived out of commit order: {seqs:?}"
        );
    }
}

async fn a_database_outage_during_delivery_loses_nothing() {
    let receiver = Receiver::start().await;
    receiver.state.fail.store(3, Ordering::SeqCst);
    let (_database, proxy, proxied) = database_behind_proxy().await;
    let server = with_webhooks(
        &webhook("db", &receiver.url(), "actions = [\"push\"]\n"),
        &[
            ("BERTH_DATABASE_URL", &proxied),
            ("BERTH_DB_ACQUIRE_TIMEOUT", "1s"),
        ],
    );
    let c = server.client();
    for tag in ["x", "y"] {
        c.push_image("db/app", tag, unique_seed()).await;
    }
    // The receiver fails the first attempts; then the database goes away under the
    // deliverer for a while, and comes back.
    eventually("a failed attempt", Duration::from_secs(10), async || {
        !receiver.requests().is_empty()
    })
    .await;
    proxy.disable();
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.enable();
    let delivered = wait_for_events(&receiver, 2).await;
    assert_eq!(
        summary(&delivered[..2]),
        [
            "dev.berth.manifest.pushed db/app:x",
            "dev.berth.manifest.pushed db/app:y"
        ]
    );
}

async fn a_cluster_behind_haproxy_delivers_each_event_once_and_through_a_postgres_restart() {
    let receiver = Receiver::start().await;
    let config = webhook_config(&webhook(
        "cluster",
        &receiver.url(),
        "actions = [\"push\"]\nmax_in_flight = 8\n",
    ));
    let cluster = crate::cluster::Cluster::start(
        3,
        &[
            ("BERTH_CONFIG", &config),
            ("BERTH_EVENT_POLL_INTERVAL", "50ms"),
            ("BERTH_DB_ACQUIRE_TIMEOUT", "1s"),
        ],
    );
    let c = cluster.client();
    let pushed = futures::future::join_all((0..12).map(|i| {
        let c = &c;
        async move {
            c.push_image(
                &format!("cluster/app{}", i % 4),
                &format!("t{i}"),
                unique_seed(),
            )
            .await
        }
    }))
    .await;
    wait_for_events(&receiver, pushed.len()).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let ids: Vec<String> = receiver
        .events(true)
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        ids.len(),
        pushed.len(),
        "each event once while nothing failed"
    );
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), ids.len());

    // Pending events while Postgres restarts under every replica: none is lost.
    receiver.state.fail.store(2, Ordering::SeqCst);
    for tag in ["r1", "r2", "r3"] {
        c.push_image("cluster/restart", tag, unique_seed()).await;
    }
    cluster.postgres.stop();
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.postgres.start_again();
    eventually(
        "the events pushed before the restart",
        Duration::from_secs(60),
        async || {
            receiver
                .events(false)
                .iter()
                .filter(|e| e["data"]["repository"] == "cluster/restart")
                .count()
                >= 3
        },
    )
    .await;
    let mut first_seen: Vec<String> = Vec::new();
    for event in receiver.events(false) {
        if event["data"]["repository"] == "cluster/restart" {
            let tag = event["data"]["tag"].as_str().unwrap().to_owned();
            if !first_seen.contains(&tag) {
                first_seen.push(tag);
            }
        }
    }
    assert_eq!(first_seen, ["r1", "r2", "r3"], "in commit order");
}

async fn pulls_are_events_only_for_webhooks_that_name_them() {
    let receiver = Receiver::start().await;
    let server = with_webhooks(
        &webhook("pulls", &receiver.url(), "actions = [\"pull\"]\n"),
        &[],
    );
    let c = server.client();
    let image = c.push_image("pulled/app", "v1", unique_seed()).await;
    c.call(Method::HEAD, "/v2/pulled/app/manifests/v1")
        .await
        .expect(200, None);
    c.get("/v2/pulled/app/manifests/v1").await.expect(200, None);
    c.get(&format!("/v2/pulled/app/manifests/{}", image.digest))
        .await
        .expect(200, None);
    let events = wait_for_events(&receiver, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        summary(&receiver.events(true)),
        [
            "dev.berth.manifest.pulled pulled/app:v1".to_owned(),
            format!("dev.berth.manifest.pulled pulled/app@{}", image.digest),
        ],
        "GETs only, not HEADs, and not the push"
    );
    assert_eq!(events[0]["data"]["size"], image.manifest.len());
}

async fn a_mirror_announces_its_own_pushes_and_not_what_it_fetches() {
    let origin = Server::start();
    let upstream_image = origin
        .client()
        .push_image("library/app", "v1", unique_seed())
        .await;
    let receiver = Receiver::start().await;
    let config = format!(
        "[[upstream]]\nname = \"origin\"\nurl = \"http://{}\"\nprefix = \"cache\"\n{}",
        origin.addr,
        webhook("mirror", &receiver.url(), "")
    );
    let server = with_webhooks(&config, &[("BERTH_REDIRECT", "false")]);
    let c = server.client();
    // Fills under a new local name: a blob first (it makes the repository), then the
    // manifest and the other blob.
    c.get(&format!(
        "/v2/cache/library/app/blobs/{}",
        sha256(&upstream_image.layer)
    ))
    .await
    .expect(200, None);
    c.get("/v2/cache/library/app/manifests/v1")
        .await
        .expect(200, None);
    c.get(&format!(
        "/v2/cache/library/app/blobs/{}",
        sha256(&upstream_image.config)
    ))
    .await
    .expect(200, None);
    // A moment for the fills' commits, which may end after the answers.
    tokio::time::sleep(Duration::from_secs(1)).await;
    c.push_image("own/app", "v1", unique_seed()).await;
    wait_for_events(&receiver, 2).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        summary(&receiver.events(true)),
        [
            "dev.berth.repository.created own/app",
            "dev.berth.manifest.pushed own/app:v1"
        ],
        "what the mirror fetched is no change to announce"
    );
}

/// Distribution's notification envelope, as its documentation describes it, read by a
/// consumer written against that schema and nothing else.
#[derive(Deserialize)]
struct Envelope {
    events: Vec<DistributionEvent>,
}

#[derive(Deserialize)]
struct DistributionEvent {
    id: String,
    timestamp: String,
    action: String,
    target: Target,
    request: RequestRecord,
    actor: ActorRecord,
    source: SourceRecord,
}

#[derive(Deserialize)]
struct ActorRecord {
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Target {
    media_type: String,
    digest: String,
    size: u64,
    length: u64,
    repository: String,
    url: String,
    tag: Option<String>,
}

#[derive(Deserialize)]
struct RequestRecord {
    id: String,
    addr: String,
    method: String,
    host: String,
    useragent: String,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct SourceRecord {
    addr: String,
    #[serde(rename = "instanceID")]
    instance_id: String,
}

async fn a_distribution_consumer_reads_the_distribution_envelope() {
    let receiver = Receiver::start().await;
    let (server, _users) = with_webhooks_and_users(&webhook(
        "legacy",
        &receiver.url(),
        "format = \"distribution\"\nactions = [\"push\", \"delete\"]\n",
    ));
    // Alice, through a client that names itself: the events say who asked, from where.
    let c = signed_in(&server, "alice", "legacy-consumer-test/1.0");
    let image = c.push_image("alice/legacy", "latest", unique_seed()).await;
    c.call(
        Method::DELETE,
        &format!("/v2/alice/legacy/manifests/{}", image.digest),
    )
    .await
    .expect(202, None);
    wait_for_events(&receiver, 2).await;
    let mut seen = Vec::new();
    for request in receiver.requests() {
        assert_eq!(
            request.headers["content-type"],
            "application/vnd.docker.distribution.events.v1+json"
        );
        let envelope: Envelope = serde_json::from_slice(&request.body).unwrap();
        for event in envelope.events {
            assert_eq!(event.target.repository, "alice/legacy");
            assert_eq!(event.target.digest, image.digest);
            assert_eq!(event.target.size, image.manifest.len() as u64);
            assert_eq!(event.target.length, event.target.size);
            assert_eq!(
                event.target.media_type,
                "application/vnd.oci.image.manifest.v1+json"
            );
            assert!(event.target.url.ends_with(&image.digest));
            assert!(event.timestamp.ends_with('Z'), "{}", event.timestamp);
            assert_eq!(event.actor.name.as_deref(), Some("alice"));
            assert_eq!(event.request.addr, "127.0.0.1");
            assert_eq!(event.request.useragent, "legacy-consumer-test/1.0");
            assert_eq!(event.request.host, "registry.example.com");
            assert!(
                event.request.id.len() == 32 && event.request.id != event.id,
                "the request's own id: {}",
                event.request.id
            );
            assert_eq!(event.source.addr, "registry.example.com");
            assert!(!event.source.instance_id.is_empty());
            seen.push((event.action, event.request.method, event.target.tag));
        }
    }
    assert_eq!(
        seen,
        [
            (
                "push".to_owned(),
                "PUT".to_owned(),
                Some("latest".to_owned())
            ),
            ("delete".to_owned(), "DELETE".to_owned(), None),
        ]
    );
}

async fn webhook_settings_that_cannot_work_are_refused_at_start() {
    for (webhooks, says) in [
        (
            "[[webhook]]\nurl = \"ftp://example.com/hook\"\n",
            "webhook url must be http",
        ),
        (
            "[[webhook]]\nurl = \"http://a.example/hook\"\nactions = [\"pulled\"]\n",
            "unknown action \"pulled\"",
        ),
        (
            "[[webhook]]\nurl = \"http://a.example/1\"\n[[webhook]]\nurl = \"http://a.example/2\"\n",
            "two webhooks are named \"a.example\"",
        ),
        (
            "[[webhook]]\nurl = \"http://a.example/hook\"\nsecret_file = \"/nonexistent/secret\"\n",
            "reading secret_file /nonexistent/secret",
        ),
        (
            "[[webhook]]\nurl = \"http://a.example/hook\"\nbatch_size = 0\n",
            "batch_size must be between 1 and 1000",
        ),
        (
            "[[webhook]]\nurl = \"http://a.example/hook\"\nheaders = { \"X-Berth-Signature-256\" = \"forged\" }\n",
            "is set by Berth itself",
        ),
    ] {
        let deployment = deployment_with_webhooks(webhooks, &[]);
        let out = deployment.command(&["serve"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{webhooks} must be refused");
        assert!(stderr.contains(says), "{webhooks}: {stderr}");
    }
}

crate::harness::trials! {
    push_and_delete_events_reach_a_signed_cloudevents_webhook.multi_thread(2);
    refused_pushes_and_unsubscribed_changes_make_no_event.multi_thread(2);
    a_failing_or_slow_receiver_gets_each_event_again_with_its_id_in_order.multi_thread(2);
    dead_letters_are_kept_listed_and_replayed.multi_thread(2).needs(Persistence);
    events_outlive_a_receiver_away_for_a_minute_and_a_killed_replica.multi_thread(2).needs(Persistence);
    a_replica_killed_while_its_request_is_in_flight_is_taken_over_and_the_resend_counted.multi_thread(2).needs(Persistence);
    replicas_deliver_each_event_once.multi_thread(2).needs(SharedState);
    a_cluster_behind_haproxy_delivers_each_event_once_and_through_a_postgres_restart.multi_thread(2).needs(PostgresS3Run);
    a_database_outage_during_delivery_loses_nothing.multi_thread(2).needs(Postgres);
    a_distribution_consumer_reads_the_distribution_envelope.multi_thread(2);
    pulls_are_events_only_for_webhooks_that_name_them.multi_thread(2);
    a_mirror_announces_its_own_pushes_and_not_what_it_fetches.multi_thread(2);
    webhook_settings_that_cannot_work_are_refused_at_start;
}
