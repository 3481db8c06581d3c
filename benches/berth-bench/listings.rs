//! Listing workloads: tag-list pages at several tag counts, and tag and catalog pages at
//! Distribution scale, walked whole.

use super::*;

impl Bench {
    pub(crate) async fn tag_count(&self, repo: &str) -> Result<usize> {
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

    pub(crate) async fn tags_list(&mut self) -> Result<()> {
        for count in self.opts.tag_counts.clone() {
            let repo = format!("{}-tags{count}", self.opts.repo);
            if self.tag_count(&repo).await? < count {
                let manifest =
                    Self::push_small_image(&self.http, &self.base, &repo, "t0", 7).await?;
                let manifest = Bytes::from(manifest);
                let (http, base, repo) = (self.http.clone(), self.base.clone(), repo.clone());
                each_index(32, count, move |i| {
                    let (http, base, repo, manifest) =
                        (http.clone(), base.clone(), repo.clone(), manifest.clone());
                    async move {
                        let url = format!("{base}/v2/{repo}/manifests/tag-{i:07}");
                        put_manifest(&http, url, manifest).await
                    }
                })
                .await?;
            }
            let mut latencies = Vec::new();
            let mut state = seed() | 1;
            let t = Instant::now();
            while latencies.len() < 200
                && t.elapsed() < Duration::from_secs_f64(self.opts.seconds * 4.0)
            {
                let last = format!("tag-{:07}", random::xorshift(&mut state) as usize % count);
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

    /// Walks a listing by its `Link` headers with pages of `n`; checks every page is sorted,
    /// continues the previous one and holds `n` entries until the last. Returns the entries
    /// seen and the page latencies.
    pub(crate) async fn walk_listing(
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

    /// Makes `count` repositories `{prefix}000000…` by mounting `blob` from `from` into each
    /// (one request per repository).
    pub(crate) async fn seed_repositories(
        &self,
        prefix: &str,
        count: usize,
        blob: &str,
        from: &str,
    ) -> Result<()> {
        let t = Instant::now();
        let (http, base, prefix, blob, from) = (
            self.http.clone(),
            self.base.clone(),
            prefix.to_owned(),
            blob.to_owned(),
            from.to_owned(),
        );
        each_index(16, count, move |i| {
            let (http, base, prefix, from, blob) = (
                http.clone(),
                base.clone(),
                prefix.clone(),
                from.clone(),
                blob.clone(),
            );
            async move {
                let r = http
                    .post(format!(
                        "{base}/v2/{prefix}{i:06}/blobs/uploads/?mount={blob}&from={from}"
                    ))
                    .send()
                    .await?;
                if r.status() != 201 {
                    return Err(format!("mount: {}", r.status()).into());
                }
                Ok(())
            }
        })
        .await?;
        eprintln!(
            "seeded {count} repositories in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        Ok(())
    }

    /// Tag and catalog pages at Distribution scale: `--scale-tags` tags in one repository and
    /// `--scale-repos` repositories, seeded through the API (100 tags per manifest push with
    /// `?tag=`, repositories by cross-repository mounts). Reports p50/p99 of pages of 100 at
    /// random positions, and walks both listings whole to check `n`, `last` and `Link`.
    pub(crate) async fn listings_scale(&mut self) -> Result<()> {
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
        let (http, base) = (self.http.clone(), self.base.clone());
        let (tag_repo, tag_manifest) = (repo.clone(), manifest.clone());
        each_index(16, pushes, move |p| {
            let (http, base, repo, manifest, manifest_digest) = (
                http.clone(),
                base.clone(),
                tag_repo.clone(),
                tag_manifest.clone(),
                manifest_digest.clone(),
            );
            async move {
                let query: String = (p * 100..((p + 1) * 100).min(tags))
                    .map(|i| format!("tag=t{i:07}"))
                    .collect::<Vec<_>>()
                    .join("&");
                let url = format!("{base}/v2/{repo}/manifests/{manifest_digest}?{query}");
                put_manifest(&http, url, manifest).await
            }
        })
        .await?;
        eprintln!("seeded {tags} tags in {:.1} s", t.elapsed().as_secs_f64());
        self.seed_repositories("scale/r", repos, &blob, &repo)
            .await?;

        let mut state = seed() | 1;
        let mut random = move |below: usize| random::xorshift(&mut state) as usize % below.max(1);
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
}
