//! The layer order of the crate's modules, checked against the code: a module may use only
//! modules on lower floors, so arrows run one way and no two modules use each other. The
//! binary (`main.rs`, `config.rs`, `telemetry.rs`) sits above every floor. ARCHITECTURE.md
//! draws the same order; change both together.

use std::collections::BTreeSet;
use std::path::Path;

/// Floors from the bottom up; modules on one floor do not use each other.
const FLOORS: &[&[&str]] = &[
    // Vocabulary and mechanisms that know nothing of a registry.
    &[
        "oci",
        "glob",
        "buffers",
        "instruments",
        "client",
        "timestamps",
        "hmac",
    ],
    // Bytes, who may do what, and the registries a mirror reads through.
    &["storage", "auth", "upstream"],
    // Everything but bytes.
    &["metadata"],
    // The error every layer above returns, and its one mapping to HTTP.
    &["error"],
    // OCI semantics over the stores, and the delivery of their events.
    &["registry", "events"],
    // The distribution API.
    &["http"],
    // The web UI, over the registry and the API's access decisions and error mapping.
    &["ui"],
];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

/// Modules a module may not use although they sit below it: the registry does not know who
/// is asking, and stores never see repositories, tags or manifests.
const NEVER_USES: &[(&str, &[&str])] = &[("registry", &["auth", "client"]), ("storage", &["oci"])];

/// What `oci/` may not name: its types are pure, no I/O and no async.
const NOT_IN_OCI: &[&str] = &[
    "async fn",
    ".await",
    "tokio::",
    "std::fs",
    "std::net",
    "std::io::Read",
];

/// Floors that speak no HTTP: they name neither the `http` nor the `axum` crate.
const FREE_OF_HTTP: &[&str] = &["registry", "error", "metadata", "storage"];

/// A line without its comment: `//` inside a string or character literal is code.
fn code_of(line: &str) -> &str {
    let bytes = line.as_bytes();
    let mut in_string = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'\\' if in_string => i += 1,
            b'"' => in_string = !in_string,
            // A quote as a character literal does not open a string.
            b'\'' if !in_string && bytes.get(i + 2) == Some(&b'\'') => i += 2,
            b'/' if !in_string && bytes.get(i + 1) == Some(&b'/') => return &line[..i],
            _ => {}
        }
        i += 1;
    }
    line
}

/// Where `source`'s code names `path::` as a path of its own (not the tail of another
/// path such as `a::path::`), the name that follows each.
fn paths_after<'a>(source: &'a str, path: &'a str) -> impl Iterator<Item = String> + 'a {
    source.lines().flat_map(move |line| {
        let code = code_of(line);
        let mut found = Vec::new();
        let mut from = 0;
        while let Some(at) = code[from..].find(path).map(|at| from + at) {
            let before = code[..at].chars().next_back();
            let own = !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':');
            let after = &code[at + path.len()..];
            if own && let Some(rest) = after.strip_prefix("::") {
                found.push(
                    rest.chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect(),
                );
            }
            from = at + path.len();
        }
        found
    })
}

/// The top-level modules `source` names as `crate::x` in code (comments are not code).
fn uses(source: &str) -> BTreeSet<String> {
    paths_after(source, "crate")
        .filter(|name: &String| !name.is_empty())
        .collect()
}

/// Whether `source`'s code names the crate `krate` (`use http::…`, `http::StatusCode`).
fn names_crate(source: &str, krate: &str) -> bool {
    paths_after(source, krate).next().is_some()
}

fn sources(dir: &Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src is readable") {
        let path = entry.expect("src is readable").path();
        if path.is_dir() {
            sources(&path, found);
        } else if path.extension().is_some_and(|e| e == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_module_uses_only_modules_on_lower_floors() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let binary = ["main", "config", "telemetry", "lib", "layers"];
    let mut wrong = Vec::new();
    let mut seen = BTreeSet::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|s| s.trim_end_matches(".rs").to_owned())
            .expect("a file name");
        if binary.contains(&top.as_str()) {
            continue;
        }
        let Some(floor) = floor_of(&top) else {
            wrong.push(format!("{top} (in {}) is on no floor", relative.display()));
            continue;
        };
        seen.insert(top.clone());
        let source = std::fs::read_to_string(&file).expect("readable source");
        if FREE_OF_HTTP.contains(&top.as_str()) {
            for krate in ["http", "axum"] {
                if names_crate(&source, krate) {
                    wrong.push(format!(
                        "{} names the {krate} crate: only the HTTP layer speaks HTTP",
                        relative.display()
                    ));
                }
            }
        }
        if top == "oci" {
            for word in NOT_IN_OCI {
                if source.lines().any(|line| code_of(line).contains(word)) {
                    wrong.push(format!(
                        "{} uses {word}: oci/ is pure types, no I/O and no async",
                        relative.display()
                    ));
                }
            }
        }
        let forbidden = NEVER_USES
            .iter()
            .find(|(module, _)| *module == top)
            .map_or(&[][..], |(_, never)| *never);
        for used in uses(&source) {
            if used == top {
                continue;
            }
            if forbidden.contains(&used.as_str()) {
                wrong.push(format!(
                    "{} uses crate::{used}, which {top} must not know",
                    relative.display()
                ));
            }
            match floor_of(&used) {
                Some(f) if f < floor => {}
                Some(f) => wrong.push(format!(
                    "{} uses crate::{used}, on floor {f}, not below its own ({floor})",
                    relative.display()
                )),
                None => wrong.push(format!(
                    "{} uses crate::{used}, which is on no floor",
                    relative.display()
                )),
            }
        }
    }
    for floor in FLOORS {
        for module in *floor {
            if !seen.contains(*module) {
                wrong.push(format!("{module} is on a floor but not in src/"));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "layer order broken:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn comments_end_code_but_strings_do_not() {
    let source = "let url = \"http://host/x\"; let y = crate::glob::matches(a); // crate::registry\nlet q = '\"'; crate::oci::x(); // crate::http\n";
    assert_eq!(
        uses(source).into_iter().collect::<Vec<_>>(),
        vec!["glob".to_owned(), "oci".to_owned()]
    );
    assert!(names_crate("use http::StatusCode;", "http"));
    assert!(!names_crate(
        "use aws_sdk_s3::config::http::HttpResponse;",
        "http"
    ));
    assert!(!names_crate(
        "let u = \"http://x\"; // http::StatusCode",
        "http"
    ));
    assert!(!names_crate("use crate::http::Api;", "http"));
}

#[test]
fn uses_are_read_from_code_not_comments() {
    let source = "use crate::oci::Digest;\n/// see [`crate::http::router`]\nlet x = crate::glob::matches(a); // crate::registry\n";
    assert_eq!(
        uses(source).into_iter().collect::<Vec<_>>(),
        vec!["glob".to_owned(), "oci".to_owned()]
    );
}
