//! The `berth` binary: configuration, logging, and the server's lifecycle.

mod config;
#[cfg(feature = "otel")]
mod telemetry;

use std::io::Write;
use std::sync::Arc;

use anyhow::Context;
use berth::Registry;
use berth::metadata::MetadataStore;
use berth::metadata::memory::MemoryMetadataStore;
use berth::storage::BlobStore;
use berth::storage::fs::FsBlobStore;
use berth::storage::memory::MemoryBlobStore;
use clap::{CommandFactory, Parser};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use config::{
    Cli, Command, Config, ConfigAction, EventsArgs, GcArgs, LogFormat, ScrubArgs, StorageKind,
};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // What describes the command line needs no configuration.
    match &cli.command {
        Some(Command::Completions { shell }) => {
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "berth", &mut script);
            return print_out(&script);
        }
        Some(Command::Man) => {
            let mut page = Vec::new();
            clap_mangen::Man::new(Cli::command())
                .render(&mut page)
                .context("rendering the manual page")?;
            return print_out(&page);
        }
        _ => {}
    }
    let settings = cli.settings.load()?;
    let from_file = settings.config.clone();
    let config = settings.clone().resolve()?;
    if let Some(Command::Config {
        action: ConfigAction::Check,
    }) = &cli.command
    {
        let source = match &from_file {
            Some(file) => format!("flags, then the environment, then {}", file.display()),
            None => "flags, then the environment (no config file)".to_owned(),
        };
        let shown = format!(
            "# The configuration `berth serve` runs with, from {source}; checked, and valid.\n\
             # Secrets are redacted.\n{}",
            settings.effective()
        );
        return print_out(shown.as_bytes());
    }
    let filter = EnvFilter::try_new(&config.log)
        .with_context(|| format!("invalid log filter {:?}", config.log))?;
    // Boxed so that either format fits the one subscriber type.
    let fmt: Box<dyn tracing_subscriber::Layer<_> + Send + Sync> = match config.log_format {
        LogFormat::Text => Box::new(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        ),
        LogFormat::Json => Box::new(
            tracing_subscriber::fmt::layer()
                .json()
                .flatten_event(true)
                .with_current_span(false)
                .with_span_list(false)
                .with_writer(std::io::stderr),
        ),
    };
    #[cfg(feature = "otel")]
    let (otel, telemetry) = telemetry::layer()?;
    #[cfg(not(feature = "otel"))]
    let otel: Option<tracing_subscriber::layer::Identity> = None;
    tracing_subscriber::registry()
        .with(filter)
        .with(fmt)
        .with(otel)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let outcome = runtime.block_on(async move {
        match cli.command.unwrap_or(Command::Serve) {
            Command::Serve => serve(config).await,
            Command::Migrate => migrate(config).await,
            Command::Scrub(args) => scrub(config, args).await,
            Command::Gc(args) => gc(config, args).await,
            Command::Events(args) => events(config, args).await,
            Command::Config { .. } | Command::Completions { .. } | Command::Man => Ok(()),
        }
    });
    drop(runtime);
    #[cfg(feature = "otel")]
    telemetry.shutdown();
    outcome
}

#[cfg(any(feature = "sqlite", feature = "postgres"))]
async fn sql_store(config: &Config) -> anyhow::Result<berth::metadata::sql::SqlMetadataStore> {
    use berth::metadata::sql::{SqlMetadataStore, SqlOptions, redact_url};
    let url = config.effective_database_url();
    if url.starts_with("sqlite:") {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("creating data directory {}", config.data_dir.display()))?;
    }
    let options = SqlOptions {
        max_connections: config.db_max_connections,
        acquire_timeout: config.db_acquire_timeout,
        lock_timeout: config.db_lock_timeout,
        statement_timeout: config.db_statement_timeout,
    };
    SqlMetadataStore::connect(&url, &options)
        .await
        .with_context(|| format!("connecting to {}", redact_url(&url)))
}

