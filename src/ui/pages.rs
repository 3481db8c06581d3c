//! The pages, as compile-time templates (`maud`): every value from a request or the store is
//! escaped as it is written, so a crafted repository name, tag or annotation shows as text.

use maud::{DOCTYPE, Markup, html};

use super::view::{ManifestView, age, human_size, platform_name, referrer_kind};
use crate::oci::Descriptor;

/// Where the stylesheet and script are served, with the build's version so that a new
/// release is fetched again while an unchanged one is cached.
const ASSET_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Tags of one manifest shown on its page; the page is given one more to know there are more.
pub const TAGS_SHOWN: usize = 100;

/// What every page shows around its content.
pub struct Chrome<'a> {
    /// The page title.
    pub title: &'a str,
    /// Who is signed in.
    pub user: Option<&'a str>,
    /// Whether signing in is possible here.
    pub can_sign_in: bool,
    /// The session's CSRF token, for the sign-out form.
    pub csrf: &'a str,
    /// The repository the page is about, for the breadcrumbs.
    pub repository: Option<&'a str>,
}

/// A whole page.
pub fn page(chrome: &Chrome<'_>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (chrome.title) " · Berth" }
                link rel="stylesheet" href={ "/ui/assets/berth.css?v=" (ASSET_VERSION) };
                script src={ "/ui/assets/berth.js?v=" (ASSET_VERSION) } defer {}
            }
            body {
                a.skip href="#main" { "Skip to content" }
                header {
                    nav aria-label="Site" {
                        a.brand href="/ui/" { "Berth" }
                        div.crumbs {
                            span { a href="/ui/" { "Repositories" } }
                            @if let Some(name) = chrome.repository {
                                span { a href={ "/ui/r/" (name) } { (name) } }
                            }
                        }
                        span.spacer {}
                        button #theme type="button" hidden aria-label="Switch between dark and light theme" { "Theme" }
                        @match chrome.user {
                            Some(user) => {
                                span #user { "Signed in as " strong { (user) } }
                                form.inline method="post" action="/ui/sign-out" {
                                    input type="hidden" name="csrf" value=(chrome.csrf);
                                    button #sign-out type="submit" { "Sign out" }
                                }
                            }
                            None => {
                                @if chrome.can_sign_in {
                                    a #sign-in href="/ui/sign-in" { "Sign in" }
                                }
                            }
                        }
                    }
                }
                main #main { (content) }
            }
        }
    }
}

/// The catalog: one page of repositories, with the search box.
pub fn catalog(query: &str, repositories: &[String], next: Option<&str>) -> Markup {
    html! {
        h1 { "Repositories" }
        form.search role="search" method="get" action="/ui/" {
            label for="q" class="skip" { "Search repositories" }
            input #q type="search" name="q" value=(query) placeholder="Search repositories by name" autocomplete="off";
            button type="submit" { "Search" }
        }
        @if repositories.is_empty() && next.is_some() {
            p.muted #empty { "None among the repositories read so far; the next page reads on." }
        } @else if repositories.is_empty() {
            p.muted #empty {
                @if query.is_empty() { "No repositories you may pull from yet." }
                @else { "No repository you may pull from has " code { (query) } " in its name." }
            }
        } @else {
            table #repositories {
                thead { tr { th { "Name" } } }
                tbody {
                    @for name in repositories {
                        tr { td { a.repository href={ "/ui/r/" (name) } { (name) } } }
                    }
                }
            }
        }
        @if let Some(last) = next {
            div.pager {
                a #next rel="next" href={ "/ui/?" (query_string(&[("q", query), ("last", last)])) } { "Next page →" }
            }
        }
    }
}

/// The catalog for visitors who may not list it: a repository opened by its name.
pub fn open_by_name() -> Markup {
    html! {
        h1 { "Repositories" }
        p.muted #no-catalog { "You may not list this registry's repositories; open one by its name." }
        form.search method="get" action="/ui/" {
            label for="open" class="skip" { "Repository name" }
            input #open type="text" name="open" placeholder="namespace/repository" autocomplete="off" required;
            button type="submit" { "Open" }
        }
    }
}

/// One row of a repository's tag list.
pub struct TagRow {
    /// The tag (`None` for an untagged manifest).
    pub tag: Option<String>,
    /// When it was pushed, in Unix seconds.
    pub pushed_at: i64,
    /// Its manifest's digest.
    pub digest: String,
    /// Compressed size: config and layers, summed over an index's children.
    pub size: u64,
    /// An index's platforms.
    pub platforms: Vec<String>,
    /// An index rather than an image.
    pub is_index: bool,
    /// Its artifact type, for artifacts.
    pub artifact_type: Option<String>,
}

