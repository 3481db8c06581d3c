//! Delivery of the event outbox (`crate::metadata::events`) to webhook endpoints and to
//! sinks of an embedding program, by every replica.
//!
//! Each replica polls each endpoint's due rows (a read); when there are some, it claims the
//! endpoint for a lease (`FOR UPDATE SKIP LOCKED` on Postgres), so that one replica at a time
//! delivers to it, and sends them: grouped by repository, each group in commit order, up to
//! `max_in_flight` groups at once, `batch_size` events a request. A replica that finds the
//! endpoint held by another leaves it alone until that lease ends. A round's attempts are
//! counted in its rows before anything is sent (one write; rows it does not send after all are
//! given back when their group settles). An acknowledged request (2xx) settles its rows as
//! delivered; a failed one schedules a retry with exponential backoff and jitter, and holds
//! back the later rows of its repository, until the row is too old or has had too many
//! attempts and is dead-lettered. A replica killed between a send and its settlement leaves
//! the rows pending, their attempt counted: another replica sends them again when the lease
//! runs out (at least once; the event id stays the same, so receivers deduplicate, and the
//! resend is counted in `berth_events_redelivered_total`).

pub mod payload;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;

use crate::instruments;
use crate::metadata::events::{DeliveryOutcome, EndpointClaim, NewEvent, OutboxEvent};
use crate::metadata::{MetadataStore, now_millis};
use payload::{PayloadFormat, SIGNATURE_HEADER, Source};

/// A program embedding Berth receives events through this, with the outbox's guarantees:
/// each event at least once, in commit order per repository, retried until it returns `Ok`.
#[async_trait]
pub trait EventSink: Send + Sync + 'static {
    /// Takes events (in commit order per repository). An `Err` says why they were not taken:
    /// they are offered again later.
    async fn deliver(&self, events: &[NewEvent]) -> Result<(), String>;
}

/// Where an endpoint's events go.
#[derive(Clone)]
pub enum Target {
    /// `POST`ed to a URL.
    Http {
        /// The URL.
        url: String,
        /// Extra headers sent with every request.
        headers: Vec<(String, String)>,
        /// The key of the body's HMAC-SHA256 signature, if any.
        secret: Option<Vec<u8>>,
    },
    /// Handed to a sink in the same process.
    Sink(Arc<dyn EventSink>),
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Http { url, headers, .. } => f
                .debug_struct("Http")
                .field("url", url)
                .field(
                    "headers",
                    &headers.iter().map(|(k, _)| k).collect::<Vec<_>>(),
                )
                .finish_non_exhaustive(),
            Target::Sink(_) => f.write_str("Sink"),
        }
    }
}

/// One endpoint and how to deliver to it.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// Its name (the outbox's rows name it).
    pub name: String,
    /// Where to.
    pub target: Target,
    /// The body format.
    pub format: PayloadFormat,
    /// How long one request may take.
    pub timeout: Duration,
    /// Most requests in flight at once (each for another repository).
    pub max_in_flight: usize,
    /// Most events a request.
    pub batch_size: usize,
    /// Attempts after which an event is dead-lettered.
    pub max_attempts: u32,
    /// Age after which a failing event is dead-lettered.
    pub max_age: Duration,
}

/// Timing of delivery, shared by every endpoint.
#[derive(Clone, Debug)]
pub struct DeliveryOptions {
    /// How often each endpoint's due rows are looked for.
    pub poll_interval: Duration,
    /// How long a claim on an endpoint lasts unless renewed; at least three times the longest
    /// endpoint timeout (a shorter one is raised), so that a request always ends well within it.
    pub lease: Duration,
    /// First retry delay; doubled for each further attempt.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// How long delivered rows are kept (for `berth events` and replays).
    pub delivered_retention: Duration,
    /// How long dead-lettered rows are kept.
    pub dead_retention: Duration,
    /// How payloads name the registry.
    pub source: Source,
}

