//! Query strings (`query_pairs`, `query_value`): decoding never panics, decoded pairs written
//! out again decode to the same pairs, and `query_value` is the first value of its key.

use berth::http::headers::{query_pairs, query_value};

pub fn run(data: &[u8]) {
    let Ok(query) = std::str::from_utf8(data) else {
        return;
    };
    let pairs = query_pairs(Some(query));
    assert!(query_pairs(None).is_empty());
    // Every `&`-separated piece that is not empty is one pair.
    let pieces = query.split('&').filter(|p| !p.is_empty()).count();
    assert_eq!(pairs.len(), pieces, "{query:?}");

    let written = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(&pairs)
        .finish();
    assert_eq!(
        query_pairs(Some(&written)),
        pairs,
        "{query:?} -> {written:?}"
    );

    // The first value of each key (a map, not a scan per pair: inputs may hold thousands).
    let mut first: std::collections::HashMap<&str, &str> = std::collections::HashMap::new();
    for (key, value) in &pairs {
        first.entry(key.as_str()).or_insert(value.as_str());
    }
    for (key, _) in pairs.iter().take(16) {
        assert_eq!(query_value(&pairs, key), first.get(key.as_str()).copied());
    }
    for key in [
        "digest",
        "mount",
        "from",
        "n",
        "last",
        "tag",
        "digest-algorithm",
    ] {
        assert_eq!(query_value(&pairs, key), first.get(key).copied());
    }
}
