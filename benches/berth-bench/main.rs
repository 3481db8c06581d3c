//! `berth-bench`: drives any OCI registry over HTTP (and raw S3 for reference) and prints
//! figures. Each figure is one measurement; `benches/compare.sh` runs several targets side by
//! side, repeats, and reports medians and ratios with `berth-bench report`.
//!
//! ```text
//! cargo bench --bench berth-bench -- --url http://127.0.0.1:5000 push-mono pull manifest-get
//! cargo bench --bench berth-bench -- s3-put s3-put-parallel s3-get       # raw S3 from AWS_* env
//! cargo bench --bench berth-bench -- report results.jsonl
//! ```
//!
//! Here: the command line, the figures and what the workloads share; the workloads by kind in
//! `push.rs`, `pull.rs`, `listings.rs`, `ui.rs` (the web UI's pages) and `s3.rs`, and
//! `report.rs` for `berth-bench report`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

mod listings;
mod pull;
mod push;
#[path = "../../tests/common/random.rs"]
mod random;
mod report;
mod s3;
mod sink;
mod ui;

use report::report;
use s3::s3_put;

const MIB: usize = 1024 * 1024;
const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const ACCEPT: &str = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json, application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json";

#[derive(Parser, Debug, Clone)]
#[command(
    name = "berth-bench",
    about = "Benchmark an OCI registry (and raw S3)",
    args_override_self = true
)]
struct Opts {
    /// Registry base URL, e.g. http://127.0.0.1:5000.
    #[arg(long)]
    url: Option<String>,
    /// Name of the target in JSON output.
    #[arg(long, default_value = "registry")]
    label: String,
    /// Repository to use.
    #[arg(long, default_value = "bench/app")]
    repo: String,
    /// Blob size for push and pull workloads, MiB.
    #[arg(long, default_value_t = 256)]
    size_mib: usize,
    /// Chunk size for push-chunked, MiB.
    #[arg(long, default_value_t = 1)]
    chunk_mib: usize,
    /// Connections for manifest-get / manifest-head.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Workers for small-images and push-concurrent.
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// Seconds each timed-loop workload runs.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Tag counts for tags-list.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    tag_counts: Vec<usize>,
    /// Trickling uploads open during push-beside-tricklers.
    #[arg(long, default_value_t = 50)]
    tricklers: usize,
    /// Blobs orphans pushes.
    #[arg(long, default_value_t = 100_000)]
    orphans: usize,
    /// Tags in one repository for listings-scale.
    #[arg(long, default_value_t = 1_000_000)]
    scale_tags: usize,
    /// Repositories for listings-scale and ui-pages.
    #[arg(long, default_value_t = 100_000)]
    scale_repos: usize,
    /// Tags in one repository for ui-pages.
    #[arg(long, default_value_t = 10_000)]
    ui_tags: usize,
    /// Credentials `user:password` for a registry with access control: sent as Basic, or, with
    /// `--auth-token`, exchanged at the registry's `/token` for a bearer token (pull and push on
    /// `--repo`), which every request then carries.
    #[arg(long)]
    auth: Option<String>,
    /// Use Docker token authentication with `--auth` (the registry's built-in issuer).
    #[arg(long)]
    auth_token: bool,
    /// Server process id, to report its peak RSS (VmHWM).
    #[arg(long)]
    pid: Option<u32>,
    /// Append results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Raw S3 part size, MiB.
    #[arg(long, default_value_t = 16)]
    s3_part_mib: usize,
    /// For pull-warm: milliseconds between the push and the first pull (a deploy pulling a
    /// moment after CI pushed).
    #[arg(long, default_value_t = 0)]
    pull_after_ms: u64,
    /// Raw S3 bucket (default: $S3_BUCKET).
    #[arg(long)]
    s3_bucket: Option<String>,
    /// Address `event-sink` listens on.
    #[arg(long, default_value = "127.0.0.1:5390")]
    sink_listen: String,
    /// Seconds without an event after which `event-sink` reports.
    #[arg(long, default_value_t = 3.0)]
    sink_idle: f64,
    /// Workloads: push-mono push-chunked push-stream pull pull-warm manifest-get manifest-head
    /// small-images tags-list listings-scale ui-pages push-beside-tricklers push-concurrent orphans rss s3-put
    /// s3-put-parallel s3-get event-sink, or `report FILE`.
    #[arg(required = true)]
    workloads: Vec<String>,
}