async fn metadata_store(config: &Config) -> anyhow::Result<Arc<dyn MetadataStore>> {
    // Every process that changes the registry (`serve`, `gc`) writes the outbox rows of the
    // webhooks it is configured with.
    let subscriptions = config.events.subscriptions();
    if config.storage == StorageKind::Memory {
        return Ok(Arc::new(
            MemoryMetadataStore::new().with_subscriptions(subscriptions),
        ));
    }
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    {
        let store = sql_store(config).await?.with_subscriptions(subscriptions);
        if config.migrate_on_start {
            store
                .migrate()
                .await
                .context("applying database migrations")?;
        }
        Ok(Arc::new(store))
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    anyhow::bail!("this berth was built without database support; use --storage memory")
}

async fn blob_store(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    Ok(match config.storage {
        StorageKind::Filesystem => Arc::new(
            FsBlobStore::open(&config.data_dir, config.fs_part_size, config.fs_direct_io)
                .await
                .with_context(|| format!("opening blob directory {}", config.data_dir.display()))?,
        ),
        StorageKind::Memory => Arc::new(MemoryBlobStore::new(config.fs_part_size)),
        StorageKind::S3 => s3_store(config).await?,
    })
}

#[cfg(feature = "s3")]
async fn s3_store(config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    use berth::storage::s3::{S3BlobStore, S3Config};
    let s3 = &config.s3;
    let store = S3BlobStore::connect(S3Config {
        bucket: s3.bucket.clone().unwrap_or_default(),
        region: s3.region.clone(),
        endpoint: s3.endpoint.clone(),
        public_endpoint: s3.public_endpoint.clone(),
        force_path_style: s3.force_path_style,
        prefix: s3.prefix.clone(),
        part_size: s3.part_size as usize,
        upload_concurrency: s3.upload_concurrency,
        presign_expiry: s3.presign_expiry,
        connect_timeout: s3.connect_timeout,
        timeout: s3.timeout,
    })
    .await
    .context("configuring S3 storage")?;
    Ok(Arc::new(store))
}

#[cfg(not(feature = "s3"))]
async fn s3_store(_config: &Config) -> anyhow::Result<Arc<dyn BlobStore>> {
    anyhow::bail!("this berth was built without S3 support")
}

/// SQLite deployments run on one machine: their processes share a change counter file next
/// to the database, which lets each cache manifests in memory.
fn manifest_change_counter(config: &Config) -> Option<std::path::PathBuf> {
    if config.storage == StorageKind::Memory {
        return None;
    }
    #[cfg(feature = "sqlite")]
    {
        let file = berth::metadata::sql::sqlite_file(&config.effective_database_url())?;
        Some(std::path::PathBuf::from(format!(
            "{}.changes",
            file.display()
        )))
    }
    #[cfg(not(feature = "sqlite"))]
    None
}

/// Raises the soft limit on open files to the hard limit, so that the connection cap, not the
/// default soft limit (often 1024), bounds connections.
fn raise_open_file_limit(wanted: usize) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    // Connections, plus files, database connections and S3 connections.
    let needed = wanted as u64 + 256;
    if wanted > 0 && limit.rlim_cur < needed {
        tracing::warn!(
            open_files = limit.rlim_cur,
            max_connections = wanted,
            "the open file limit is below max_connections; connections beyond it will wait"
        );
    }
}

/// Writes `bytes` to standard output; a reader that stopped early (`| head`) is no error.
fn print_out(bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(e).context("writing to standard output")
        }
        _ => Ok(()),
    }
}

/// `GET /metrics`: the Prometheus exposition of every metric, with gauges that are read on
/// demand (free space, database pool, upload sessions) refreshed first.
fn metrics_router(registry: Registry, handle: PrometheusHandle) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let (registry, handle) = (registry.clone(), handle.clone());
            async move {
                registry.refresh_gauges().await;
                (
                    [(
                        axum::http::header::CONTENT_TYPE,
                        "text/plain; version=0.0.4; charset=utf-8",
                    )],
                    handle.render(),
                )
            }
        }),
    )
}

/// Delivers the outbox to the configured webhooks from this process (feature `events`).
#[cfg(feature = "events")]
fn spawn_event_delivery(
    config: &Config,
    metadata: Arc<dyn MetadataStore>,
    stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use berth::events::payload::{PayloadFormat, Source};
    use berth::events::{Deliverer, DeliveryOptions, Endpoint, Target};

    // Started without webhooks too: it prunes what webhooks configured before left.
    let events = &config.events;
    let endpoints = events
        .webhooks
        .iter()
        .map(|w| Endpoint {
            name: w.name.clone(),
            target: Target::Http {
                url: w.url.clone(),
                headers: w.headers.clone(),
                secret: w.secret.clone(),
            },
            format: match w.format {
                config::WebhookFormat::CloudEvents => PayloadFormat::CloudEvents,
                config::WebhookFormat::Distribution => PayloadFormat::Distribution,
            },
            timeout: w.timeout,
            max_in_flight: w.max_in_flight,
            batch_size: w.batch_size,
            max_attempts: w.max_attempts,
            max_age: w.max_age,
        })
        .collect();
    let options = DeliveryOptions {
        poll_interval: events.poll_interval,
        lease: events.lease,
        retry_max: events.retry_max,
        delivered_retention: events.retention,
        dead_retention: events.dead_letter_retention,
        source: Source {
            public_url: events.public_url.clone(),
            instance: uuid_like_instance(),
        },
        ..DeliveryOptions::default()
    };
    let deliverer = Deliverer::new(metadata, endpoints, options)?;
    for webhook in &events.webhooks {
        tracing::info!(webhook = %webhook.name, url = %webhook.url, "delivering events");
    }
    tokio::spawn(deliverer.run(stopped));
    Ok(())
}

