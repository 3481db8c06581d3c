//! Repository names, tags and manifest references: exactly the spec's grammars and lengths;
//! whatever parses prints as its input and parses again to an equal value.

use berth::oci::name::{MAX_NAME_LENGTH, MAX_TAG_LENGTH};
use berth::oci::{Digest, Reference, RepositoryName, Tag};

use crate::reference;

pub fn run(data: &[u8]) {
    let Ok(input) = std::str::from_utf8(data) else {
        return;
    };

    let name = RepositoryName::parse(input);
    let expected =
        !input.is_empty() && input.len() <= MAX_NAME_LENGTH && reference::name_grammar(input);
    assert_eq!(name.is_ok(), expected, "name {input:?}: {name:?}");
    if let Ok(name) = name {
        assert_eq!(name.as_str(), input);
        assert_eq!(name.to_string(), input);
        assert_eq!(RepositoryName::parse(name.as_str()), Ok(name.clone()));
        // Every component is a name on its own.
        for component in input.split('/') {
            assert!(RepositoryName::parse(component).is_ok(), "{component:?}");
        }
    }

    let tag = Tag::parse(input);
    assert_eq!(
        tag.is_ok(),
        reference::tag_grammar(input),
        "tag {input:?}: {tag:?}"
    );
    if let Ok(tag) = &tag {
        assert!(tag.as_str().len() <= MAX_TAG_LENGTH);
        assert_eq!(tag.as_str(), input);
        assert_eq!(tag.to_string(), input);
        assert_eq!(Tag::parse(tag.as_str()).as_ref(), Ok(tag));
    }
    if let Err(e) = &tag {
        // The error quotes a bounded prefix of the input, however long it was.
        assert!(e.to_string().len() < 600 + 8 * MAX_TAG_LENGTH);
    }

    let reference = Reference::parse(input);
    match &reference {
        Ok(Reference::Digest(d)) => {
            assert!(input.contains(':'));
            assert_eq!(Digest::parse(input).as_ref(), Ok(d));
        }
        Ok(Reference::Tag(t)) => {
            assert!(!input.contains(':'));
            assert_eq!(tag.as_ref(), Ok(t));
        }
        Err(_) => assert!(if input.contains(':') {
            Digest::parse(input).is_err()
        } else {
            tag.is_err()
        }),
    }
    if let Ok(reference) = reference {
        assert_eq!(reference.to_string(), input);
        assert_eq!(Reference::parse(&reference.to_string()), Ok(reference));
    }
}
