//! The layer order of the crate's modules, checked against the code: a module may use only
//! modules on lower floors, so arrows run one way and no two modules use each other. The
//! binary (`main.rs`, `config.rs`, `telemetry.rs`) sits above every floor. ARCHITECTURE.md
//! draws the same order; change both together.

use std::collections::BTreeSet;
use std::path::Path;

/// Floors from the bottom up; modules on one floor do not use each other.
const FLOORS: &[&[&str]] = &[
    // Vocabulary and mechanisms that know nothing of a registry.
    &["oci", "glob", "buffers", "instruments", "client"],
    // Bytes, and who may do what.
    &["storage", "auth"],
    // Everything but bytes.
    &["metadata"],
    // The error every layer above returns, and its one mapping to HTTP.
    &["error"],
    // OCI semantics over the stores.
    &["registry"],
    // The distribution API.
    &["http"],
];

fn floor_of(module: &str) -> Option<usize> {
    FLOORS.iter().position(|floor| floor.contains(&module))
}

/// The top-level modules `source` names as `crate::x` in code (comments are not code).
fn uses(source: &str) -> BTreeSet<String> {
    let mut used = BTreeSet::new();
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(at) = rest.find("crate::") {
            let name: String = rest[at + "crate::".len()..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                used.insert(name);
            }
            rest = &rest[at + "crate::".len()..];
        }
    }
    used
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
        for used in uses(&source) {
            if used == top {
                continue;
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
fn uses_are_read_from_code_not_comments() {
    let source = "use crate::oci::Digest;\n/// see [`crate::http::router`]\nlet x = crate::glob::matches(a); // crate::registry\n";
    assert_eq!(
        uses(source).into_iter().collect::<Vec<_>>(),
        vec!["glob".to_owned(), "oci".to_owned()]
    );
}