/// What the repository page shows.
pub struct RepositoryPage<'a> {
    /// The repository.
    pub name: &'a str,
    /// How clients reach this registry (`host[:port]`), for pull commands.
    pub host: &'a str,
    /// The tags of this page, newest first.
    pub tags: Vec<TagRow>,
    /// The cursor of the next page, if there is one.
    pub next: Option<String>,
    /// Untagged manifests, when asked for.
    pub untagged: Option<Vec<TagRow>>,
    /// Blobs linked to the repository and their total size.
    pub storage: (u64, u64),
    /// Whether the visitor may delete here.
    pub may_delete: bool,
    /// What was just deleted, for the notice.
    pub deleted: Option<&'a str>,
    /// Unix seconds now, for ages.
    pub now: i64,
}

/// A repository: its tags by push time.
pub fn repository(p: &RepositoryPage<'_>) -> Markup {
    html! {
        h1 #repository-name { (p.name) }
        @if let Some(deleted) = p.deleted {
            p.notice #deleted role="status" { "Deleted " code { (deleted) } "." }
        }
        p.muted #storage {
            "Storage used: " strong { (human_size(p.storage.1)) } " in " (p.storage.0) " blobs."
        }
        h2 { "Tags" }
        @if p.tags.is_empty() {
            p.muted { "No tags." }
        } @else {
            (tag_table("tags", p, &p.tags))
        }
        @if let Some(next) = &p.next {
            div.pager { a #next rel="next" href={ "/ui/r/" (p.name) "?" (query_string(&[("before", next)])) } { "Older tags →" } }
        }
        @match &p.untagged {
            Some(untagged) => {
                h2 { "Untagged manifests" }
                @if untagged.is_empty() { p.muted #untagged-none { "None." } }
                @else { (tag_table("untagged", p, untagged)) }
            }
            None => {
                p { a #show-untagged href={ "/ui/r/" (p.name) "?untagged=1" } { "Show untagged manifests" } }
            }
        }
    }
}

fn tag_table(id: &str, p: &RepositoryPage<'_>, rows: &[TagRow]) -> Markup {
    html! {
        table id=(id) {
            thead {
                tr {
                    th { "Tag" } th.wide { "Digest" } th.num { "Size" } th.wide { "Platforms" } th { "Pushed" } th.wide { "Pull" }
                    @if p.may_delete { th { span.skip { "Delete" } } }
                }
            }
            tbody {
                @for row in rows {
                    @let reference = row.tag.clone().unwrap_or_else(|| row.digest.clone());
                    tr data-tag=[row.tag.as_deref()] {
                        td {
                            a.tag-name href={ "/ui/r/" (p.name) "/-/manifest/" (row.digest) } {
                                @match &row.tag {
                                    Some(tag) => { strong { (tag) } }
                                    None => { span.muted { "untagged" } }
                                }
                            }
                            @if row.is_index { " " span.kind { "index" } }
                            @if row.artifact_type.is_some() { " " span.kind title=[row.artifact_type.as_deref()] { "artifact" } }
                        }
                        td.wide { a.mono.digest href={ "/ui/r/" (p.name) "/-/manifest/" (row.digest) } { (short_digest(&row.digest)) } }
                        td.num { (human_size(row.size)) }
                        td.wide { @for platform in &row.platforms { span.tag { (platform) } " " } }
                        td { time datetime=(crate::timestamps::rfc3339(row.pushed_at)) title=(crate::timestamps::rfc3339(row.pushed_at)) { (age(row.pushed_at, p.now)) } }
                        td.wide { (copy_button(&pull_command(p.host, p.name, &reference))) }
                        @if p.may_delete {
                            td { a.button.danger href={ "/ui/r/" (p.name) "/-/delete?" (query_string(&[("reference", &reference)])) } aria-label={ "Delete " (reference) } { "Delete" } }
                        }
                    }
                }
            }
        }
    }
}

/// A referrer of a manifest, with its own referrers.
pub struct ReferrerNode {
    /// Its digest.
    pub digest: String,
    /// Its artifact type.
    pub artifact_type: Option<String>,
    /// Its annotations' creation time, if it has one.
    pub created: Option<String>,
    /// What refers to it in turn.
    pub referrers: Vec<ReferrerNode>,
}

/// What the manifest page shows of an image's config.
#[derive(Default)]
pub struct ConfigFacts {
    /// `created`.
    pub created: Option<String>,
    /// `os/architecture[/variant]`.
    pub platform: Option<String>,
    /// `config.Labels`.
    pub labels: Vec<(String, String)>,
    /// `history[].created_by`, with empty layers marked.
    pub history: Vec<(String, bool)>,
    /// Why the config is not shown, when it is not.
    pub missing: Option<String>,
}

/// What the manifest page shows.
pub struct ManifestPage<'a> {
    /// The repository.
    pub name: &'a str,
    /// How clients reach this registry.
    pub host: &'a str,
    /// The manifest's digest.
    pub digest: &'a str,
    /// Its media type.
    pub media_type: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// What it holds.
    pub view: &'a ManifestView,
    /// The tags naming it.
    pub tags: &'a [String],
    /// An index's children: descriptor and compressed size where known.
    pub children: Vec<(Descriptor, Option<u64>)>,
    /// An image's config.
    pub config: Option<ConfigFacts>,
    /// Its referrers, as a tree.
    pub referrers: Vec<ReferrerNode>,
    /// Whether the visitor may delete here.
    pub may_delete: bool,
}

/// A manifest or index.
pub fn manifest(p: &ManifestPage<'_>) -> Markup {
    let view = p.view;
    html! {
        h1 {
            (p.name) "@" span.mono #manifest-digest { (p.digest) }
        }
        dl.facts {
            dt { "Kind" } dd #manifest-kind { @if view.is_index { "index" } @else if view.artifact_type.is_some() { "artifact" } @else { "image" } }
            dt { "Media type" } dd { code { (p.media_type) } }
            @if let Some(t) = &view.artifact_type { dt { "Artifact type" } dd { code { (t) } } }
            dt { "Manifest size" } dd { (human_size(p.size)) }
            @if !view.is_index { dt { "Compressed size" } dd #image-size { (human_size(view.image_size())) } }
            dt { "Tags" } dd.tags #manifest-tags {
                @if p.tags.is_empty() { span.muted { "none" } }
                @for tag in p.tags.iter().take(TAGS_SHOWN) { span.tag { (tag) } }
                @if p.tags.len() > TAGS_SHOWN { span.muted { "and more" } }
            }
            @if let Some(subject) = &view.subject {
                dt { "Refers to" } dd { a.mono href={ "/ui/r/" (p.name) "/-/manifest/" (subject.digest) } { (subject.digest) } }
            }
        }
        h2 { "Pull" }
        @for tag in p.tags.iter().take(3) { (copy_button(&pull_command(p.host, p.name, tag))) }
        (copy_button(&pull_command(p.host, p.name, p.digest)))
        @if view.is_index {
            h2 { "Platforms" }
            table #platforms {
                thead { tr { th { "Platform" } th { "Digest" } th.num { "Size" } } }
                tbody {
                    @for (child, size) in &p.children {
                        tr {
                            td { a.platform href={ "/ui/r/" (p.name) "/-/manifest/" (child.digest) } { (child.platform.as_ref().map(platform_name).unwrap_or_else(|| "unknown".to_owned())) } }
                            td.mono { (short_digest(child.digest.as_str())) }
                            td.num {
                                @match size {
                                    Some(s) => { (human_size(*s)) }
                                    None => { span.muted title="not held by this repository" { "—" } }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if let Some(config) = &p.config {
            h2 { "Config" }
            @if let Some(why) = &config.missing { p.muted { (why) } }
            dl.facts #config {
                @if let Some(created) = &config.created { dt { "Created" } dd { (created) } }
                @if let Some(platform) = &config.platform { dt { "Platform" } dd #config-platform { (platform) } }
            }
            @if !config.labels.is_empty() {
                h2 { "Labels" }
                table #labels { tbody { @for (k, v) in &config.labels { tr { td.mono { (k) } td { (v) } } } } }
            }
            @if !config.history.is_empty() {
                details {
                    summary { "History (" (config.history.len()) " steps)" }
                    ol.history { @for (step, empty) in &config.history { li { code { (step) } @if *empty { " " span.muted { "(no layer)" } } } } }
                }
            }
        }
        @if !view.is_index {
            h2 { "Layers" }
            table #layers {
                thead { tr { th { "#" } th { "Digest" } th.wide { "Media type" } th.num { "Size" } } }
                tbody {
                    @for (i, layer) in view.layers.iter().enumerate() {
                        tr { td { (i + 1) } td.mono { (short_digest(layer.digest.as_str())) } td.wide { code { (layer.media_type) } } td.num { (human_size(layer.size)) } }
                    }
                }
            }
        }
        @if !view.annotations.is_empty() {
            h2 { "Annotations" }
            table #annotations { tbody { @for (k, v) in &view.annotations { tr { td.mono { (k) } td { (v) } } } } }
        }
        h2 { "Referrers" }
        @if p.referrers.is_empty() { p.muted #no-referrers { "No signatures, SBOMs or attestations refer to this manifest." } }
        @else { ul.tree #referrers { @for node in &p.referrers { (referrer(p.name, node)) } } }
        @if p.may_delete {
            h2 { "Delete" }
            p {
                a.button.danger #delete-manifest href={ "/ui/r/" (p.name) "/-/delete?" (query_string(&[("reference", p.digest)])) } { "Delete this manifest and its tags" }
            }
        }
    }
}

fn referrer(name: &str, node: &ReferrerNode) -> Markup {
    html! {
        li.referrer data-kind=(referrer_kind(node.artifact_type.as_deref())) {
            span.kind { (referrer_kind(node.artifact_type.as_deref())) } " "
            a.mono href={ "/ui/r/" (name) "/-/manifest/" (node.digest) } { (short_digest(&node.digest)) } " "
            @if let Some(t) = &node.artifact_type { code.artifact-type { (t) } }
            @if let Some(created) = &node.created { " " span.muted { (created) } }
            @if !node.referrers.is_empty() { ul { @for child in &node.referrers { (referrer(name, child)) } } }
        }
    }
}

/// The confirmation before a delete.
pub fn confirm_delete(name: &str, reference: &str, is_tag: bool, csrf: &str) -> Markup {
    html! {
        h1 { "Delete " @if is_tag { "tag" } @else { "manifest" } "?" }
        p {
            @if is_tag {
                "The tag " code { (reference) } " of " strong { (name) } " will be removed. The manifest stays, with any other tags."
            } @else {
                "The manifest " code { (reference) } " of " strong { (name) } " and every tag naming it will be removed. This cannot be undone."
            }
        }
        form method="post" action={ "/ui/r/" (name) "/-/delete" } {
            input type="hidden" name="csrf" value=(csrf);
            input type="hidden" name="reference" value=(reference);
            button.danger #confirm-delete type="submit" { "Delete" } " "
            a.button href={ "/ui/r/" (name) } { "Cancel" }
        }
    }
}

/// The sign-in form.
pub fn sign_in(csrf: &str, next: &str, problem: Option<&str>, can_sign_in: bool) -> Markup {
    html! {
        h1 { "Sign in" }
        @if let Some(problem) = problem { p.error #problem role="alert" { (problem) } }
        @if can_sign_in {
            form.signin method="post" action="/ui/sign-in" {
                input type="hidden" name="csrf" value=(csrf);
                input type="hidden" name="next" value=(next);
                label for="user" { "User" }
                input #user type="text" name="user" autocomplete="username" required autofocus;
                label for="password" { "Password" }
                input #password type="password" name="password" autocomplete="current-password" required;
                button.primary #submit type="submit" { "Sign in" }
            }
            p.muted { "The same user name and password as for " code { "docker login" } "." }
        } @else {
            p { "This registry has no users who sign in here." }
        }
    }
}

/// A refusal or failure, said plainly.
pub fn problem(heading: &str, message: &str) -> Markup {
    html! {
        h1 { (heading) }
        p.error #problem role="alert" { (message) }
        p { a href="/ui/" { "Back to the repositories" } }
    }
}

/// A pull command and its copy button (shown once the script runs).
fn copy_button(command: &str) -> Markup {
    html! {
        div.pull {
            code.pull-command { (command) }
            button.copy type="button" hidden data-copy=(command) aria-label={ "Copy " (command) } { "Copy" }
        }
    }
}

/// `docker pull host/name:tag`, or `@digest`.
pub fn pull_command(host: &str, name: &str, reference: &str) -> String {
    if reference.contains(':') {
        format!("docker pull {host}/{name}@{reference}")
    } else {
        format!("docker pull {host}/{name}:{reference}")
    }
}

/// `sha256:0123456789ab`.
fn short_digest(digest: &str) -> &str {
    let cut = digest.find(':').map_or(12, |at| at + 13);
    digest.get(..cut).unwrap_or(digest)
}

/// A URL query of `pairs`, percent-encoded.
pub fn query_string(pairs: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (k, v) in pairs {
        if !v.is_empty() {
            query.append_pair(k, v);
        }
    }
    query.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_a_visitor_controls_is_escaped() {
        let evil = "<script>alert(1)</script>\"'";
        let chrome = Chrome {
            title: evil,
            user: Some(evil),
            can_sign_in: true,
            csrf: evil,
            repository: None,
        };
        let html = page(&chrome, catalog(evil, &[evil.to_owned()], Some(evil))).into_string();
        assert!(!html.contains("<script>alert"), "{html}");
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
        let html = problem(evil, evil).into_string();
        assert!(!html.contains("<script>"));
    }

    #[test]
    fn pull_commands_and_digests_read_right() {
        assert_eq!(
            pull_command("r:5000", "team/app", "v1"),
            "docker pull r:5000/team/app:v1"
        );
        assert_eq!(
            pull_command("r", "app", "sha256:abc"),
            "docker pull r/app@sha256:abc"
        );
        assert_eq!(
            short_digest(&format!("sha256:{}", "a".repeat(64))),
            "sha256:aaaaaaaaaaaa"
        );
        assert_eq!(query_string(&[("q", "a b&c"), ("last", "")]), "q=a+b%26c");
    }
}
