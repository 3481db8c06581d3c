//! Upstream registries a mirror reads through: which local names map to which upstream, and
//! (feature `mirror`) the client that speaks to them (`UpstreamClient`: certificates checked
//! against the system roots plus a configured CA, Basic credentials and Docker's token flow).
//!
//! A name maps to an upstream in one of three ways, tried in this order:
//! 1. containerd's `ns` query parameter (its `hosts.toml` mirrors add `?ns=docker.io`) names
//!    the upstream by its host or its `name`; the whole name is the upstream's name;
//! 2. a prefix: under `dockerhub/`, `dockerhub/library/alpine` is `library/alpine` upstream;
//! 3. the default upstream takes every other name (Docker's `registry-mirrors`, which sends
//!    `library/alpine` as it is).

pub mod challenge;
#[cfg(feature = "mirror")]
mod client;

use std::path::PathBuf;
use std::time::Duration;

pub use challenge::{Challenge, parse as parse_challenge};
#[cfg(feature = "mirror")]
pub use client::{ManifestRequest, UpstreamBlob, UpstreamClient, UpstreamManifest};

/// One upstream registry as configured.
#[derive(Clone)]
pub struct UpstreamSettings {
    /// A short name for logs, metrics and containerd's `ns` (e.g. `dockerhub`).
    pub name: String,
    /// The registry's base URL: `https://registry-1.docker.io`, `http://10.0.0.5:5000`.
    pub url: String,
    /// The local namespace whose names map to this upstream with the prefix removed.
    pub prefix: Option<String>,
    /// Whether names under no prefix map here (one upstream at most).
    pub default: bool,
    /// Credentials for Basic authentication and for the token endpoint.
    pub credentials: Option<Credentials>,
    /// PEM certificates trusted for this upstream besides the system's roots.
    pub ca_file: Option<PathBuf>,
    /// How long a tag read from this upstream is served before it is checked again.
    pub tag_ttl: Duration,
    /// Longest wait to connect.
    pub connect_timeout: Duration,
    /// Longest wait for an answer's head, and between two chunks of a body.
    pub timeout: Duration,
    /// Whether pushes into the names mapped here are accepted (refused by default: a mirror
    /// holds the upstream's content, not anyone's own).
    pub allow_push: bool,
    /// Manifests kept from this upstream that nobody pulled for this long are evicted by the
    /// garbage collector (never, when unset).
    pub evict_after: Option<Duration>,
}

impl std::fmt::Debug for UpstreamSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamSettings")
            .field("name", &self.name)
            .field("url", &self.url)
            .field("prefix", &self.prefix)
            .field("default", &self.default)
            .field("credentials", &self.credentials)
            .field("ca_file", &self.ca_file)
            .field("tag_ttl", &self.tag_ttl)
            .field("allow_push", &self.allow_push)
            .field("evict_after", &self.evict_after)
            .finish_non_exhaustive()
    }
}

/// A user name and password; the password never appears in `Debug` output.
#[derive(Clone)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password or access token.
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// Why upstream settings were refused, or an upstream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// Settings that contradict each other or cannot work.
    #[error("upstream settings: {0}")]
    Settings(String),
    /// The upstream could not be reached or did not answer in time.
    #[error("upstream {upstream} is unreachable: {detail}")]
    Unreachable {
        /// The upstream's name.
        upstream: String,
        /// What failed.
        detail: String,
    },
    /// The upstream refused the credentials (or asked for some and none are configured).
    #[error("upstream {upstream} refused access: {detail}")]
    Unauthorized {
        /// The upstream's name.
        upstream: String,
        /// What it said.
        detail: String,
    },
    /// The upstream does not have it.
    #[error("upstream {upstream} has no {what}")]
    NotFound {
        /// The upstream's name.
        upstream: String,
        /// What was asked for.
        what: String,
    },
    /// The upstream answered something other than what the API promises (a wrong digest, a
    /// short body, an unexpected status).
    #[error("upstream {upstream} answered wrongly: {detail}")]
    Invalid {
        /// The upstream's name.
        upstream: String,
        /// What was wrong.
        detail: String,
    },
}

/// A local name that maps to an upstream.
#[derive(Debug)]
pub struct Mirrored<'a> {
    /// The upstream's settings.
    pub upstream: &'a UpstreamSettings,
    /// The name as the upstream knows it.
    pub remote_name: String,
    /// The name its content is kept under here: the request's name, or for a name routed by
    /// containerd's `ns` to an upstream with a prefix, the name under that prefix (so that
    /// `library/alpine` of two upstreams are kept apart).
    pub local_name: String,
}

/// Every configured upstream, checked to map each name to at most one.
#[derive(Clone, Debug, Default)]
pub struct Upstreams {
    list: Vec<UpstreamSettings>,
}

