//! `ParsedManifest::parse(content_type, body)`: never panics; what it accepts is a manifest or
//! index of a supported media type whose references are valid digests, and reading the
//! accepted document back through Berth's own types and writing it out again gives a body
//! that parses to the same result.

use berth::oci::manifest::essence;
use berth::oci::{
    Digest, ImageIndex, ImageManifest, ManifestError, ManifestKind, ParsedManifest, media_type,
};

use crate::input;

/// Content types the first byte picks from; past the list, the body's first line is the
/// content type.
const CONTENT_TYPES: &[Option<&str>] = &[
    None,
    Some(""),
    Some("application/json"),
    Some("application/octet-stream"),
    Some(media_type::OCI_MANIFEST),
    Some(media_type::OCI_INDEX),
    Some(media_type::DOCKER_MANIFEST),
    Some(media_type::DOCKER_MANIFEST_LIST),
    Some(media_type::DOCKER_SCHEMA1[0]),
    Some(media_type::DOCKER_SCHEMA1[1]),
    Some("application/vnd.oci.image.manifest.v1+json; charset=utf-8"),
    Some(" application/vnd.oci.image.index.v1+json ;x=y"),
    Some("APPLICATION/JSON"),
    Some("text/plain"),
    Some(media_type::OCI_EMPTY),
];

pub fn run(data: &[u8]) {
    let (selector, rest) = input::selector(data);
    let (content_type, body) = match CONTENT_TYPES.get(selector as usize) {
        Some(ct) => (ct.map(str::to_owned), rest),
        None => match rest.iter().position(|&b| b == b'\n') {
            Some(nl) => match std::str::from_utf8(&rest[..nl]) {
                Ok(ct) => (Some(ct.to_owned()), &rest[nl + 1..]),
                Err(_) => return,
            },
            None => (None, rest),
        },
    };
    let content_type = content_type.as_deref();
    let parsed = match ParsedManifest::parse(content_type, body) {
        Ok(parsed) => parsed,
        Err(e) => {
            check_error(&e);
            return;
        }
    };

    // The media type is one Berth stores, of the kind it was read as.
    assert_eq!(
        ManifestKind::of_media_type(&parsed.media_type),
        Some(parsed.kind)
    );
    let declared = content_type.map(essence).filter(|ct| {
        !ct.is_empty()
            && !ct.eq_ignore_ascii_case("application/json")
            && !ct.eq_ignore_ascii_case(media_type::OCTET_STREAM)
    });
    if let Some(declared) = declared {
        assert_eq!(parsed.media_type, declared);
    }
    // Every reference is a valid digest, as it would be written to a row.
    for digest in parsed
        .blobs
        .iter()
        .chain(&parsed.children)
        .chain(&parsed.subject)
    {
        assert_eq!(Digest::parse(digest.as_str()).as_ref(), Ok(digest));
    }

    // Written out again through Berth's types, the document parses to the same result.
    let again = match parsed.kind {
        ManifestKind::Image => {
            let m: ImageManifest = serde_json::from_slice(body).expect("accepted as image");
            assert_eq!(m.schema_version, 2);
            assert!(!parsed.blobs.is_empty(), "the config is a blob");
            assert_eq!(parsed.blobs[0], m.config.digest);
            assert!(parsed.blobs.len() <= 1 + m.layers.len());
            assert!(parsed.children.is_empty());
            serde_json::to_vec(&m).unwrap()
        }
        ManifestKind::Index => {
            let i: ImageIndex = serde_json::from_slice(body).expect("accepted as index");
            assert_eq!(i.schema_version, 2);
            assert!(parsed.blobs.is_empty());
            assert_eq!(parsed.children.len(), i.manifests.len());
            serde_json::to_vec(&i).unwrap()
        }
    };
    let reparsed = ParsedManifest::parse(Some(&parsed.media_type), &again);
    assert_eq!(
        reparsed.as_ref(),
        Ok(&parsed),
        "{}",
        String::from_utf8_lossy(&again)
    );
}

fn check_error(e: &ManifestError) {
    // Errors render (they are sent to clients) and say something.
    assert!(!e.to_string().is_empty());
}
