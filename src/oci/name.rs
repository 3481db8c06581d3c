//! Repository names, tags and manifest references, with the distribution spec's limits.

use std::fmt;

use super::digest::{Digest, DigestError};

/// Longest repository name accepted (the limit Docker and Distribution apply).
pub const MAX_NAME_LENGTH: usize = 255;
/// Longest tag the spec allows.
pub const MAX_TAG_LENGTH: usize = 128;

/// A repository name matching
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepositoryName(String);

/// Why a repository name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// The name is empty or longer than [`MAX_NAME_LENGTH`].
    #[error("repository name must be 1 to {MAX_NAME_LENGTH} characters long")]
    Length,
    /// A path component breaks the spec's grammar.
    #[error(
        "repository name {0:?} is invalid: components are lowercase letters and digits, separated by '.', '_', '__' or dashes, joined by '/'"
    )]
    Grammar(String),
}

fn is_valid_component(component: &str) -> bool {
    let bytes = component.as_bytes();
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let mut i = 0;
    let mut need_alnum = true;
    while i < bytes.len() {
        let b = bytes[i];
        if alnum(b) {
            need_alnum = false;
            i += 1;
            continue;
        }
        if need_alnum {
            return false;
        }
        // A separator: '.', '_', '__' or one or more '-'.
        let run_start = i;
        match b {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if bytes.get(i) == Some(&b'_') {
                    i += 1;
                }
            }
            b'-' => {
                while bytes.get(i) == Some(&b'-') {
                    i += 1;
                }
            }
            _ => return false,
        }
        debug_assert!(i > run_start);
        need_alnum = true;
    }
    !need_alnum
}

impl RepositoryName {
    /// Validates a repository name.
    pub fn parse(name: &str) -> Result<RepositoryName, NameError> {
        if name.is_empty() || name.len() > MAX_NAME_LENGTH {
            return Err(NameError::Length);
        }
        if !name.split('/').all(is_valid_component) {
            return Err(NameError::Grammar(name.to_owned()));
        }
        Ok(RepositoryName(name.to_owned()))
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepositoryName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RepositoryName({})", self.0)
    }
}

/// A tag matching `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

/// Why a tag was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "tag {0:?} is invalid: up to {MAX_TAG_LENGTH} characters of [A-Za-z0-9._-], not starting with '.' or '-'"
)]
pub struct TagError(String);

impl Tag {
    /// Validates a tag.
    pub fn parse(tag: &str) -> Result<Tag, TagError> {
        let bytes = tag.as_bytes();
        let first_ok = bytes
            .first()
            .is_some_and(|&b| b.is_ascii_alphanumeric() || b == b'_');
        let rest_ok = bytes[1.min(bytes.len())..]
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if first_ok && rest_ok && bytes.len() <= MAX_TAG_LENGTH {
            Ok(Tag(tag.to_owned()))
        } else {
            Err(TagError(tag.chars().take(MAX_TAG_LENGTH + 8).collect()))
        }
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Tag({})", self.0)
    }
}

/// The `<reference>` of a manifest URL: a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Reference {
    /// A tag.
    Tag(Tag),
    /// A manifest digest.
    Digest(Digest),
}

/// Why a manifest reference was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    /// Looked like a digest (has a ':') but is not a valid one.
    #[error(transparent)]
    Digest(#[from] DigestError),
    /// Not a valid tag.
    #[error(transparent)]
    Tag(#[from] TagError),
}

impl Reference {
    /// Parses a reference: anything with a ':' is a digest, everything else a tag.
    pub fn parse(reference: &str) -> Result<Reference, ReferenceError> {
        if reference.contains(':') {
            Ok(Reference::Digest(Digest::parse(reference)?))
        } else {
            Ok(Reference::Tag(Tag::parse(reference)?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => t.fmt(f),
            Reference::Digest(d) => d.fmt(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repository_names_follow_the_spec_grammar() {
        for good in [
            "a",
            "library/ubuntu",
            "a/b/c/d/e",
            "foo.bar",
            "foo_bar",
            "foo__bar",
            "foo---bar",
            "0",
            "a1/b2.c3-d4__e5",
        ] {
            assert!(RepositoryName::parse(good).is_ok(), "{good:?}");
        }
        for bad in [
            "",
            "A",
            "foo/",
            "/foo",
            "foo//bar",
            "foo..bar",
            "foo___bar",
            "-foo",
            "foo-",
            "foo._bar",
            "foo bar",
            "foo%2fbar",
            "ünïcode",
        ] {
            assert!(RepositoryName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(RepositoryName::parse(&"a".repeat(255)).is_ok());
        assert_eq!(
            RepositoryName::parse(&"a".repeat(256)),
            Err(NameError::Length)
        );
    }

    #[test]
    fn tags_follow_the_spec_grammar() {
        for good in ["latest", "v1.0", "_x", "A-b_c.D", &"t".repeat(128)] {
            assert!(Tag::parse(good).is_ok(), "{good:?}");
        }
        for bad in ["", ".x", "-x", "a/b", "a:b", "a b", &"t".repeat(129)] {
            assert!(Tag::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn references_are_tags_or_digests() {
        assert!(matches!(Reference::parse("latest"), Ok(Reference::Tag(_))));
        assert!(matches!(
            Reference::parse(
                "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
            ),
            Ok(Reference::Digest(_))
        ));
        assert!(matches!(
            Reference::parse("sha256:nothex"),
            Err(ReferenceError::Digest(_))
        ));
    }
}