impl Default for DeliveryOptions {
    fn default() -> Self {
        DeliveryOptions {
            poll_interval: Duration::from_millis(250),
            lease: Duration::from_secs(30),
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            delivered_retention: Duration::from_secs(24 * 3600),
            dead_retention: Duration::from_secs(14 * 24 * 3600),
            source: Source::default(),
        }
    }
}

/// Errors building a deliverer.
#[derive(Debug, thiserror::Error)]
pub enum EventsError {
    /// The HTTP client could not be built.
    #[error("event delivery client: {0}")]
    Client(String),
    /// Two endpoints share a name.
    #[error("two event endpoints are named {0:?}")]
    DuplicateEndpoint(String),
}

/// Delivers every endpoint's events from this replica.
pub struct Deliverer {
    metadata: Arc<dyn MetadataStore>,
    endpoints: Vec<EndpointState>,
    options: DeliveryOptions,
    owner: String,
    client: reqwest::Client,
}

struct EndpointState {
    endpoint: Endpoint,
    /// Until when this replica holds the endpoint's lease (Unix milliseconds; 0 for not).
    held_until: AtomicI64,
    /// Until when another replica holds it, as the last claim found (Unix milliseconds):
    /// before then this replica does not look for due rows it could not send.
    held_elsewhere_until: AtomicI64,
    /// One claim or renewal at a time: two groups renewing at once would find the row locked
    /// by each other (`SKIP LOCKED`) and give the lease up.
    renewing: tokio::sync::Mutex<()>,
}

/// Least time a lease must have left when a request starts, beyond the request's timeout:
/// for the settlement after it, and for clocks of replicas that differ a little.
const LEASE_MARGIN: Duration = Duration::from_secs(2);

/// Rows fetched for one endpoint in one round.
const ROUND_LIMIT: u32 = 500;
/// Rows pruned a statement.
const PRUNE_LIMIT: u32 = 1000;

impl Deliverer {
    /// A deliverer for `endpoints`, reading and settling rows in `metadata`.
    pub fn new(
        metadata: Arc<dyn MetadataStore>,
        endpoints: Vec<Endpoint>,
        options: DeliveryOptions,
    ) -> Result<Deliverer, EventsError> {
        let mut names = std::collections::BTreeSet::new();
        for endpoint in &endpoints {
            if !names.insert(endpoint.name.clone()) {
                return Err(EventsError::DuplicateEndpoint(endpoint.name.clone()));
            }
        }
        let longest = endpoints
            .iter()
            .map(|e| e.timeout)
            .max()
            .unwrap_or_default();
        let mut options = options;
        options.lease = options.lease.max(longest * 3 + LEASE_MARGIN);
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("berth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| EventsError::Client(e.to_string()))?;
        Ok(Deliverer {
            metadata,
            endpoints: endpoints
                .into_iter()
                .map(|endpoint| EndpointState {
                    endpoint,
                    held_until: AtomicI64::new(0),
                    held_elsewhere_until: AtomicI64::new(0),
                    renewing: tokio::sync::Mutex::new(()),
                })
                .collect(),
            options,
            owner: uuid::Uuid::new_v4().to_string(),
            client,
        })
    }

    /// Delivers until `shutdown` completes, each endpoint on its own (a slow or failing
    /// receiver holds back no other); refreshes the backlog gauges every 15 s and prunes
    /// settled rows every five minutes, also with no endpoint configured (rows of endpoints
    /// configured before).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        let this = Arc::new(self);
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut loops = tokio::task::JoinSet::new();
        for index in 0..this.endpoints.len() {
            let (this, mut stopped) = (Arc::clone(&this), stopped.clone());
            loops.spawn(async move {
                loop {
                    this.deliver(&this.endpoints[index]).await;
                    tokio::select! {
                        _ = stopped.changed() => return,
                        () = tokio::time::sleep(this.options.poll_interval) => {}
                    }
                }
            });
        }
        let housekeeping = {
            let (this, mut stopped) = (Arc::clone(&this), stopped.clone());
            async move {
                let (mut last_prune, mut last_gauges) = (0, 0);
                loop {
                    let now = now_millis();
                    if now - last_gauges >= 15_000 {
                        last_gauges = now;
                        this.refresh_gauges().await;
                    }
                    if now - last_prune >= 300_000 {
                        last_prune = now;
                        this.prune(now).await;
                    }
                    tokio::select! {
                        _ = stopped.changed() => return,
                        () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    }
                }
            }
        };
        loops.spawn(housekeeping);
        shutdown.await;
        let _ = stop.send(true);
        while loops.join_next().await.is_some() {}
    }