impl Upstreams {
    /// Checks that names, prefixes and the default are unambiguous and URLs usable.
    pub fn new(list: Vec<UpstreamSettings>) -> Result<Upstreams, UpstreamError> {
        let refuse = |why: String| Err(UpstreamError::Settings(why));
        for (i, upstream) in list.iter().enumerate() {
            if upstream.name.is_empty() {
                return refuse(format!("upstream {} has no name", i + 1));
            }
            if host_of(&upstream.url).is_none() {
                return refuse(format!(
                    "upstream {}: url {:?} is not http(s)://HOST[:PORT]",
                    upstream.name, upstream.url
                ));
            }
            if let Some(prefix) = &upstream.prefix
                && (prefix.is_empty()
                    || prefix.starts_with('/')
                    || prefix.ends_with('/')
                    || crate::oci::RepositoryName::parse(prefix).is_err())
            {
                return refuse(format!(
                    "upstream {}: prefix {prefix:?} is not a repository namespace such as dockerhub or mirrors/ghcr",
                    upstream.name
                ));
            }
            if upstream.prefix.is_none() && !upstream.default {
                return refuse(format!(
                    "upstream {} maps no names: give it a prefix, or default = true",
                    upstream.name
                ));
            }
            for other in &list[..i] {
                if other.name == upstream.name {
                    return refuse(format!("two upstreams are named {}", upstream.name));
                }
                if other.default && upstream.default {
                    return refuse(format!(
                        "upstreams {} and {} are both the default; one may be",
                        other.name, upstream.name
                    ));
                }
                if let (Some(a), Some(b)) = (&other.prefix, &upstream.prefix)
                    && (a == b
                        || a.starts_with(&format!("{b}/"))
                        || b.starts_with(&format!("{a}/")))
                {
                    return refuse(format!(
                        "the prefixes of upstreams {} ({a}) and {} ({b}) overlap",
                        other.name, upstream.name
                    ));
                }
            }
        }
        Ok(Upstreams { list })
    }

    /// Whether any upstream is configured.
    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every upstream, in configuration order.
    pub fn iter(&self) -> impl Iterator<Item = &UpstreamSettings> {
        self.list.iter()
    }

    /// The upstream `name` maps to, given containerd's `ns` parameter if the request had one;
    /// `None` for local names.
    pub fn route(&self, name: &str, ns: Option<&str>) -> Option<Mirrored<'_>> {
        if let Some(ns) = ns.filter(|ns| !ns.is_empty()) {
            let upstream = self.list.iter().find(|u| {
                u.name == ns || host_of(&u.url).is_some_and(|host| same_registry_host(host, ns))
            });
            if let Some(upstream) = upstream {
                let local_name = match &upstream.prefix {
                    Some(prefix) if !upstream.default => format!("{prefix}/{name}"),
                    _ => name.to_owned(),
                };
                return Some(Mirrored {
                    upstream,
                    remote_name: name.to_owned(),
                    local_name,
                });
            }
        }
        for upstream in &self.list {
            if let Some(prefix) = &upstream.prefix
                && let Some(rest) = name
                    .strip_prefix(prefix.as_str())
                    .and_then(|rest| rest.strip_prefix('/'))
                && !rest.is_empty()
            {
                return Some(Mirrored {
                    upstream,
                    remote_name: rest.to_owned(),
                    local_name: name.to_owned(),
                });
            }
        }
        let upstream = self.list.iter().find(|u| u.default)?;
        // A name that is exactly some upstream's prefix is that namespace's, not the default's.
        if self.list.iter().any(|u| u.prefix.as_deref() == Some(name)) {
            return None;
        }
        Some(Mirrored {
            upstream,
            remote_name: name.to_owned(),
            local_name: name.to_owned(),
        })
    }
}

/// The `host[:port]` of an `http://` or `https://` URL with no path beyond `/`.
fn host_of(url: &str) -> Option<&str> {
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))?;
    let host = rest.strip_suffix('/').unwrap_or(rest);
    (!host.is_empty() && !host.contains(['/', '?', '#', '@', ' '])).then_some(host)
}

