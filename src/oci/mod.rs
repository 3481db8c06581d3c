//! The OCI vocabulary: digests, names, references, manifests and media types.
//!
//! Pure types with no I/O; everything else in Berth speaks in these terms.

pub mod digest;
pub mod manifest;
pub mod name;

pub use digest::{Digest, DigestAlgorithm, DigestError, Hasher};
pub use manifest::{
    Descriptor, ImageIndex, ImageManifest, ManifestError, ManifestKind, ParsedManifest, Platform,
    media_type,
};
pub use name::{NameError, Reference, ReferenceError, RepositoryName, Tag, TagError};
