//! Push workloads: monolithic, chunked, streamed and concurrent blob uploads, small images,
//! orphan blobs, and pushes beside slow uploads that hold connections (tricklers).

use super::*;

impl Bench {
    pub(crate) async fn start_upload(&self) -> Result<String> {
        open_upload(&self.http, &self.base, &self.opts.repo).await
    }

    pub(crate) async fn finish(
        &self,
        location: &str,
        digest: &str,
        body: Option<Bytes>,
    ) -> Result<()> {
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

    pub(crate) async fn push_mono(&mut self) -> Result<()> {
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

    pub(crate) async fn push_chunked(&mut self) -> Result<()> {
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
            if r.headers().contains_key("location") {
                location = location_of(&self.base, &r)?;
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
    pub(crate) async fn push_streamed<S>(
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
        let location = open_upload(http, base, repo).await?;
        let r = http
            .patch(&location)
            .body(reqwest::Body::wrap_stream(body))
            .send()
            .await?;
        if r.status() != 202 {
            return Err(format!("streaming PATCH: {}", r.status()).into());
        }
        let d = digest_of()?;
        let location = location_of(base, &r)?;
        let r = http.put(with_digest(&location, &d)).send().await?;
        if r.status() != 201 {
            return Err(format!("PUT: {}", r.status()).into());
        }
        Ok((d, t.elapsed()))
    }

    /// A random blob generated and hashed before the clock starts, sent in 1 MiB chunks.
    pub(crate) async fn push_stream_once(
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
    pub(crate) async fn push_generated_once(
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

    pub(crate) async fn push_stream(&mut self) -> Result<()> {
        let size = self.opts.size_mib * MIB;
        let (d, elapsed) =
            Self::push_stream_once(&self.http, &self.base, &self.opts.repo, size).await?;
        self.last_blob = Some((d, size));
        self.record("push-stream", mb_per_s(size, elapsed), "MB/s", None);
        Ok(())
    }

    pub(crate) async fn push_concurrent(&mut self) -> Result<()> {
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

    pub(crate) async fn push_blob(
        http: &reqwest::Client,
        base: &str,
        repo: &str,
        data: Bytes,
    ) -> Result<String> {
        let d = digest(&data);
        let location = open_upload(http, base, repo).await?;
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

    pub(crate) async fn push_small_image(
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

    pub(crate) async fn small_images(&mut self) -> Result<()> {
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
    pub(crate) async fn orphans(&mut self) -> Result<()> {
        let total = self.opts.orphans;
        let base_seed = seed();
        let t = Instant::now();
        let (http, base, repo) = (
            self.http.clone(),
            self.base.clone(),
            format!("{}-orphans", self.opts.repo),
        );
        each_index(self.opts.workers, total, move |i| {
            let (http, base, repo) = (http.clone(), base.clone(), repo.clone());
            async move {
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
                Ok(())
            }
        })
        .await?;
        self.record(
            "orphans-push",
            total as f64 / t.elapsed().as_secs_f64(),
            "blobs/s",
            None,
        );
        Ok(())
    }

    /// Opens `n` uploads whose clients each send a byte every second on their own connection
    /// (a raw chunked PATCH), and keeps them trickling until the returned guard is dropped.
    pub(crate) async fn open_tricklers(&self, n: usize) -> Result<tokio::task::JoinSet<()>> {
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
    pub(crate) async fn push_both_ways_twice(&self) -> Result<Vec<(&'static str, f64)>> {
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
    pub(crate) async fn push_beside_tricklers(&mut self) -> Result<()> {
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
}