    /// One pass over every endpoint: what is due is sent and settled.
    pub async fn round(&self) {
        let rounds = self.endpoints.iter().map(|state| self.deliver(state));
        futures::future::join_all(rounds).await;
    }

    async fn deliver(&self, state: &EndpointState) {
        let name = &state.endpoint.name;
        if let Err(error) = self.deliver_due(state).await {
            tracing::warn!(endpoint = %name, %error, "event delivery round failed; trying again");
        }
    }

    async fn deliver_due(
        &self,
        state: &EndpointState,
    ) -> Result<(), crate::metadata::MetadataError> {
        let endpoint = &state.endpoint;
        let now = now_millis();
        if state.held_elsewhere_until.load(Ordering::Acquire) >= now {
            return Ok(());
        }
        let due = self
            .metadata
            .due_events(&endpoint.name, now, ROUND_LIMIT)
            .await?;
        if due.is_empty() || !self.hold(state).await? {
            return Ok(());
        }
        // The round's attempts are counted before anything is sent, in one write; those
        // dead-lettered unsent below are not.
        let attempted: Vec<i64> = due
            .iter()
            .filter(|row| row.attempts < endpoint.max_attempts)
            .map(|row| row.seq)
            .collect();
        self.metadata.start_event_attempts(&attempted).await?;
        let mut groups: BTreeMap<String, Vec<OutboxEvent>> = BTreeMap::new();
        for row in due {
            groups
                .entry(row.event.repository.clone())
                .or_default()
                .push(row);
        }
        // Each repository's rows are settled as soon as they are sent, not after the slowest.
        let settled: Vec<Result<(), crate::metadata::MetadataError>> =
            futures::stream::iter(groups.into_values())
                .map(|rows| async move {
                    let outcomes = self.deliver_group(state, rows).await;
                    self.metadata.settle_events(&outcomes, now_millis()).await
                })
                .buffer_unordered(endpoint.max_in_flight.max(1))
                .collect()
                .await;
        settled.into_iter().collect()
    }