#[cfg(not(feature = "events"))]
fn spawn_event_delivery(
    config: &Config,
    _metadata: Arc<dyn MetadataStore>,
    _stopped: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    if !config.events.webhooks.is_empty() {
        anyhow::bail!(
            "this berth was built without event delivery (feature `events`); remove the [[webhook]] entries"
        );
    }
    Ok(())
}

/// This process among the replicas, for Distribution's `source.instanceID`.
#[cfg(feature = "events")]
fn uuid_like_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// `berth events`: the outbox per endpoint, its rows, and replays.
async fn events(config: Config, args: EventsArgs) -> anyhow::Result<()> {
    use berth::metadata::events::{DeliveryState, OutboxQuery};
    use config::EventsAction;

    if config.storage == StorageKind::Memory {
        anyhow::bail!(
            "storage = memory keeps nothing between processes: there are no events to show"
        );
    }
    let metadata = metadata_store(&config).await?;
    let mut out = std::io::stdout().lock();
    match args.action {
        Some(EventsAction::Replay { endpoint, from, to }) => {
            if !config.events.webhooks.iter().any(|w| w.name == endpoint) {
                anyhow::bail!(
                    "no [[webhook]] is named {endpoint:?} in this configuration: replayed events would never be sent"
                );
            }
            let to = to.unwrap_or(from);
            let replayed = metadata
                .replay_events(&endpoint, from, to, berth::metadata::now_millis())
                .await?;
            writeln!(
                out,
                "{replayed} event(s) of {endpoint} with seq {from}..={to} are due again"
            )?;
        }
        None => {
            let state = match args.state.as_deref() {
                None | Some("all") => None,
                Some(name) => Some(DeliveryState::parse(name).with_context(|| {
                    format!("--state must be pending, delivered, dead or all, got {name:?}")
                })?),
            };
            let backlog = metadata.event_backlog(true).await?;
            let rows = metadata
                .outbox_events(OutboxQuery {
                    endpoint: args.endpoint.as_deref(),
                    state,
                    after: args.after,
                    limit: args.limit,
                })
                .await?;
            if args.json {
                let rows: Vec<_> = rows.iter().map(event_json).collect();
                let backlog: Vec<_> = backlog
                    .iter()
                    .map(|b| {
                        serde_json::json!({
                            "endpoint": b.endpoint, "pending": b.pending,
                            "delivered": b.delivered, "dead": b.dead,
                            "oldest_pending_at": b.oldest_pending_at,
                        })
                    })
                    .collect();
                writeln!(
                    out,
                    "{}",
                    serde_json::json!({ "endpoints": backlog, "events": rows })
                )?;
                return Ok(());
            }
            writeln!(
                out,
                "{:<24} {:>9} {:>9} {:>6}",
                "ENDPOINT", "PENDING", "DELIVERED", "DEAD"
            )?;
            for b in &backlog {
                writeln!(
                    out,
                    "{:<24} {:>9} {:>9} {:>6}",
                    b.endpoint, b.pending, b.delivered, b.dead
                )?;
            }
            if !rows.is_empty() {
                writeln!(out)?;
                writeln!(
                    out,
                    "{:>8} {:<16} {:<10} {:<18} {:<36} {:>8} {:<16} REPOSITORY / ERROR",
                    "SEQ", "ENDPOINT", "STATE", "ACTION", "EVENT ID", "ATTEMPTS", "ACTOR"
                )?;
            }
            for row in &rows {
                let what = match (&row.event.tag, &row.event.digest) {
                    (Some(tag), _) => format!("{}:{tag}", row.event.repository),
                    (None, Some(digest)) => format!("{}@{digest}", row.event.repository),
                    _ => row.event.repository.clone(),
                };
                writeln!(
                    out,
                    "{:>8} {:<16} {:<10} {:<18} {:<36} {:>8} {:<16} {what}{}",
                    row.seq,
                    row.endpoint,
                    row.state.as_str(),
                    row.event.action.as_str(),
                    row.event.id,
                    row.attempts,
                    // Berth's own changes (collection, a mirror's eviction) have no actor.
                    row.event.origin.actor.as_deref().unwrap_or("-"),
                    row.last_error
                        .as_deref()
                        .map(|e| format!("  ({e})"))
                        .unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}

fn event_json(row: &berth::metadata::events::OutboxEvent) -> serde_json::Value {
    serde_json::json!({
        "seq": row.seq,
        "endpoint": row.endpoint,
        "state": row.state.as_str(),
        "id": row.event.id,
        "action": row.event.action.as_str(),
        "repository": row.event.repository,
        "digest": row.event.digest,
        "media_type": row.event.media_type,
        "size": row.event.size,
        "tag": row.event.tag,
        "at": row.event.at,
        "attempts": row.attempts,
        "next_attempt_at": row.next_attempt_at,
        "last_error": row.last_error,
        "settled_at": row.settled_at,
        "origin": {
            "actor": row.event.origin.actor,
            "request_id": row.event.origin.request_id,
            "client_addr": row.event.origin.client_addr,
            "user_agent": row.event.origin.user_agent,
        },
    })
}

/// The upstreams read through, when the build can (feature `mirror`).
#[cfg(feature = "mirror")]
fn with_mirror(
    builder: berth::registry::RegistryBuilder,
    config: &Config,
) -> anyhow::Result<berth::registry::RegistryBuilder> {
    for upstream in config.upstreams.iter() {
        tracing::info!(
            upstream = %upstream.name,
            url = %upstream.url,
            prefix = upstream.prefix.as_deref().unwrap_or(""),
            default = upstream.default,
            "mirroring an upstream"
        );
    }
    Ok(builder.mirror(config.upstreams.clone())?)
}

#[cfg(not(feature = "mirror"))]
fn with_mirror(
    builder: berth::registry::RegistryBuilder,
    config: &Config,
) -> anyhow::Result<berth::registry::RegistryBuilder> {
    if !config.upstreams.is_empty() {
        anyhow::bail!(
            "[[upstream]] entries are configured, but this build of berth has no mirror (build with the mirror feature)"
        );
    }
    Ok(builder)
}

async fn serve(config: Config) -> anyhow::Result<()> {
    raise_open_file_limit(config.max_connections);
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            berth::instruments::DURATION_BUCKETS,
        )
        .context("setting histogram buckets")?
        .install_recorder()
        .context("installing the metrics recorder")?;
    berth::instruments::describe();
    let metadata = metadata_store(&config).await?;
    let blobs = blob_store(&config).await?;
    let mut builder = Registry::builder(blobs, metadata).options(config.registry.clone());
    if let Some(counter) = manifest_change_counter(&config) {
        builder = builder.manifest_cache(&counter).with_context(|| {
            format!("mapping the manifest change counter {}", counter.display())
        })?;
    }
    builder = with_mirror(builder, &config)?;
    let auth = auth_setup(&config.auth, &config.http.trusted_proxies)?;
    let tls = server_tls(config.tls.as_ref())?;
    let registry = builder.build();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("listening on {}", config.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(
        address = %local,
        scheme = if tls.is_some() { "https" } else { "http" },
        storage = registry.blob_store().kind(),
        buffers = registry.buffers().count(),
        part_size = registry.buffers().capacity(),
        "berth listening"
    );
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    tokio::spawn(registry.clone().run_maintenance(stopped()));
    tokio::spawn(registry.clone().run_gc(stopped()));
    tokio::spawn(registry.clone().run_mirror_pull_flush(stopped()));
    spawn_event_delivery(&config, registry.metadata_store().clone(), stopped())?;
    if let Some(admin) = config.admin_listen {
        let listener = tokio::net::TcpListener::bind(admin)
            .await
            .with_context(|| format!("listening on {admin}"))?;
        tracing::info!(address = %listener.local_addr()?, "health probes listening");
        let app = berth::http::health_router(registry.clone())
            .merge(metrics_router(registry.clone(), metrics.clone()));
        let done = stopped();
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(done)
                .await
            {
                tracing::error!(error = %e, "admin listener failed");
            }
        });
    }
    // One machine-readable line on stdout, for scripts and tests that start Berth on port 0;
    // written once every listener is bound, so that it means ready to connect.
    println!("listening on {local}");
    std::io::stdout().flush().ok();

    {
        let registry = registry.clone();
        let delay = config.shutdown_delay;
        tokio::spawn(async move {
            let terminated = shutdown_signal().await;
            registry.drain();
            // A load balancer is told first (readiness fails) and given time to stop sending;
            // Ctrl-C stops at once.
            if terminated && !delay.is_zero() {
                tracing::info!(
                    delay_secs = delay.as_secs_f64(),
                    "draining: readiness fails while requests are still served"
                );
                tokio::time::sleep(delay).await;
            }
            let _ = stop_tx.send(true);
        });
    }
    let mut api = berth::http::Api::new(registry.clone()).options(config.http.clone());
    if let Some(authorizer) = auth.authorizer {
        api = api.authorizer(authorizer);
    }
    #[cfg(feature = "ui")]
    let registry_for_ui = registry.clone();
    let mut app = api
        .router()
        .merge(berth::http::health_router(registry.clone()));
    #[cfg(feature = "mirror")]
    {
        app = app.merge(berth::http::relay_router(registry));
    }
    if let Some(tokens) = auth.token_router {
        app = app.merge(tokens);
    }
    #[cfg(feature = "ui")]
    if config.ui.enabled {
        app = app.merge(ui_router(
            &config,
            registry_for_ui,
            auth.accounts,
            tls.is_some(),
        )?);
    }
    let options = berth::http::ServeOptions {
        grace: config.shutdown_timeout,
        header_timeout: config.http_header_timeout,
        idle_timeout: config.http_idle_timeout,
        max_connections: config.max_connections,
    };
    match tls {
        #[cfg(feature = "tls")]
        Some((tls, reload_interval)) => {
            tokio::spawn(Arc::clone(&tls).watch(reload_interval, stopped()));
            berth::http::serve_tls(listener, tls, app, stopped(), options)
                .await
                .context("serving HTTPS")?;
        }
        _ => berth::http::serve_with(listener, app, stopped(), options)
            .await
            .context("serving HTTP")?,
    }
    tracing::info!("stopped");
    Ok(())
}

/// The web UI, with the session key every replica shares (or, without one, a key of this
/// process's own, said in the log).
#[cfg(feature = "ui")]
fn ui_router(
    config: &Config,
    registry: Registry,
    accounts: Option<(Arc<dyn berth::auth::Accounts>, bool)>,
    tls: bool,
) -> anyhow::Result<axum::Router> {
    use berth::ui::session::SessionKey;

    let key = match &config.ui.session_key {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("reading the UI session key {}", path.display()))?;
            SessionKey::new(&bytes)
                .with_context(|| format!("the UI session key {}", path.display()))?
        }
        None => {
            tracing::info!(
                "web UI sessions are signed with a key of this process: set ui_session_key \
                 to share sign-ins between replicas and keep them across restarts"
            );
            SessionKey::random()
        }
    };
    let mut ui = berth::ui::Ui::new(registry)
        .session_key(key)
        .secure_cookies(tls)
        .trusted_proxies(config.http.trusted_proxies.clone());
    if let Some((accounts, can_sign_in)) = accounts {
        ui = ui.accounts(accounts, can_sign_in);
    }
    tracing::info!("web UI at /ui/");
    Ok(ui.router())
}