/// Whether containerd's `ns` names the registry at `host`: Docker Hub answers at
/// `registry-1.docker.io` but is named `docker.io`.
fn same_registry_host(host: &str, ns: &str) -> bool {
    let hub = |h: &str| matches!(h, "docker.io" | "registry-1.docker.io" | "index.docker.io");
    host.eq_ignore_ascii_case(ns) || (hub(host) && hub(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(name: &str, url: &str, prefix: Option<&str>, default: bool) -> UpstreamSettings {
        UpstreamSettings {
            name: name.into(),
            url: url.into(),
            prefix: prefix.map(str::to_owned),
            default,
            credentials: None,
            ca_file: None,
            tag_ttl: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
            allow_push: false,
            evict_after: None,
        }
    }

    fn mirrors() -> Upstreams {
        Upstreams::new(vec![
            upstream(
                "dockerhub",
                "https://registry-1.docker.io",
                Some("dockerhub"),
                true,
            ),
            upstream("ghcr", "https://ghcr.io", Some("mirrors/ghcr"), false),
            upstream("internal", "http://10.0.0.5:5000/", Some("internal"), false),
        ])
        .unwrap()
    }

    fn routed(upstreams: &Upstreams, name: &str, ns: Option<&str>) -> Option<(String, String)> {
        upstreams
            .route(name, ns)
            .map(|m| (m.upstream.name.clone(), m.remote_name))
    }

    #[test]
    fn names_map_by_ns_then_prefix_then_default() {
        let u = mirrors();
        let pair = |a: &str, b: &str| Some((a.to_owned(), b.to_owned()));
        assert_eq!(
            routed(&u, "dockerhub/library/alpine", None),
            pair("dockerhub", "library/alpine")
        );
        assert_eq!(
            routed(&u, "mirrors/ghcr/org/tool", None),
            pair("ghcr", "org/tool")
        );
        assert_eq!(routed(&u, "internal/app", None), pair("internal", "app"));
        // registry-mirrors: unprefixed names as they are.
        assert_eq!(
            routed(&u, "library/alpine", None),
            pair("dockerhub", "library/alpine")
        );
        // containerd's ns= picks the upstream by host (Docker Hub by its public name) or name.
        assert_eq!(
            routed(&u, "library/alpine", Some("docker.io")),
            pair("dockerhub", "library/alpine")
        );
        assert_eq!(
            routed(&u, "org/tool", Some("ghcr.io")),
            pair("ghcr", "org/tool")
        );
        assert_eq!(
            routed(&u, "app", Some("10.0.0.5:5000")),
            pair("internal", "app")
        );
        assert_eq!(routed(&u, "app", Some("internal")), pair("internal", "app"));
        // An unknown ns falls back to the name's own mapping.
        assert_eq!(
            routed(&u, "internal/app", Some("quay.io")),
            pair("internal", "app")
        );
        // A namespace's bare name is not its upstream's (nothing would be left to ask for).
        assert_eq!(routed(&u, "internal", None), None);
        assert_eq!(
            routed(&u, "mirrorsx/ghcr/a", None),
            pair("dockerhub", "mirrorsx/ghcr/a")
        );
    }

    #[test]
    fn names_routed_by_ns_are_kept_under_their_upstreams_prefix() {
        let u = mirrors();
        let local = |name: &str, ns: Option<&str>| u.route(name, ns).map(|m| m.local_name);
        // The default upstream keeps unprefixed names as they are, whichever way they came.
        assert_eq!(
            local("library/alpine", Some("docker.io")).as_deref(),
            Some("library/alpine")
        );
        // Another upstream's names reached through ns= live under its prefix, apart from the
        // default upstream's names of the same spelling.
        assert_eq!(
            local("org/tool", Some("ghcr.io")).as_deref(),
            Some("mirrors/ghcr/org/tool")
        );
        assert_eq!(
            local("mirrors/ghcr/org/tool", None).as_deref(),
            Some("mirrors/ghcr/org/tool")
        );
    }

    #[test]
    fn without_a_default_other_names_are_local() {
        let u = Upstreams::new(vec![upstream(
            "hub",
            "https://registry-1.docker.io",
            Some("hub"),
            false,
        )])
        .unwrap();
        assert_eq!(routed(&u, "team/app", None), None);
        assert_eq!(
            routed(&u, "hub/library/alpine", None).unwrap().1,
            "library/alpine"
        );
        assert!(
            Upstreams::default()
                .route("anything", Some("docker.io"))
                .is_none()
        );
    }

    #[test]
    fn ambiguous_or_unusable_upstreams_are_refused() {
        let refused = |list: Vec<UpstreamSettings>, complaint: &str| {
            let message = Upstreams::new(list).unwrap_err().to_string();
            assert!(message.contains(complaint), "{message}");
        };
        refused(
            vec![
                upstream("a", "https://a", None, true),
                upstream("b", "https://b", None, true),
            ],
            "both the default",
        );
        refused(
            vec![
                upstream("a", "https://a", Some("x"), false),
                upstream("a", "https://b", Some("y"), false),
            ],
            "two upstreams are named a",
        );
        refused(
            vec![
                upstream("a", "https://a", Some("m"), false),
                upstream("b", "https://b", Some("m/b"), false),
            ],
            "overlap",
        );
        refused(
            vec![upstream("a", "ftp://a", Some("x"), false)],
            "not http(s)",
        );
        refused(
            vec![upstream("a", "https://a/v2/", Some("x"), false)],
            "not http(s)",
        );
        refused(
            vec![upstream("a", "https://a", Some("Up/"), false)],
            "not a repository namespace",
        );
        refused(
            vec![upstream("a", "https://a", None, false)],
            "maps no names",
        );
    }
}