    /// Sends one repository's rows in order, a batch at a time, up to the first failure,
    /// renewing the lease as needed; their outcomes.
    async fn deliver_group(
        &self,
        state: &EndpointState,
        rows: Vec<OutboxEvent>,
    ) -> Vec<(i64, DeliveryOutcome)> {
        let endpoint = &state.endpoint;
        let mut outcomes = Vec::with_capacity(rows.len());
        // Rows whose attempts never settled (each one's replica died while sending it) as
        // often as the endpoint allows: given up on like any other, not sent again forever.
        let (exhausted, rows): (Vec<OutboxEvent>, Vec<OutboxEvent>) = rows
            .into_iter()
            .partition(|row| row.attempts >= endpoint.max_attempts);
        for row in exhausted {
            metrics::counter!(instruments::EVENTS_DEAD_LETTERED, "endpoint" => endpoint.name.clone())
                .increment(1);
            let error = format!(
                "{} attempts never settled: each sender stopped before the answer (gave up)",
                row.attempts
            );
            outcomes.push((row.seq, DeliveryOutcome::Dead { error }));
        }
        let mut batches = rows.chunks(endpoint.batch_size.max(1));
        for batch in batches.by_ref() {
            if !matches!(self.hold(state).await, Ok(true)) {
                outcomes.extend(batch.iter().map(|r| (r.seq, DeliveryOutcome::Unsent)));
                break;
            }
            let events: Vec<&NewEvent> = batch.iter().map(|r| &r.event).collect();
            let started = std::time::Instant::now();
            let sent = self.send(endpoint, &events).await;
            let now = now_millis();
            let label = endpoint.name.clone();
            match sent {
                Ok(()) => {
                    metrics::histogram!(instruments::EVENT_REQUEST_DURATION, "endpoint" => label.clone())
                        .record(started.elapsed());
                    for row in batch {
                        if row.attempts > 0 {
                            metrics::counter!(instruments::EVENTS_REDELIVERED, "endpoint" => label.clone())
                                .increment(1);
                        }
                        metrics::counter!(instruments::EVENTS_DELIVERED, "endpoint" => label.clone())
                            .increment(1);
                        let latency = (now - row.event.at).max(0) as f64 / 1000.0;
                        metrics::histogram!(instruments::EVENT_DELIVERY_LATENCY, "endpoint" => label.clone())
                            .record(latency);
                        outcomes.push((row.seq, DeliveryOutcome::Delivered));
                    }
                }
                Err(error) => {
                    tracing::info!(endpoint = %endpoint.name, %error, events = batch.len(), "event delivery failed; will retry");
                    for row in batch {
                        let outcome = self.failed(endpoint, row, &error, now);
                        let counter = match outcome {
                            DeliveryOutcome::Dead { .. } => instruments::EVENTS_DEAD_LETTERED,
                            _ => instruments::EVENTS_RETRIED,
                        };
                        metrics::counter!(counter, "endpoint" => label.clone()).increment(1);
                        outcomes.push((row.seq, outcome));
                    }
                    break;
                }
            }
        }
        // What the group did not get to: its attempt was counted with the round's.
        outcomes.extend(batches.flatten().map(|r| (r.seq, DeliveryOutcome::Unsent)));
        outcomes
    }

    /// What a failed attempt makes of `row`: a retry after a backoff, or a dead letter.
    fn failed(
        &self,
        endpoint: &Endpoint,
        row: &OutboxEvent,
        error: &str,
        now: i64,
    ) -> DeliveryOutcome {
        let attempts = row.attempts.saturating_add(1);
        let age = Duration::from_millis(u64::try_from(now - row.event.at).unwrap_or(0));
        if attempts >= endpoint.max_attempts || age >= endpoint.max_age {
            return DeliveryOutcome::Dead {
                error: format!("{error} (attempt {attempts}; gave up)"),
            };
        }
        DeliveryOutcome::Retry {
            next_attempt_at: now + backoff(&self.options, attempts).as_millis() as i64,
            error: format!("{error} (attempt {attempts})"),
        }
    }

    async fn send(&self, endpoint: &Endpoint, events: &[&NewEvent]) -> Result<(), String> {
        match &endpoint.target {
            Target::Sink(sink) => {
                let owned: Vec<NewEvent> = events.iter().map(|e| (*e).clone()).collect();
                match tokio::time::timeout(endpoint.timeout, sink.deliver(&owned)).await {
                    Ok(result) => result,
                    Err(_) => Err(format!("no answer within {:?}", endpoint.timeout)),
                }
            }
            Target::Http {
                url,
                headers,
                secret,
            } => {
                let (body, content_type) =
                    payload::body(endpoint.format, events, &self.options.source);
                let mut request = self
                    .client
                    .post(url)
                    .timeout(endpoint.timeout)
                    .header("content-type", content_type);
                if let [one] = events {
                    request = request.header("x-berth-event-id", one.id.as_str());
                }
                for (name, value) in headers {
                    request = request.header(name.as_str(), value.as_str());
                }
                if let Some(secret) = secret {
                    request = request.header(SIGNATURE_HEADER, payload::signature(secret, &body));
                }
                let response = request.body(body).send().await.map_err(|e| {
                    if e.is_timeout() {
                        format!("no answer within {:?}", endpoint.timeout)
                    } else {
                        format!("request failed: {e}")
                    }
                })?;
                let status = response.status();
                if status.is_success() {
                    Ok(())
                } else {
                    Err(format!("answered {status}"))
                }
            }
        }
    }