/// The TLS settings to serve with and how often to read their files again, loaded now so that
/// a bad certificate stops the start.
#[cfg(feature = "tls")]
fn server_tls(
    settings: Option<&config::TlsSettings>,
) -> anyhow::Result<Option<(Arc<berth::http::ServerTls>, std::time::Duration)>> {
    let Some(settings) = settings else {
        return Ok(None);
    };
    let files = berth::http::TlsFiles {
        cert: settings.cert.clone(),
        key: settings.key.clone(),
        client_ca: settings.client_ca.clone(),
    };
    let tls = berth::http::ServerTls::load(files).context("loading the TLS certificate")?;
    Ok(Some((tls, settings.reload_interval)))
}

#[cfg(not(feature = "tls"))]
fn server_tls(settings: Option<&config::TlsSettings>) -> anyhow::Result<Option<((), ())>> {
    if settings.is_some() {
        anyhow::bail!("tls_cert is set but this berth was built without the tls feature");
    }
    Ok(None)
}

/// The authorizer (and token endpoint) access control needs, and who signs in to the web UI.
struct AuthSetup {
    authorizer: Option<Arc<dyn berth::auth::Authorizer>>,
    token_router: Option<axum::Router>,
    /// The UI's accounts, and whether they sign in here; `None` without access control.
    #[cfg_attr(not(feature = "ui"), allow(dead_code))]
    accounts: Option<(Arc<dyn berth::auth::Accounts>, bool)>,
}

