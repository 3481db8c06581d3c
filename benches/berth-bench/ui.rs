//! The web UI's pages at scale: `--scale-repos` repositories (by cross-repository mounts) and
//! `--ui-tags` tags in one repository (100 per manifest push with `?tag=`), then each page
//! asked for many times. The figure is the server's own time (`Server-Timing: app;dur=`),
//! p50 and p99, beside what the client waited.

use super::*;

/// The server time a UI response reports, in milliseconds.
fn server_time(r: &reqwest::Response) -> Result<f64> {
    let value = r
        .headers()
        .get("server-timing")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Server-Timing: is the web UI on?")?;
    let millis = value
        .split(';')
        .find_map(|part| part.trim().strip_prefix("dur="))
        .ok_or("Server-Timing without dur")?;
    Ok(millis.parse()?)
}

impl Bench {
    pub(crate) async fn ui_pages(&mut self) -> Result<()> {
        let repos = self.opts.scale_repos;
        let tags = self.opts.ui_tags;
        let repo = "ui/app".to_owned();
        let manifest =
            Bytes::from(Self::push_small_image(&self.http, &self.base, &repo, "seed", 13).await?);
        let manifest_digest = digest(&manifest);
        let parsed: serde_json::Value = serde_json::from_slice(&manifest)?;
        let blob = parsed["layers"][0]["digest"]
            .as_str()
            .ok_or("no layer")?
            .to_owned();
        if self.tag_count(&repo).await? < tags {
            let t = Instant::now();
            let (http, base, tag_repo, tag_manifest, tag_digest) = (
                self.http.clone(),
                self.base.clone(),
                repo.clone(),
                manifest.clone(),
                manifest_digest.clone(),
            );
            each_index(8, tags.div_ceil(100), move |p| {
                let (http, base, repo, manifest, manifest_digest) = (
                    http.clone(),
                    base.clone(),
                    tag_repo.clone(),
                    tag_manifest.clone(),
                    tag_digest.clone(),
                );
                async move {
                    let query: String = (p * 100..((p + 1) * 100).min(tags))
                        .map(|i| format!("tag=build-{i:06}"))
                        .collect::<Vec<_>>()
                        .join("&");
                    let url = format!("{base}/v2/{repo}/manifests/{manifest_digest}?{query}");
                    put_manifest(&http, url, manifest).await
                }
            })
            .await?;
            eprintln!("seeded {tags} tags in {:.1} s", t.elapsed().as_secs_f64());
        }
        let catalog: serde_json::Value = serde_json::from_slice(
            &self
                .http
                .get(format!(
                    "{}/v2/_catalog?n=1&last=ui/r{:06}",
                    self.base,
                    repos - 2
                ))
                .send()
                .await?
                .bytes()
                .await?,
        )?;
        if catalog["repositories"]
            .as_array()
            .is_none_or(|r| r.is_empty())
        {
            self.seed_repositories("ui/r", repos, &blob, &repo).await?;
        }
        // An index of two images, for the index page.
        let other =
            Bytes::from(Self::push_small_image(&self.http, &self.base, &repo, "arm", 14).await?);
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"amd64"}}}},{{"mediaType":"{OCI_MANIFEST}","digest":"{}","size":{},"platform":{{"os":"linux","architecture":"arm64"}}}}]}}"#,
            manifest_digest,
            manifest.len(),
            digest(&other),
            other.len()
        );
        let r = self
            .http
            .put(format!("{}/v2/{repo}/manifests/multi", self.base))
            .header("content-type", "application/vnd.oci.image.index.v1+json")
            .body(index.clone())
            .send()
            .await?;
        if r.status() != 201 {
            return Err(format!("PUT index: {}", r.status()).into());
        }
        // A cursor deep into the tag list: the first page's own cursor names the push second
        // of its tags; halfway through the names of that second (or earlier ones) is deep.
        let first = self
            .http
            .get(format!("{}/ui/r/{repo}", self.base))
            .send()
            .await?
            .text()
            .await?;
        let pushed = first
            .split("before=")
            .nth(1)
            .and_then(|rest| rest.split("%3A").next())
            .ok_or("the repository page has no next page")?
            .to_owned();
        let deep_tag = tags / 2;
        let pages = [
            ("ui-catalog", "/ui/".to_owned()),
            ("ui-catalog-deep", format!("/ui/?last=ui/r{:06}", repos / 2)),
            ("ui-search-common", "/ui/?q=r01".to_owned()),
            ("ui-search-one", format!("/ui/?q=r{:06}", repos - 1)),
            ("ui-search-none", "/ui/?q=nothing-has-this".to_owned()),
            ("ui-repository", format!("/ui/r/{repo}")),
            (
                "ui-repository-deep",
                format!("/ui/r/{repo}?before={pushed}:build-{deep_tag:06}"),
            ),
            ("ui-repository-untagged", format!("/ui/r/{repo}?untagged=1")),
            (
                "ui-manifest",
                format!("/ui/r/{repo}/-/manifest/{manifest_digest}"),
            ),
            (
                "ui-index",
                format!("/ui/r/{repo}/-/manifest/{}", digest(index.as_bytes())),
            ),
        ];
        for (name, path) in pages {
            let mut server = Vec::new();
            let mut client = Vec::new();
            for _ in 0..100 {
                let t = Instant::now();
                let r = self.http.get(format!("{}{path}", self.base)).send().await?;
                if r.status() != 200 {
                    return Err(format!("{path}: {}", r.status()).into());
                }
                let millis = server_time(&r)?;
                r.bytes().await?;
                client.push(t.elapsed());
                server.push(Duration::from_secs_f64(millis / 1000.0));
            }
            client.sort();
            let waited = percentile(&client, 0.5);
            server.sort();
            self.record(
                &format!("{name}-at-{repos}"),
                percentile(&server, 0.5),
                "ms server",
                Some(&mut server),
            );
            eprintln!("  {name}: the client waited {waited:.2} ms (p50)");
        }
        Ok(())
    }
}
