//! Pull workloads: blob pulls (first and warm) and manifest `GET`/`HEAD` under concurrency.

use super::*;

impl Bench {
    /// The first pull of a blob, right after its push in this run (as CI pushes and a deploy
    /// pulls at once), or of the blob pushed last.
    pub(crate) async fn pull(&mut self) -> Result<()> {
        self.pull_as("pull").await
    }

    /// A pull of a blob pulled once already (what a registry serves most: popular layers).
    pub(crate) async fn pull_warm(&mut self) -> Result<()> {
        if self.last_blob.is_none() {
            self.push_mono().await?;
        }
        tokio::time::sleep(Duration::from_millis(self.opts.pull_after_ms)).await;
        self.pull_as("pull-first").await?;
        self.pull_as("pull-warm").await
    }

    pub(crate) async fn pull_as(&mut self, figure: &str) -> Result<()> {
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
        let (got, computed) = drain(r).await?;
        let elapsed = t.elapsed();
        if computed != d || got != size {
            return Err(format!("pulled {got} bytes with digest {computed}, expected {d}").into());
        }
        self.record(figure, mb_per_s(size, elapsed), "MB/s", None);
        Ok(())
    }

    pub(crate) async fn manifest_load(&mut self, method: reqwest::Method) -> Result<()> {
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
}