#[cfg(feature = "auth")]
fn auth_setup(
    settings: &config::AuthSettings,
    proxies: &berth::client::TrustedProxies,
) -> anyhow::Result<AuthSetup> {
    use berth::auth::acl::Acl;
    use berth::auth::basic::{BasicAuthorizer, PasswordAccounts};
    use berth::auth::bearer::{BearerAuthorizer, Realm, TokenVerifier};
    use berth::auth::htpasswd::Htpasswd;
    use berth::auth::issuer::{IssuerSettings, TokenIssuer};
    use berth::auth::keys::{SigningKey, load_jwks, load_public_keys};
    use berth::auth::limiter::LoginLimiter;
    use config::AuthMode;

    if settings.mode == AuthMode::None {
        return Ok(AuthSetup {
            authorizer: None,
            token_router: None,
            accounts: None,
        });
    }
    let acl = Arc::new(match &settings.acl {
        Some(path) => Acl::load(path)?,
        None => Acl::authenticated_users_may_do_everything(),
    });
    let htpasswd = settings
        .htpasswd
        .as_deref()
        .map(Htpasswd::load)
        .transpose()?
        .map(Arc::new);
    let limiter = Arc::new(LoginLimiter::default());
    if settings.mode == AuthMode::Basic {
        let htpasswd = htpasswd.context("auth = basic needs auth_htpasswd")?;
        tracing::info!(
            users = htpasswd.len(),
            "access control: basic authentication"
        );
        let realm = settings.realm.clone().unwrap_or_else(|| "berth".to_owned());
        let accounts = PasswordAccounts::new(
            Some(Arc::clone(&htpasswd)),
            Arc::clone(&acl),
            Arc::clone(&limiter),
        );
        return Ok(AuthSetup {
            authorizer: Some(Arc::new(BasicAuthorizer::new(
                htpasswd, acl, realm, limiter,
            ))),
            token_router: None,
            accounts: Some((Arc::new(accounts), true)),
        });
    }
    let signing = settings
        .token_key
        .as_deref()
        .map(SigningKey::load)
        .transpose()?;
    let mut keys = Vec::new();
    if let Some(key) = &signing {
        keys.push(key.verifying_key().map_err(anyhow::Error::msg)?);
    }
    if let Some(path) = &settings.public_keys {
        keys.extend(load_public_keys(path)?);
    }
    if let Some(path) = &settings.jwks {
        keys.extend(load_jwks(path)?);
    }
    let verifier = Arc::new(TokenVerifier::new(
        keys,
        settings.issuer.clone(),
        settings.service.clone(),
        Some(Arc::clone(&acl)),
    ));
    let realm = match &settings.realm {
        Some(url) => Realm::Url(url.clone()),
        None => Realm::SameHost("/token".to_owned()),
    };
    // The UI signs users in with the htpasswd file the built-in issuer uses; with an external
    // token service, users cannot sign in here and visitors see what anonymous callers may.
    let issues_tokens = signing.is_some() && htpasswd.is_some();
    let accounts = PasswordAccounts::new(
        htpasswd.clone().filter(|_| issues_tokens),
        Arc::clone(&acl),
        Arc::clone(&limiter),
    );
    let token_router = match (signing, htpasswd) {
        (Some(key), Some(htpasswd)) => {
            tracing::info!(
                users = htpasswd.len(),
                algorithm = ?key.algorithm(),
                "access control: token authentication with the built-in issuer at /token"
            );
            let issuer = TokenIssuer::new(
                key,
                IssuerSettings {
                    issuer: settings.issuer.clone(),
                    service: settings.service.clone(),
                    lifetime: settings.token_lifetime,
                    refresh_lifetime: settings.refresh_token_lifetime,
                },
                htpasswd,
                acl,
                limiter,
                Arc::clone(&verifier),
            );
            Some(berth::http::token_router(
                Arc::new(issuer),
                settings.service.clone(),
                proxies.clone(),
            ))
        }
        _ => {
            tracing::info!("access control: token authentication with an external token service");
            None
        }
    };
    Ok(AuthSetup {
        authorizer: Some(Arc::new(BearerAuthorizer::new(
            verifier,
            realm,
            settings.service.clone(),
        ))),
        token_router,
        accounts: Some((Arc::new(accounts), issues_tokens)),
    })
}

