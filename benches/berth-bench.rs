//! `berth-bench`: drives any OCI registry over HTTP (and raw S3 for reference) and prints
//! figures. Each figure is one measurement; `benches/compare.sh` runs several targets side by
//! side, repeats, and reports medians and ratios with `berth-bench report`.
//!
//! ```text
//! cargo bench --bench berth-bench -- --url http://127.0.0.1:5000 push-mono pull manifest-get
//! cargo bench --bench berth-bench -- s3-put s3-put-parallel s3-get       # raw S3 from AWS_* env
//! cargo bench --bench berth-bench -- report results.jsonl
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

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
    /// Repositories for listings-scale.
    #[arg(long, default_value_t = 100_000)]
    scale_repos: usize,
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
    /// Workloads: push-mono push-chunked push-stream pull pull-warm manifest-get manifest-head
    /// small-images tags-list listings-scale push-beside-tricklers push-concurrent orphans rss s3-put
    /// s3-put-parallel s3-get, or `report FILE`.
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
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    Bytes::from(out)
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

    async fn start_upload(&self) -> Result<String> {
        let r = self
            .http
            .post(format!(
                "{}/v2/{}/blobs/uploads/",
                self.base, self.opts.repo
            ))
            .send()
            .await?;
        if r.status() != 202 {
            return Err(format!("POST upload: {}", r.status()).into());
        }
        let location = r.headers().get("location").ok_or("no Location")?.to_str()?;
        Ok(absolute(&self.base, location))
    }

    async fn finish(&self, location: &str, digest: &str, body: Option<Bytes>) -> Result<()> {
        let mut req = self.http.put(with_digest(location, digest));
        if let Some(body) = body {
            req = req
                .header("content-type", "application/octet-stream")
                .body(body);
        }
        let r = req.send().await?;
        if r.status() != 201 {
            return Err(format!(
                "PUT upload: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )
            .into());
        }
        Ok(())
    }

    async fn push_mono(&mut self) -> Result<()> {
        let size = self.opts.size_mib * MIB;
        let data = payload(size, seed());
        let d = digest(&data);
        let t = Instant::now();
        let location = self.start_upload().await?;
        self.finish(&location, &d, Some(data)).await?;
        let elapsed = t.elapsed();
        self.last_blob = Some((d, size));
        self.record("push-mono", mb_per_s(size, elapsed), "MB/s", None);
        Ok(())
    }

    async fn push_chunked(&mut self) -> Result<()> {
        let size = self.opts.size_mib * MIB;
        let chunk = self.opts.chunk_mib * MIB;
        let data = payload(size, seed());
        let d = digest(&data);
        let t = Instant::now();
        let mut location = self.start_upload().await?;
        let mut at = 0;
        while at < size {
            let end = (at + chunk).min(size);
            let r = self
                .http
                .patch(&location)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{at}-{}", end - 1))
                .body(data.slice(at..end))
                .send()
                .await?;
            if r.status() != 202 {
                return Err(format!(
                    "PATCH: {} {}",
                    r.status(),
                    r.text().await.unwrap_or_default()
                )
                .into());
            }
            if let Some(l) = r.headers().get("location") {
                location = absolute(&self.base, l.to_str()?);
            }
            at = end;
        }
        self.finish(&location, &d, None).await?;
        let elapsed = t.elapsed();
        self.record(
            &format!("push-chunked-{}MiB", self.opts.chunk_mib),
            mb_per_s(size, elapsed),
            "MB/s",
            None,
        );
        Ok(())
    }

    /// One streaming PATCH without `Content-Length` carrying `body`, then `PUT ?digest=`
    /// with the digest `digest_of` gives once the body has been sent.
    async fn push_streamed<S>(
        http: &reqwest::Client,
        base: &str,
        repo: &str,
        body: S,
        digest_of: impl FnOnce() -> Result<String>,
    ) -> Result<(String, Duration)>
    where
        S: futures::Stream<Item = std::io::Result<Bytes>> + Send + Sync + 'static,
    {
        let t = Instant::now();
        let r = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await?;
        let location = absolute(
            base,
            r.headers().get("location").ok_or("no Location")?.to_str()?,
        );
        let r = http
            .patch(&location)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?;
        if r.status() != 202 {
            return Err(format!("streaming PATCH: {}", r.status()).into());
        }
        let d = digest_of()?;
        let location = absolute(
            base,
            r.headers().get("location").ok_or("no Location")?.to_str()?,
        );
        let r = http.put(with_digest(&location, &d)).send().await?;
        if r.status() != 201 {
            return Err(format!("PUT: {}", r.status()).into());
        }
        Ok((d, t.elapsed()))
    }

    /// A random blob generated and hashed before the clock starts, sent in 1 MiB chunks.
    async fn push_stream_once(
        http: &reqwest::Client,
        base: &str,
        repo: &str,
        size: usize,
    ) -> Result<(String, Duration)> {
        let whole = payload(size, seed());
        let d = digest(&whole);
        let chunks = size.div_ceil(MIB);
        let stream = futures::stream::iter((0..chunks).map(move |i| {
            Ok::<_, std::io::Error>(whole.slice(i * MIB..((i + 1) * MIB).min(size)))
        }));
        Self::push_streamed(http, base, repo, stream, || Ok(d)).await
    }

    /// A blob generated as it is sent (a random 1 MiB block stamped with each chunk's index,
    /// so no two chunks are equal) and hashed on the way: the client holds 1 MiB per upload
    /// however large the blob, so 32 concurrent 1 GiB uploads fit in its memory.
    async fn push_generated_once(
        http: &reqwest::Client,
        base: &str,
        repo: &str,
        size: usize,
    ) -> Result<(String, Duration)> {
        let block = payload(MIB, seed());
        let hasher = Arc::new(std::sync::Mutex::new(Sha256::new()));
        let hashing = hasher.clone();
        let stream = futures::stream::iter((0..size.div_ceil(MIB)).map(move |i| {
            let mut chunk = block[..MIB.min(size - i * MIB)].to_vec();
            let stamp = (i as u64).to_le_bytes();
            let n = stamp.len().min(chunk.len());
            chunk[..n].copy_from_slice(&stamp[..n]);
            hashing
                .lock()
                .map_err(|_| std::io::Error::other("hasher poisoned"))?
                .update(&chunk);
            Ok::<_, std::io::Error>(Bytes::from(chunk))
        }));
        Self::push_streamed(http, base, repo, stream, move || {
            let hasher = hasher.lock().map_err(|_| "hasher poisoned")?;
            Ok(format!("sha256:{}", hex::encode(hasher.clone().finalize())))
        })
        .await
    }

    async fn push_stream(&mut self) -> Result<()> {
        let size = self.opts.size_mib * MIB;
        let (d, elapsed) =
            Self::push_stream_once(&self.http, &self.base, &self.opts.repo, size).await?;
        self.last_blob = Some((d, size));
        self.record("push-stream", mb_per_s(size, elapsed), "MB/s", None);
        Ok(())
    }

    async fn push_concurrent(&mut self) -> Result<()> {
        let size = self.opts.size_mib * MIB;
        let workers = self.opts.workers;
        let t = Instant::now();
        let tasks: Vec<_> = (0..workers)
            .map(|_| {
                let (http, base, repo) =
                    (self.http.clone(), self.base.clone(), self.opts.repo.clone());
                tokio::spawn(
                    async move { Self::push_generated_once(&http, &base, &repo, size).await },
                )
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        let elapsed = t.elapsed();
        self.record(
            &format!("push-concurrent-{workers}x{}MiB", self.opts.size_mib),
            mb_per_s(size * workers, elapsed),
            "MB/s",
            None,
        );
        Ok(())
    }

    /// The first pull of a blob, right after its push in this run (as CI pushes and a deploy
    /// pulls at once), or of the blob pushed last.
    async fn pull(&mut self) -> Result<()> {
        self.pull_as("pull").await
    }

    /// A pull of a blob pulled once already (what a registry serves most: popular layers).
    async fn pull_warm(&mut self) -> Result<()> {
        if self.last_blob.is_none() {
            self.push_mono().await?;
        }
        tokio::time::sleep(Duration::from_millis(self.opts.pull_after_ms)).await;
        self.pull_as("pull-first").await?;
        self.pull_as("pull-warm").await
    }

    async fn pull_as(&mut self, figure: &str) -> Result<()> {
        if self.last_blob.is_none() {
            self.push_mono().await?;
        }
        let (d, size) = self.last_blob.clone().ok_or("nothing pushed")?;
        let t = Instant::now();
        let r = self
            .http
            .get(format!("{}/v2/{}/blobs/{d}", self.base, self.opts.repo))
            .send()
            .await?;
        if r.status() != 200 {
            return Err(format!("GET blob: {}", r.status()).into());
        }
        let mut hasher = Sha256::new();
        let mut stream = r.bytes_stream();
        let mut got = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            got += chunk.len();
            hasher.update(&chunk);
        }
        let elapsed = t.elapsed();
        let computed = format!("sha256:{}", hex::encode(hasher.finalize()));
        if computed != d || got != size {
            return Err(format!("pulled {got} bytes with digest {computed}, expected {d}").into());
        }
        self.record(figure, mb_per_s(size, elapsed), "MB/s", None);
        Ok(())
    }

    async fn push_blob(
        http: &reqwest::Client,
        base: &str,
        repo: &str,
        data: Bytes,
    ) -> Result<String> {
        let d = digest(&data);
        let r = http
            .post(format!("{base}/v2/{repo}/blobs/uploads/"))
            .send()
            .await?;
        let location = absolute(
            base,
            r.headers().get("location").ok_or("no Location")?.to_str()?,
        );
        let r = http
            .put(with_digest(&location, &d))
            .header("content-type", "application/octet-stream")
            .body(data)
            .send()
            .await?;
        if r.status() != 201 {
            return Err(format!("PUT blob: {}", r.status()).into());
        }
        Ok(d)
    }

    async fn push_small_image(
        http: &reqwest::Client,
        base: &str,
        repo: &str,
        tag: &str,
        s: u64,
    ) -> Result<Vec<u8>> {
        let config = format!(
            r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"seed":{s}}}"#
        );
        let l1 = payload(4096, s);
        let l2 = payload(4096, s ^ 0xABCD);
        let cd = Self::push_blob(http, base, repo, Bytes::from(config.clone())).await?;
        let d1 = Self::push_blob(http, base, repo, l1).await?;
        let d2 = Self::push_blob(http, base, repo, l2).await?;
        let manifest = format!(
            r#"{{"schemaVersion":2,"mediaType":"{OCI_MANIFEST}","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{cd}","size":{}}},"layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d1}","size":4096}},{{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"{d2}","size":4096}}]}}"#,
            config.len()
        );
        let r = http
            .put(format!("{base}/v2/{repo}/manifests/{tag}"))
            .header("content-type", OCI_MANIFEST)
            .body(manifest.clone())
            .send()
            .await?;
        if r.status() != 201 {
            return Err(format!(
                "PUT manifest: {} {}",
                r.status(),
                r.text().await.unwrap_or_default()
            )
            .into());
        }
        Ok(manifest.into_bytes())
    }

    async fn small_images(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs_f64(self.opts.seconds);
        let t = Instant::now();
        let tasks: Vec<_> = (0..self.opts.workers)
            .map(|w| {
                let (http, base, repo) = (
                    self.http.clone(),
                    self.base.clone(),
                    format!("{}-small", self.opts.repo),
                );
                tokio::spawn(async move {
                    let mut n = 0u64;
                    let mut latencies = Vec::new();
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        Self::push_small_image(
                            &http,
                            &base,
                            &repo,
                            &format!("w{w}-{n}"),
                            seed() ^ (w as u64) << 48,
                        )
                        .await?;
                        latencies.push(started.elapsed());
                        n += 1;
                    }
                    Ok::<_, Box<dyn std::error::Error + Send + Sync>>((n, latencies))
                })
            })
            .collect();
        let mut total = 0;
        let mut latencies = Vec::new();
        for task in tasks {
            let (n, l) = task.await??;
            total += n;
            latencies.extend(l);
        }
        let elapsed = t.elapsed();
        self.record(
            &format!("small-images-x{}", self.opts.workers),
            total as f64 / elapsed.as_secs_f64(),
            "images/s",
            Some(&mut latencies),
        );
        Ok(())
    }

    /// Pushes `--orphans` small blobs (1 KiB, single-request `POST ?digest=`) that no
    /// manifest references, from `--workers` clients: garbage for a collector to find.
    async fn orphans(&mut self) -> Result<()> {
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let total = self.opts.orphans;
        let base_seed = seed();
        let t = Instant::now();
        let tasks: Vec<_> = (0..self.opts.workers)
            .map(|_| {
                let (http, base, repo, next) = (
                    self.http.clone(),
                    self.base.clone(),
                    format!("{}-orphans", self.opts.repo),
                    Arc::clone(&next),
                );
                tokio::spawn(async move {
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= total {
                            return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                        }
                        let data = payload(1024, base_seed ^ i as u64);
                        let d = digest(&data);
                        let r = http
                            .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={d}"))
                            .header("content-type", "application/octet-stream")
                            .body(data)
                            .send()
                            .await?;
                        if r.status() != 201 {
                            return Err(format!("POST ?digest=: {}", r.status()).into());
                        }
                    }
                })
            })
            .collect();
        for task in tasks {
            task.await??;
        }
        self.record(
            "orphans-push",
            total as f64 / t.elapsed().as_secs_f64(),
            "blobs/s",
            None,
        );
        Ok(())
    }

    async fn manifest_load(&mut self, method: reqwest::Method) -> Result<()> {
        let tag = "bench-manifest";
        Self::push_small_image(&self.http, &self.base, &self.opts.repo, tag, 42).await?;
        let url = format!("{}/v2/{}/manifests/{tag}", self.base, self.opts.repo);
        let deadline = Instant::now() + Duration::from_secs_f64(self.opts.seconds);
        let t = Instant::now();
        let tasks: Vec<_> = (0..self.opts.concurrency)
            .map(|_| {
                let (http, url, method) = (self.http.clone(), url.clone(), method.clone());
                tokio::spawn(async move {
                    let mut latencies = Vec::with_capacity(100_000);
                    let mut errors = 0u64;
                    while Instant::now() < deadline {
                        let started = Instant::now();
                        match http
                            .request(method.clone(), &url)
                            .header("accept", ACCEPT)
                            .send()
                            .await
                        {
                            Ok(r) if r.status() == 200 => {
                                let _ = r.bytes().await;
                                latencies.push(started.elapsed());
                            }
                            _ => errors += 1,
                        }
                    }
                    (latencies, errors)
                })
            })
            .collect();
        let mut latencies = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (l, e) = task.await?;
            latencies.extend(l);
            errors += e;
        }
        let elapsed = t.elapsed();
        if errors > 0 {
            eprintln!("{} {method}: {errors} failed requests", self.opts.label);
        }
        let name = format!(
            "manifest-{}-c{}",
            method.as_str().to_lowercase(),
            self.opts.concurrency
        );
        self.record(
            &name,
            latencies.len() as f64 / elapsed.as_secs_f64(),
            "req/s",
            Some(&mut latencies),
        );
        Ok(())
    }

    async fn tag_count(&self, repo: &str) -> Result<usize> {
        let r = self
            .http
            .get(format!("{}/v2/{repo}/tags/list", self.base))
            .send()
            .await?;
        if r.status() == 404 {
            return Ok(0);
        }
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
        Ok(v["tags"].as_array().map(|t| t.len()).unwrap_or(0))
    }

    async fn tags_list(&mut self) -> Result<()> {
        for count in self.opts.tag_counts.clone() {
            let repo = format!("{}-tags{count}", self.opts.repo);
            if self.tag_count(&repo).await? < count {
                let manifest =
                    Self::push_small_image(&self.http, &self.base, &repo, "t0", 7).await?;
                let manifest = Bytes::from(manifest);
                let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
                let tasks: Vec<_> = (0..32)
                    .map(|_| {
                        let (http, base, repo, manifest, next) = (
                            self.http.clone(),
                            self.base.clone(),
                            repo.clone(),
                            manifest.clone(),
                            next.clone(),
                        );
                        tokio::spawn(async move {
                            loop {
                                let i = next.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                if i >= count {
                                    return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                                }
                                let r = http
                                    .put(format!("{base}/v2/{repo}/manifests/tag-{i:07}"))
                                    .header("content-type", OCI_MANIFEST)
                                    .body(manifest.clone())
                                    .send()
                                    .await?;
                                if r.status() != 201 {
                                    return Err(format!("tagging: {}", r.status()).into());
                                }
                            }
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await??;
                }
            }
            let mut latencies = Vec::new();
            let mut state = seed() | 1;
            let t = Instant::now();
            while latencies.len() < 200
                && t.elapsed() < Duration::from_secs_f64(self.opts.seconds * 4.0)
            {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                let last = format!("tag-{:07}", state as usize % count);
                let started = Instant::now();
                let r = self
                    .http
                    .get(format!(
                        "{}/v2/{repo}/tags/list?n=100&last={last}",
                        self.base
                    ))
                    .send()
                    .await?;
                let body = r.bytes().await?;
                latencies.push(started.elapsed());
                if body.is_empty() {
                    return Err("empty tag list".into());
                }
            }
            latencies.sort();
            let p50 = percentile(&latencies, 0.5);
            self.record(
                &format!("tags-list-n100-at-{count}"),
                p50,
                "ms p50",
                Some(&mut latencies),
            );
        }
        Ok(())
    }

    /// Opens `n` uploads whose clients each send a byte every second on their own connection
    /// (a raw chunked PATCH), and keeps them trickling until the returned guard is dropped.
    async fn open_tricklers(&self, n: usize) -> Result<tokio::task::JoinSet<()>> {
        use tokio::io::AsyncWriteExt;
        let host = self
            .base
            .strip_prefix("http://")
            .ok_or("tricklers need an http:// URL")?
            .to_owned();
        let mut set = tokio::task::JoinSet::new();
        for i in 0..n {
            let location = self.start_upload().await?;
            let path = location
                .strip_prefix(&self.base)
                .unwrap_or(&location)
                .to_owned();
            let mut stream = tokio::net::TcpStream::connect(&host).await?;
            let head = format!(
                "PATCH {path} HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/octet-stream\r\n\r\n"
            );
            stream.write_all(head.as_bytes()).await?;
            set.spawn(async move {
                // Staggered, so the tricklers do not all wake at once.
                tokio::time::sleep(Duration::from_millis((i * 1000 / n.max(1)) as u64)).await;
                loop {
                    if stream.write_all(b"1\r\nx\r\n").await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            });
        }
        // Let each send its first byte and take (and give back) a buffer.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        Ok(set)
    }

    /// Two monolithic and two streaming pushes of `--size-mib`: their throughputs.
    async fn push_both_ways_twice(&self) -> Result<Vec<(&'static str, f64)>> {
        let size = self.opts.size_mib * MIB;
        let mut figures = Vec::new();
        for _ in 0..2 {
            let data = payload(size, seed());
            let d = digest(&data);
            let t = Instant::now();
            let location = self.start_upload().await?;
            self.finish(&location, &d, Some(data)).await?;
            figures.push(("push-mono", mb_per_s(size, t.elapsed())));
            let (_, elapsed) =
                Self::push_stream_once(&self.http, &self.base, &self.opts.repo, size).await?;
            figures.push(("push-stream", mb_per_s(size, elapsed)));
        }
        Ok(figures)
    }

    /// Monolithic and streaming push throughput, alone and beside `--tricklers` uploads that
    /// trickle a byte a second each (the server's body rate limit must allow them for the run).
    async fn push_beside_tricklers(&mut self) -> Result<()> {
        let n = self.opts.tricklers;
        let alone = self.push_both_ways_twice().await?;
        let tricklers = self.open_tricklers(n).await?;
        let beside = self.push_both_ways_twice().await?;
        drop(tricklers);
        for workload in ["push-mono", "push-stream"] {
            let best = |figures: &[(&str, f64)]| {
                figures
                    .iter()
                    .filter(|(w, _)| *w == workload)
                    .map(|(_, v)| *v)
                    .fold(0.0, f64::max)
            };
            let (a, b) = (best(&alone), best(&beside));
            self.record(&format!("{workload}-alone"), a, "MB/s", None);
            self.record(&format!("{workload}-beside-{n}-tricklers"), b, "MB/s", None);
            self.record(
                &format!("{workload}-tricklers-ratio"),
                if a > 0.0 { b / a } else { 0.0 },
                "x",
                None,
            );
        }
        Ok(())
    }

    /// Walks a listing by its `Link` headers with pages of `n`; checks every page is sorted,
    /// continues the previous one and holds `n` entries until the last. Returns the entries
    /// seen and the page latencies.
    async fn walk_listing(
        &self,
        first: String,
        key: &str,
        n: usize,
    ) -> Result<(usize, Vec<Duration>)> {
        let mut url = first;
        let mut seen = 0;
        let mut previous: Option<String> = None;
        let mut latencies = Vec::new();
        loop {
            let t = Instant::now();
            let r = self.http.get(&url).send().await?;
            let link = r
                .headers()
                .get("link")
                .and_then(|l| l.to_str().ok())
                .map(str::to_owned);
            let body: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
            latencies.push(t.elapsed());
            let entries: Vec<String> = body[key]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default();
            for e in &entries {
                if previous.as_ref().is_some_and(|p| p >= e) {
                    return Err(format!("{key} out of order: {previous:?} then {e}").into());
                }
                previous = Some(e.clone());
            }
            seen += entries.len();
            match link {
                Some(link) => {
                    if entries.len() != n {
                        return Err(format!(
                            "a page with a next link holds {} entries, not {n}",
                            entries.len()
                        )
                        .into());
                    }
                    let target = link
                        .split(';')
                        .next()
                        .map(|s| s.trim().trim_start_matches('<').trim_end_matches('>'))
                        .ok_or("malformed Link")?;
                    url = absolute(&self.base, target);
                }
                None => return Ok((seen, latencies)),
            }
        }
    }

    /// Tag and catalog pages at Distribution scale: `--scale-tags` tags in one repository and
    /// `--scale-repos` repositories, seeded through the API (100 tags per manifest push with
    /// `?tag=`, repositories by cross-repository mounts). Reports p50/p99 of pages of 100 at
    /// random positions, and walks both listings whole to check `n`, `last` and `Link`.
    async fn listings_scale(&mut self) -> Result<()> {
        let tags = self.opts.scale_tags;
        let repos = self.opts.scale_repos;
        let repo = format!("{}-scale", self.opts.repo);
        let manifest =
            Bytes::from(Self::push_small_image(&self.http, &self.base, &repo, "seed", 11).await?);
        let manifest_digest = digest(&manifest);
        let config: serde_json::Value = serde_json::from_slice(&manifest)?;
        let blob = config["layers"][0]["digest"]
            .as_str()
            .ok_or("no layer")?
            .to_owned();
        let t = Instant::now();
        let pushes = tags.div_ceil(100);
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..16 {
            let (http, base, repo, manifest, manifest_digest, next) = (
                self.http.clone(),
                self.base.clone(),
                repo.clone(),
                manifest.clone(),
                manifest_digest.clone(),
                next.clone(),
            );
            tasks.spawn(async move {
                loop {
                    let p = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if p >= pushes {
                        return Ok::<_, Box<dyn std::error::Error + Send + Sync>>(());
                    }
                    let query: String = (p * 100..((p + 1) * 100).min(tags))
                        .map(|i| format!("tag=t{i:07}"))
                        .collect::<Vec<_>>()
                        .join("&");
                    let r = http
                        .put(format!(
                            "{base}/v2/{repo}/manifests/{manifest_digest}?{query}"
                        ))
                        .header("content-type", OCI_MANIFEST)
                        .body(manifest.clone())
                        .send()
                        .await?;
                    if r.status() != 201 {
                        return Err(format!("tagging: {}", r.status()).into());
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        eprintln!("seeded {tags} tags in {:.1} s", t.elapsed().as_secs_f64());
        let t = Instant::now();
        let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        for _ in 0..16 {
            let (http, base, repo, blob, next) = (
                self.http.clone(),
                self.base.clone(),
                repo.clone(),
                blob.clone(),
                next.clone(),
            );
            tasks.spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= repos {
                        return Ok(());
                    }
                    let r = http
                        .post(format!(
                            "{base}/v2/scale/r{i:06}/blobs/uploads/?mount={blob}&from={repo}"
                        ))
                        .send()
                        .await?;
                    if r.status() != 201 {
                        return Err(format!("mount: {}", r.status()).into());
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        eprintln!(
            "seeded {repos} repositories in {:.1} s",
            t.elapsed().as_secs_f64()
        );

        let mut state = seed() | 1;
        let mut random = move |below: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as usize % below.max(1)
        };
        let mut tag_pages = Vec::new();
        let mut catalog_pages = Vec::new();
        let timed = |url: String| {
            let http = self.http.clone();
            async move {
                let t = Instant::now();
                http.get(url).send().await?.bytes().await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(t.elapsed())
            }
        };
        for _ in 0..300 {
            let last = random(tags);
            tag_pages.push(
                timed(format!(
                    "{}/v2/{repo}/tags/list?n=100&last=t{last:07}",
                    self.base
                ))
                .await?,
            );
            let last = random(repos);
            catalog_pages.push(
                timed(format!(
                    "{}/v2/_catalog?n=100&last=scale/r{last:06}",
                    self.base
                ))
                .await?,
            );
        }
        tag_pages.sort();
        catalog_pages.sort();
        self.record(
            &format!("tags-page-n100-at-{tags}"),
            percentile(&tag_pages, 0.5),
            "ms p50",
            Some(&mut tag_pages),
        );
        self.record(
            &format!("catalog-page-n100-at-{repos}"),
            percentile(&catalog_pages, 0.5),
            "ms p50",
            Some(&mut catalog_pages),
        );

        let (seen, mut walk) = self
            .walk_listing(
                format!("{}/v2/{repo}/tags/list?n=1000", self.base),
                "tags",
                1000,
            )
            .await?;
        // "seed" and t0000000..: every tag, once, in order.
        if seen != tags + 1 {
            return Err(format!("walking the tags saw {seen}, expected {}", tags + 1).into());
        }
        self.record(
            &format!("tags-walk-n1000-{tags}"),
            walk.iter().map(Duration::as_secs_f64).sum::<f64>(),
            "s",
            Some(&mut walk),
        );
        let (seen, mut walk) = self
            .walk_listing(
                format!("{}/v2/_catalog?n=1000", self.base),
                "repositories",
                1000,
            )
            .await?;
        if seen < repos + 1 {
            return Err(format!(
                "walking the catalog saw {seen}, expected at least {}",
                repos + 1
            )
            .into());
        }
        self.record(
            &format!("catalog-walk-n1000-{repos}"),
            walk.iter().map(Duration::as_secs_f64).sum::<f64>(),
            "s",
            Some(&mut walk),
        );
        Ok(())
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

async fn s3_client() -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

async fn s3_put(bench: &mut Bench, parallel: usize) -> Result<()> {
    let client = s3_client().await;
    let bucket = bench
        .opts
        .s3_bucket
        .clone()
        .or_else(|| std::env::var("S3_BUCKET").ok())
        .ok_or("set --s3-bucket or S3_BUCKET")?;
    let size = bench.opts.size_mib * MIB;
    let part = bench.opts.s3_part_mib * MIB;
    let data = payload(size, seed());
    let key = format!("berth-bench/raw-{}", seed());
    let t = Instant::now();
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await?;
    let id = upload.upload_id().ok_or("no upload id")?.to_owned();
    let parts: Vec<(i32, Bytes)> = (0..size.div_ceil(part))
        .map(|i| {
            (
                i as i32 + 1,
                data.slice(i * part..((i + 1) * part).min(size)),
            )
        })
        .collect();
    let completed: Vec<aws_sdk_s3::types::CompletedPart> = futures::stream::iter(parts)
        .map(|(n, body)| {
            let (client, bucket, key, id) =
                (client.clone(), bucket.clone(), key.clone(), id.clone());
            async move {
                let len = body.len() as i64;
                let out = client
                    .upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&id)
                    .part_number(n)
                    .content_length(len)
                    .body(aws_sdk_s3::primitives::ByteStream::from(body))
                    .send()
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                )
            }
        })
        .buffered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await?;
    let elapsed = t.elapsed();
    let name = if parallel > 1 {
        format!("s3-put-x{parallel}")
    } else {
        "s3-put".to_owned()
    };
    bench.record(&name, mb_per_s(size, elapsed), "MB/s", None);

    let t = Instant::now();
    let out = client.get_object().bucket(&bucket).key(&key).send().await?;
    let mut body = out.body;
    let mut hasher = Sha256::new();
    let mut got = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        got += chunk.len();
        hasher.update(&chunk);
    }
    let elapsed = t.elapsed();
    if got != size {
        return Err(format!("GET returned {got} bytes").into());
    }
    if parallel == 1 {
        bench.record("s3-get-sdk", mb_per_s(size, elapsed), "MB/s", None);
        // The same bytes through a presigned URL and the HTTP client registry pulls use: the
        // baseline for a pull that is redirected to S3.
        let presigned = client
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(
                Duration::from_secs(600),
            )?)
            .await?;
        let t = Instant::now();
        let r = bench.http.get(presigned.uri()).send().await?;
        let mut stream = r.bytes_stream();
        let mut hasher = Sha256::new();
        let mut got = 0;
        while let Some(chunk) = stream.next().await {
            let chunk = chunk?;
            got += chunk.len();
            hasher.update(&chunk);
        }
        let elapsed = t.elapsed();
        if got != size {
            return Err(format!("presigned GET returned {got} bytes").into());
        }
        bench.record("s3-get", mb_per_s(size, elapsed), "MB/s", None);
    }
    client
        .delete_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await?;
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Medians per (workload, target) and Berth's ratio to each peer.
fn report(path: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut grouped: BTreeMap<(String, String), (Vec<f64>, String)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Figure = serde_json::from_str(line)?;
        let entry = grouped
            .entry((f.workload.clone(), f.target.clone()))
            .or_insert_with(|| (Vec::new(), f.unit.clone()));
        entry.0.push(f.value);
    }
    let mut medians: BTreeMap<String, BTreeMap<String, (f64, String, usize)>> = BTreeMap::new();
    for ((workload, target), (mut values, unit)) in grouped {
        let n = values.len();
        medians
            .entry(workload)
            .or_default()
            .insert(target, (median(&mut values), unit, n));
    }
    println!("\nMedians (n = repetitions)");
    for (workload, targets) in &medians {
        println!("{workload}");
        for (target, (value, unit, n)) in targets {
            println!("    {target:<22} {value:>12.1} {unit:<9} n={n}");
        }
    }
    println!(
        "\nBerth's ratio to each peer (higher is better; for latency 'ms p50' the ratio is peer/berth)"
    );
    for (workload, targets) in &medians {
        for (berth, (bv, unit, _)) in targets.iter().filter(|(t, _)| t.starts_with("berth")) {
            for (peer, (pv, _, _)) in targets.iter().filter(|(t, _)| !t.starts_with("berth")) {
                let ratio = if unit.starts_with("ms") || unit == "MiB" {
                    pv / bv
                } else {
                    bv / pv
                };
                println!("    {workload:<28} {berth:<18} / {peer:<22} {ratio:>7.2}x");
            }
        }
    }
    // Raw S3 as a peer of every S3-backed Berth workload.
    if let (Some(s3x4), Some(s3seq), Some(s3get)) = (
        medians.get("s3-put-x4"),
        medians.get("s3-put"),
        medians.get("s3-get"),
    ) {
        let raw = |m: &BTreeMap<String, (f64, String, usize)>| {
            m.values().next().map(|v| v.0).unwrap_or(f64::NAN)
        };
        println!("\nBerth (S3 targets) against raw S3 from the same client");
        for (workload, base, base_name) in [
            ("push-mono", raw(s3x4), "s3-put-x4"),
            ("push-stream", raw(s3x4), "s3-put-x4"),
            ("push-chunked-1MiB", raw(s3seq), "s3-put"),
            ("pull", raw(s3get), "s3-get"),
            ("pull-first", raw(s3get), "s3-get"),
            ("pull-warm", raw(s3get), "s3-get"),
        ] {
            if let Some(targets) = medians.get(workload) {
                for (target, (v, _, _)) in targets
                    .iter()
                    .filter(|(t, _)| t.starts_with("berth") && t.contains("s3"))
                {
                    println!(
                        "    {workload:<28} {target:<18} / {base_name:<22} {:>7.2}x",
                        v / base
                    );
                }
            }
        }
    }
    Ok(())
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
        let needs_url = !workload.starts_with("s3-") && workload != "rss";
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
            "push-beside-tricklers" => bench.push_beside_tricklers().await,
            "rss" => bench.rss(),
            "s3-put" => s3_put(&mut bench, 1).await,
            "s3-put-parallel" => s3_put(&mut bench, 4).await,
            "s3-get" => Ok(()),
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