    /// Whether this replica holds `state`'s endpoint for long enough to send a request and
    /// settle it, claiming or renewing the lease when less than that, or than half of it, is
    /// left.
    async fn hold(&self, state: &EndpointState) -> Result<bool, crate::metadata::MetadataError> {
        let lease = self.options.lease.as_millis() as i64;
        let needed = (state.endpoint.timeout + LEASE_MARGIN).as_millis() as i64;
        let enough =
            |now: i64| state.held_until.load(Ordering::Acquire) - now > needed.max(lease / 2);
        if enough(now_millis()) {
            return Ok(true);
        }
        let _renewing = state.renewing.lock().await;
        let now = now_millis();
        if enough(now) {
            return Ok(true);
        }
        let until = now + lease;
        let claim = self
            .metadata
            .claim_event_endpoint(&state.endpoint.name, &self.owner, until, now)
            .await?;
        match claim {
            EndpointClaim::Held => {
                state.held_until.store(until, Ordering::Release);
                Ok(true)
            }
            EndpointClaim::HeldElsewhere { until: other } => {
                state.held_until.store(0, Ordering::Release);
                state
                    .held_elsewhere_until
                    .store(other.unwrap_or(0), Ordering::Release);
                Ok(false)
            }
        }
    }

    async fn prune(&self, now: i64) {
        let delivered_before = now - self.options.delivered_retention.as_millis() as i64;
        let dead_before = now - self.options.dead_retention.as_millis() as i64;
        loop {
            match self
                .metadata
                .prune_events(delivered_before, dead_before, PRUNE_LIMIT)
                .await
            {
                Ok(n) if n >= u64::from(PRUNE_LIMIT) => continue,
                Ok(_) => return,
                Err(error) => {
                    tracing::warn!(%error, "pruning the event outbox failed; trying later");
                    return;
                }
            }
        }
    }

    async fn refresh_gauges(&self) {
        if self.endpoints.is_empty() {
            return;
        }
        let Ok(backlog) = self.metadata.event_backlog(false).await else {
            return;
        };
        for state in &self.endpoints {
            let name = &state.endpoint.name;
            let entry = backlog.iter().find(|b| &b.endpoint == name);
            metrics::gauge!(instruments::EVENTS_PENDING, "endpoint" => name.clone())
                .set(entry.map_or(0, |b| b.pending) as f64);
            metrics::gauge!(instruments::EVENTS_DEAD, "endpoint" => name.clone())
                .set(entry.map_or(0, |b| b.dead) as f64);
        }
    }
}