#[cfg(not(feature = "auth"))]
fn auth_setup(
    settings: &config::AuthSettings,
    _proxies: &berth::client::TrustedProxies,
) -> anyhow::Result<AuthSetup> {
    if settings.mode != config::AuthMode::None {
        anyhow::bail!("this berth was built without access control (the auth feature)");
    }
    Ok(AuthSetup {
        authorizer: None,
        token_router: None,
        accounts: None,
    })
}

async fn gc(config: Config, args: GcArgs) -> anyhow::Result<()> {
    use berth::registry::gc::GcProgress;

    if config.storage == StorageKind::Memory {
        anyhow::bail!(
            "storage = memory keeps nothing between processes: there is nothing to collect"
        );
    }
    let metadata = metadata_store(&config).await?;
    let blobs = blob_store(&config).await?;
    // The upstreams too: what nobody pulled from them for their `evict_after` is evicted.
    let registry = with_mirror(
        Registry::builder(blobs, metadata).options(config.registry.clone()),
        &config,
    )?
    .build();
    let grace = humantime_secs(config.registry.gc_grace_period);
    let mut out = std::io::stdout().lock();
    if args.dry_run {
        let preview = registry.gc_preview().await?;
        writeln!(
            out,
            "gc --dry-run (grace period {grace}): {} review(s) due; would delete {} blob link(s) \
             and {} blob(s) ({}), {} untagged manifest(s), {} mirrored manifest(s) nobody pulled \
             and {} expired upload session(s); nothing was changed",
            preview.reviewed,
            preview.links,
            preview.blobs,
            mebibytes(preview.bytes),
            preview.manifests,
            preview.evicted,
            preview.expired_uploads
        )?;
        return Ok(());
    }
    let bar =
        progress_bar("{spinner} collecting [{bar:40}] {pos}/{len} reviews ({per_sec}, {eta} left)");
    let started = std::time::Instant::now();
    let mut on_progress = |event: GcProgress| match event {
        GcProgress::Planned { reviews } => bar.set_length(reviews),
        GcProgress::Reviewed { reviews } => bar.inc(reviews),
    };
    let report = registry.collect_garbage(Some(&mut on_progress)).await?;
    bar.finish_and_clear();
    writeln!(
        out,
        "gc (grace period {grace}): reviewed {} in {:.1} s; deleted {} untagged manifest(s), \
         {} blob link(s) and {} blob(s), freeing {}; evicted {} mirrored manifest(s) nobody \
         pulled; expired {} upload session(s); removed {} stored object(s)",
        report.reviewed,
        started.elapsed().as_secs_f64(),
        report.manifests,
        report.links,
        report.blobs,
        mebibytes(report.bytes),
        report.evicted,
        report.expired_uploads,
        report.removed_objects
    )?;
    if report.failed_objects > 0 {
        anyhow::bail!(
            "{} stored object(s) could not be removed yet; they stay queued for the next pass",
            report.failed_objects
        );
    }
    Ok(())
}