#[derive(Serialize, Deserialize, Debug, Clone)]
struct Figure {
    target: String,
    workload: String,
    value: f64,
    unit: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p50_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    p99_ms: Option<f64>,
}

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn payload(len: usize, seed: u64) -> Bytes {
    Bytes::from(random::random_bytes(len, seed))
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
}

fn digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

fn mb_per_s(bytes: usize, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Runs `op(i)` for every `i` in `0..total` on `workers` tasks, each taking the next index
/// when it is done with one; the first error ends the run.
async fn each_index<F, Fut>(workers: usize, total: usize, op: F) -> Result<()>
where
    F: Fn(usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let (next, op) = (Arc::clone(&next), op.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= total {
                        return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                    }
                    op(i).await?;
                }
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    Ok(())
}

struct Bench {
    opts: Opts,
    http: reqwest::Client,
    base: String,
    figures: Vec<Figure>,
    last_blob: Option<(String, usize)>,
}

fn absolute(base: &str, location: &str) -> String {
    if location.starts_with("http://") || location.starts_with("https://") {
        location.to_owned()
    } else {
        format!("{base}{location}")
    }
}

fn with_digest(location: &str, digest: &str) -> String {
    let sep = if location.contains('?') { '&' } else { '?' };
    format!("{location}{sep}digest={digest}")
}

/// The `Location` of a response, made absolute.
fn location_of(base: &str, r: &reqwest::Response) -> Result<String> {
    let location = r.headers().get("location").ok_or("no Location")?.to_str()?;
    Ok(absolute(base, location))
}

/// `POST /blobs/uploads/`: the new upload's absolute location.
async fn open_upload(http: &reqwest::Client, base: &str, repo: &str) -> Result<String> {
    let r = http
        .post(format!("{base}/v2/{repo}/blobs/uploads/"))
        .send()
        .await?;
    if r.status() != 202 {
        return Err(format!("POST upload: {}", r.status()).into());
    }
    location_of(base, &r)
}

/// PUTs an OCI manifest at `url` (a tag, or a digest with `?tag=`s); anything but 201 fails.
async fn put_manifest(http: &reqwest::Client, url: String, manifest: Bytes) -> Result<()> {
    let r = http
        .put(url)
        .header("content-type", OCI_MANIFEST)
        .body(manifest)
        .send()
        .await?;
    if r.status() != 201 {
        return Err(format!("tagging: {}", r.status()).into());
    }
    Ok(())
}

/// Reads a response's body to the end: its length and sha256 digest.
async fn drain(r: reqwest::Response) -> Result<(usize, String)> {
    let mut hasher = Sha256::new();
    let mut stream = r.bytes_stream();
    let mut got = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        got += chunk.len();
        hasher.update(&chunk);
    }
    Ok((got, format!("sha256:{}", hex::encode(hasher.finalize()))))
}

impl Bench {
    fn record(
        &mut self,
        workload: &str,
        value: f64,
        unit: &str,
        latencies: Option<&mut Vec<Duration>>,
    ) {
        let (p50, p99) = match latencies {
            Some(l) => {
                l.sort();
                (Some(percentile(l, 0.5)), Some(percentile(l, 0.99)))
            }
            None => (None, None),
        };
        let figure = Figure {
            target: self.opts.label.clone(),
            workload: workload.to_owned(),
            value,
            unit: unit.to_owned(),
            p50_ms: p50,
            p99_ms: p99,
        };
        let latency = match (p50, p99) {
            (Some(a), Some(b)) => format!("   p50 {a:.2} ms   p99 {b:.2} ms"),
            _ => String::new(),
        };
        println!(
            "{:<14} {:<26} {:>12.1} {:<10}{latency}",
            figure.target, figure.workload, figure.value, figure.unit
        );
        self.figures.push(figure);
    }