/// The delay before attempt `attempts + 1`: the base doubled per attempt, capped, and
/// jittered down by up to half so that failed deliveries spread out.
fn backoff(options: &DeliveryOptions, attempts: u32) -> Duration {
    let doubled = options
        .retry_base
        .saturating_mul(1u32 << attempts.saturating_sub(1).min(20));
    let capped = doubled.min(options.retry_max);
    let jitter = (uuid::Uuid::new_v4().as_u128() % 1000) as u32;
    capped.mul_f64(0.5 + f64::from(jitter) / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::events::test_support::push_empty_index;
    use crate::metadata::events::{EventAction, EventOrigin, Subscription, Subscriptions};
    use crate::metadata::memory::MemoryMetadataStore;

    /// A sink that refuses its first `refuse` deliveries and records the rest.
    #[derive(Default)]
    struct Recorder {
        refuse: std::sync::atomic::AtomicUsize,
        taken: std::sync::Mutex<Vec<NewEvent>>,
    }

    impl Recorder {
        /// The tags of the events taken, in order.
        fn tags(&self) -> Vec<String> {
            let taken = self.taken.lock().unwrap();
            taken.iter().filter_map(|e| e.tag.clone()).collect()
        }
    }

    #[async_trait]
    impl EventSink for Recorder {
        async fn deliver(&self, events: &[NewEvent]) -> Result<(), String> {
            let refused = self
                .refuse
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok();
            if refused {
                return Err("not now".into());
            }
            self.taken.lock().unwrap().extend_from_slice(events);
            Ok(())
        }
    }

    async fn push(store: &MemoryMetadataStore, tag: &str) {
        let origin = EventOrigin::default();
        push_empty_index(store, "embedded/app", tag, tag, Some(&origin), now_millis()).await;
    }

    /// A memory store whose pushes are events for the endpoint `in-process`, and that
    /// endpoint: a recording sink giving up after `max_attempts`.
    fn in_process(max_attempts: u32) -> (Arc<MemoryMetadataStore>, Arc<Recorder>, Endpoint) {
        let store = Arc::new(
            MemoryMetadataStore::new().with_subscriptions(Subscriptions(vec![Subscription {
                endpoint: "in-process".into(),
                repositories: vec![],
                actions: vec![EventAction::Push],
            }])),
        );
        let sink = Arc::new(Recorder::default());
        let endpoint = Endpoint {
            name: "in-process".into(),
            target: Target::Sink(sink.clone()),
            format: PayloadFormat::CloudEvents,
            timeout: Duration::from_secs(1),
            max_in_flight: 1,
            batch_size: 10,
            max_attempts,
            max_age: Duration::from_secs(60),
        };
        (store, sink, endpoint)
    }

    #[tokio::test]
    async fn an_embedding_program_receives_events_through_its_sink_in_order_after_refusals() {
        let (store, sink, endpoint) = in_process(5);
        sink.refuse.store(1, Ordering::SeqCst);
        let options = DeliveryOptions {
            retry_base: Duration::from_millis(1),
            ..DeliveryOptions::default()
        };
        let deliverer = Deliverer::new(store.clone(), vec![endpoint], options).unwrap();
        for tag in ["one", "two", "three"] {
            push(&store, tag).await;
        }
        deliverer.round().await;
        assert!(
            sink.taken.lock().unwrap().is_empty(),
            "the first offer was refused"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        deliverer.round().await;
        let tags = sink.tags();
        assert_eq!(tags, ["one", "two", "three"]);
        deliverer.round().await;
        assert_eq!(sink.taken.lock().unwrap().len(), 3, "delivered once");
    }

    #[tokio::test]
    async fn an_event_whose_attempts_never_settle_is_dead_lettered_unsent() {
        let (store, sink, endpoint) = in_process(3);
        let deliverer =
            Deliverer::new(store.clone(), vec![endpoint], DeliveryOptions::default()).unwrap();
        push(&store, "poison").await;
        // Three senders counted an attempt and died before settling it.
        let seq = store
            .due_events("in-process", now_millis(), 10)
            .await
            .unwrap()[0]
            .seq;
        for _ in 0..3 {
            store.start_event_attempts(&[seq]).await.unwrap();
        }
        push(&store, "next").await;
        deliverer.round().await;
        let tags = sink.tags();
        assert_eq!(
            tags,
            ["next"],
            "the exhausted event is not sent, and holds nothing back"
        );
        let dead = store
            .outbox_events(crate::metadata::events::OutboxQuery {
                state: Some(crate::metadata::events::DeliveryState::Dead),
                limit: 10,
                ..Default::default()
            })
            .await
            .unwrap();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].event.tag.as_deref(), Some("poison"));
        assert!(
            dead[0]
                .last_error
                .as_deref()
                .unwrap()
                .contains("never settled"),
            "{:?}",
            dead[0].last_error
        );
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered() {
        let options = DeliveryOptions::default();
        for attempts in 1..40 {
            let delay = backoff(&options, attempts);
            let full = options
                .retry_base
                .saturating_mul(1 << (attempts - 1).min(20))
                .min(options.retry_max);
            assert!(delay <= full && delay >= full / 2, "{attempts}: {delay:?}");
        }
    }
}