/// A progress bar on stderr when it is a terminal, hidden otherwise.
fn progress_bar(template: &str) -> indicatif::ProgressBar {
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
    let target = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        ProgressDrawTarget::stderr()
    } else {
        ProgressDrawTarget::hidden()
    };
    let bar = ProgressBar::with_draw_target(None, target);
    bar.set_style(
        ProgressStyle::with_template(template)
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar
}

fn mebibytes(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn humantime_secs(d: std::time::Duration) -> String {
    let secs = d.as_secs();
    match secs {
        0 => format!("{}ms", d.as_millis()),
        s if s % 86400 == 0 => format!("{}d", s / 86400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

async fn scrub(config: Config, args: ScrubArgs) -> anyhow::Result<()> {
    use berth::registry::scrub::{BlobProblem, ScrubOptions, ScrubProgress};

    if config.storage == StorageKind::Memory {
        anyhow::bail!(
            "storage = memory keeps nothing between processes: there is nothing to scrub"
        );
    }
    if let Some(p) = args.sample
        && !(p > 0.0 && p <= 100.0)
    {
        anyhow::bail!("--sample is a percentage above 0 and at most 100, got {p}");
    }
    let repository = args
        .repository
        .as_deref()
        .map(berth::oci::RepositoryName::parse)
        .transpose()?;
    let metadata = metadata_store(&config).await?;
    let blobs = blob_store(&config).await?;
    let registry = Registry::builder(blobs, metadata)
        .options(config.registry.clone())
        .build();
    let options = ScrubOptions {
        repository,
        sample_percent: args.sample,
        repair: args.repair,
        check_references: true,
        // Mirrored names keep manifests whose blobs nobody has pulled yet.
        sparse_manifests: config.registry.sparse_manifests || !config.upstreams.is_empty(),
    };
    let bar = progress_bar(
        "{spinner} scrubbing [{bar:40}] {bytes}/{total_bytes} ({bytes_per_sec}, {eta} left)",
    );
    let started = std::time::Instant::now();
    let mut on_progress = |event: ScrubProgress| match event {
        ScrubProgress::Planned { bytes, .. } => bar.set_length(bytes),
        ScrubProgress::Blob { bytes } => bar.inc(bytes),
    };
    let report = registry.scrub(&options, &mut on_progress).await?;
    bar.finish_and_clear();

    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "checked {} blobs ({:.1} MiB) in {:.1} s",
        report.blobs_checked,
        report.bytes_checked as f64 / (1 << 20) as f64,
        started.elapsed().as_secs_f64()
    )?;
    for damaged in &report.damaged {
        let what = match &damaged.problem {
            BlobProblem::Corrupt { computed } => format!("corrupt: its bytes hash to {computed}"),
            BlobProblem::WrongSize { stored } => format!(
                "damaged: {stored} bytes stored, {} recorded",
                damaged.blob.size
            ),
            BlobProblem::Missing => "missing: its bytes are gone".to_owned(),
            BlobProblem::Unreadable(why) => format!("unreadable: {why}"),
        };
        let fate = if damaged.forgotten {
            "; forgotten: it answers 404 until pushed again"
        } else {
            ""
        };
        writeln!(
            out,
            "blob {} (storage key {}) is {what}{fate}",
            damaged.blob.digest, damaged.blob.storage_key
        )?;
    }
    for dangling in &report.dangling {
        use berth::metadata::DanglingKind;
        let why = match dangling.kind {
            DanglingKind::MissingBlob => "a blob that is not in the registry",
            DanglingKind::UnlinkedBlob => "a blob not linked to its repository",
            DanglingKind::MissingManifest => "a manifest that is not in its repository",
        };
        writeln!(
            out,
            "manifest {}@{} references {why}: {}{}",
            dangling.repository,
            dangling.manifest,
            dangling.target,
            if report.dangling_allowed {
                " (accepted: sparse manifests are on)"
            } else {
                ""
            }
        )?;
    }
    if report.dangling_allowed && !report.dangling.is_empty() {
        writeln!(
            out,
            "{} reference(s) of sparse manifests do not resolve: a mirror of some platforms \
             expects them; a blob collected while a manifest naming it was pushed is among them \
             too, and is pulled only once pushed again",
            report.dangling.len()
        )?;
    }
    if !report.found_problems() {
        writeln!(out, "no problems found")?;
        return Ok(());
    }
    let forgotten = report.damaged.iter().filter(|d| d.forgotten).count();
    let dangling = if report.dangling_allowed {
        0
    } else {
        report.dangling.len()
    };
    anyhow::bail!(
        "scrub found {} damaged blob(s) ({forgotten} forgotten) and {dangling} dangling reference(s){}",
        report.damaged.len(),
        if args.repair || report.damaged.is_empty() {
            ""
        } else {
            "; run with --repair to forget the damaged blobs so that clients push them again"
        }
    )
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    if config.storage == StorageKind::Memory {
        anyhow::bail!("storage = memory has no database to migrate");
    }
    #[cfg(any(feature = "sqlite", feature = "postgres"))]
    {
        let store = sql_store(&config).await?;
        store
            .migrate()
            .await
            .context("applying database migrations")?;
        tracing::info!(
            database = %berth::metadata::sql::redact_url(&config.effective_database_url()),
            "migrations applied"
        );
        Ok(())
    }
    #[cfg(not(any(feature = "sqlite", feature = "postgres")))]
    anyhow::bail!("this berth was built without database support")
}

/// Waits for SIGINT or SIGTERM; whether it was SIGTERM.
async fn shutdown_signal() -> bool {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {
            tracing::info!("SIGINT received");
            false
        }
        _ = terminate => {
            tracing::info!("SIGTERM received");
            true
        }
    }
}