    fn rss(&mut self) -> Result<()> {
        let pid = self.opts.pid.ok_or("rss needs --pid")?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
        let hwm = status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or("no VmHWM")?;
        self.record("peak-rss", hwm / 1024.0, "MiB", None);
        Ok(())
    }
}

/// The `Authorization` every request carries, from `--auth` (and `--auth-token`).
async fn authorization(opts: &Opts) -> Result<reqwest::header::HeaderMap> {
    use base64::Engine as _;
    let mut headers = reqwest::header::HeaderMap::new();
    let Some(credentials) = &opts.auth else {
        return Ok(headers);
    };
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(credentials)
    );
    let value = if opts.auth_token {
        let base = opts.url.as_deref().ok_or("--auth-token needs --url")?;
        let r = reqwest::Client::new()
            .get(format!("{}/token", base.trim_end_matches('/')))
            .query(&[
                ("service", "berth"),
                ("scope", &format!("repository:{}:pull,push", opts.repo)),
            ])
            .header("authorization", basic)
            .send()
            .await?;
        if r.status() != 200 {
            return Err(format!("token request: {}", r.status()).into());
        }
        let body: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
        format!("Bearer {}", body["token"].as_str().ok_or("no token")?)
    } else {
        basic
    };
    headers.insert(reqwest::header::AUTHORIZATION, value.parse()?);
    Ok(headers)
}

#[tokio::main]
async fn main() -> Result<()> {
    // `cargo bench` passes `--bench`; it means nothing here.
    let args: Vec<String> = std::env::args().filter(|a| a != "--bench").collect();
    let opts = Opts::parse_from(args);
    if opts.workloads.first().map(String::as_str) == Some("report") {
        let path = opts.workloads.get(1).ok_or("report needs a results file")?;
        return report(path);
    }
    let headers = authorization(&opts).await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(opts.concurrency.max(opts.workers) + 8)
        .timeout(Duration::from_secs(3600))
        .default_headers(headers)
        .build()?;
    let base = opts
        .url
        .clone()
        .unwrap_or_default()
        .trim_end_matches('/')
        .to_owned();
    let mut bench = Bench {
        opts: opts.clone(),
        http,
        base,
        figures: Vec::new(),
        last_blob: None,
    };
    for workload in &opts.workloads {
        let needs_url =
            !workload.starts_with("s3-") && workload != "rss" && workload != "event-sink";
        if needs_url && bench.base.is_empty() {
            return Err(format!("{workload} needs --url").into());
        }
        let outcome = match workload.as_str() {
            "push-mono" => bench.push_mono().await,
            "push-chunked" => bench.push_chunked().await,
            "push-stream" => bench.push_stream().await,
            "push-concurrent" => bench.push_concurrent().await,
            "pull" => bench.pull().await,
            "pull-warm" => bench.pull_warm().await,
            "manifest-get" => bench.manifest_load(reqwest::Method::GET).await,
            "manifest-head" => bench.manifest_load(reqwest::Method::HEAD).await,
            "small-images" => bench.small_images().await,
            "orphans" => bench.orphans().await,
            "tags-list" => bench.tags_list().await,
            "listings-scale" => bench.listings_scale().await,
            "ui-pages" => bench.ui_pages().await,
            "push-beside-tricklers" => bench.push_beside_tricklers().await,
            "rss" => bench.rss(),
            "s3-put" => s3_put(&mut bench, 1).await,
            "s3-put-parallel" => s3_put(&mut bench, 4).await,
            "s3-get" => Ok(()),
            "event-sink" => bench.event_sink().await,
            other => Err(format!("unknown workload {other}").into()),
        };
        if let Err(e) = outcome {
            eprintln!("{} {workload}: FAILED: {e}", opts.label);
        }
    }
    if let Some(path) = &opts.json {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for f in &bench.figures {
            writeln!(file, "{}", serde_json::to_string(f)?)?;
        }
    }
    Ok(())
}
