//! Immutable-tag patterns (`ImmutableTags::parse`, `protects`): accepts exactly lists of
//! `REPOSITORY-GLOB:TAG-GLOB` (both non-empty, one `:`), and protects exactly the tags the
//! globs match (checked against a backtracking glob matcher).

use berth::registry::gc::ImmutableTags;

use crate::{input, reference};

pub fn run(data: &[u8]) {
    let parts = input::split(data, 3);
    let Some(list) = input::text(&parts, 0) else {
        return;
    };
    // As the configuration gives them: comma-separated.
    let parsed = ImmutableTags::parse(list.split(','));
    let patterns: Vec<(&str, &str)> = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .filter_map(|p| p.split_once(':'))
        .collect();
    let valid = list
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .all(|p| p.split(':').count() == 2 && p.split(':').all(|side| !side.is_empty()));
    assert_eq!(parsed.is_ok(), valid, "{list:?}: {parsed:?}");
    let Ok(tags) = parsed else {
        return;
    };
    assert_eq!(tags.is_empty(), patterns.is_empty());
    let repository = input::text(&parts, 1).unwrap_or("");
    let tag = input::text(&parts, 2).unwrap_or("");
    let expected = patterns
        .iter()
        .any(|(r, t)| reference::glob(r, None, repository) && reference::glob(t, None, tag));
    assert_eq!(
        tags.protects(repository, tag),
        expected,
        "{list:?} {repository:?} {tag:?}"
    );
}
