//! Fuzz targets for every parser of Berth that reads bytes from the network or from files.
//!
//! Each target is a plain function of the input bytes, in `targets/`: it parses, and asserts
//! the properties the parser promises (round trips, ranges within bounds, agreement with an
//! independent reference implementation), panicking on a violation. The same functions run
//! under libFuzzer (`fuzz_targets/*.rs`, `scripts/fuzz.sh --long`) and under the stable
//! runner `fuzz-replay` (`scripts/fuzz.sh --ci`), which replays `corpus/<target>/` and then
//! feeds random mutations of it.

pub mod input;
pub mod reference;
pub mod targets;

/// A fuzz target: panics on an input that breaks a property.
pub type Target = fn(&[u8]);

/// Every target by name (the name of its `corpus/` directory and libFuzzer binary).
pub const TARGETS: &[(&str, Target)] = &[
    ("digest", targets::digest::run),
    ("name", targets::name::run),
    ("manifest", targets::manifest::run),
    ("range", targets::range::run),
    ("query", targets::query::run),
    ("route", targets::route::run),
    ("bearer", targets::bearer::run),
    ("basic", targets::basic::run),
    ("acl", targets::acl::run),
    ("htpasswd", targets::htpasswd::run),
    ("scope", targets::scope::run),
    ("trusted_proxies", targets::trusted_proxies::run),
    ("immutable_tags", targets::immutable_tags::run),
    ("config", targets::config::run),
    ("challenge", targets::challenge::run),
];
