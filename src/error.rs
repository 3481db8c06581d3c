//! The registry's error: OCI error codes with their HTTP status, message and detail.
//!
//! Lower layers have their own error enums; they become a [`RegistryError`] here, in one
//! place. HTTP is not spoken here: `http::error` gives each code and [`Condition`] its status
//! and turns the hints (retry after, upload offset) into headers. Their messages are internal by default: clients see a generic message for 5xx
//! answers while the cause is logged.

use serde::Serialize;

use crate::metadata::MetadataError;
use crate::oci::{DigestError, ManifestError, NameError, ReferenceError, TagError};
use crate::storage::StorageError;

/// Error codes of the distribution spec, plus the two Distribution uses for server faults.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Blob unknown to registry.
    BlobUnknown,
    /// Blob upload invalid.
    BlobUploadInvalid,
    /// Blob upload unknown to registry.
    BlobUploadUnknown,
    /// Provided digest did not match uploaded content.
    DigestInvalid,
    /// Manifest references a manifest or blob unknown to registry.
    ManifestBlobUnknown,
    /// Manifest invalid.
    ManifestInvalid,
    /// Manifest unknown to registry.
    ManifestUnknown,
    /// Invalid repository name.
    NameInvalid,
    /// Repository name not known to registry.
    NameUnknown,
    /// Provided length did not match content length.
    SizeInvalid,
    /// A tag a manifest is pushed to is not a valid tag (Distribution's code; not in the OCI
    /// list, which has no code for it).
    TagInvalid,
    /// Authentication required.
    Unauthorized,
    /// Requested access to the resource is denied.
    Denied,
    /// The operation is unsupported.
    Unsupported,
    /// Too many requests.
    TooManyRequests,
    /// An unexpected server fault (HTTP 500).
    Unknown,
    /// A dependency of the server is down (HTTP 503).
    Unavailable,
    /// Storage is full (HTTP 507).
    InsufficientStorage,
}

impl ErrorCode {
    /// The code's wire form.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BlobUnknown => "BLOB_UNKNOWN",
            ErrorCode::BlobUploadInvalid => "BLOB_UPLOAD_INVALID",
            ErrorCode::BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            ErrorCode::DigestInvalid => "DIGEST_INVALID",
            ErrorCode::ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ErrorCode::ManifestInvalid => "MANIFEST_INVALID",
            ErrorCode::ManifestUnknown => "MANIFEST_UNKNOWN",
            ErrorCode::NameInvalid => "NAME_INVALID",
            ErrorCode::NameUnknown => "NAME_UNKNOWN",
            ErrorCode::SizeInvalid => "SIZE_INVALID",
            ErrorCode::TagInvalid => "TAG_INVALID",
            ErrorCode::Unauthorized => "UNAUTHORIZED",
            ErrorCode::Denied => "DENIED",
            ErrorCode::Unsupported => "UNSUPPORTED",
            ErrorCode::TooManyRequests => "TOOMANYREQUESTS",
            ErrorCode::Unknown => "UNKNOWN",
            ErrorCode::Unavailable => "UNAVAILABLE",
            ErrorCode::InsufficientStorage => "INSUFFICIENT_STORAGE",
        }
    }
}

/// What sets a refusal apart where its code alone does not say it (the HTTP layer answers
/// each with its own status).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Condition {
    /// Nothing beyond the code.
    #[default]
    Usual,
    /// The request carries more than the registry accepts (a manifest over the limit).
    TooLarge,
    /// The client sent its body too slowly, or stopped sending.
    TooSlow,
    /// A chunk does not continue the upload where it stands.
    OutOfOrder,
}

/// One entry of the error envelope.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ErrorEntry {
    /// The OCI code.
    pub code: &'static str,
    /// What went wrong, for people.
    pub message: String,
    /// Structured detail, for programs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

/// An error answered to a client: OCI codes with messages and detail, and what the client
/// may do next (retry later, resume an upload). Free of HTTP: `http` turns it into a status
/// and headers.
#[derive(Clone, Debug)]
pub struct RegistryError {
    code: ErrorCode,
    condition: Condition,
    entries: Vec<ErrorEntry>,
    retry_after_secs: Option<u32>,
    upload_offset: Option<u64>,
    cause: Option<String>,
}

/// Result alias for registry operations.
pub type RegistryResult<T> = Result<T, RegistryError>;

impl RegistryError {
    /// An error with `code`'s usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> RegistryError {
        RegistryError {
            code,
            condition: Condition::Usual,
            entries: vec![ErrorEntry {
                code: code.as_str(),
                message: message.into(),
                detail: None,
            }],
            retry_after_secs: None,
            upload_offset: None,
            cause: None,
        }
    }

    /// A server fault: clients see a generic message, `cause` goes to the log.
    pub fn internal(cause: impl std::fmt::Display) -> RegistryError {
        let mut e = RegistryError::new(ErrorCode::Unknown, "internal server error");
        e.cause = Some(cause.to_string());
        e
    }

    /// A dependency is down; the message says which, and clients may retry.
    pub fn unavailable(message: impl Into<String>) -> RegistryError {
        RegistryError::new(ErrorCode::Unavailable, message).with_retry_after(5)
    }

    /// Storage is full: `507` with a message that says what to do.
    pub fn storage_full(what: &str) -> RegistryError {
        RegistryError::new(
            ErrorCode::InsufficientStorage,
            format!(
                "{what} is out of space; the registry refuses uploads until space is freed \
                 (delete unused images and collect garbage, or add capacity), then retry"
            ),
        )
        .with_retry_after(60)
    }

    /// Sets what sets the refusal apart from others of its code.
    pub fn with_condition(mut self, condition: Condition) -> RegistryError {
        self.condition = condition;
        self
    }

    /// Sets the detail of the first entry.
    pub fn with_detail(mut self, detail: serde_json::Value) -> RegistryError {
        if let Some(first) = self.entries.first_mut() {
            first.detail = Some(detail);
        }
        self
    }

    /// Adds another entry to the envelope.
    pub fn and(
        mut self,
        code: ErrorCode,
        message: impl Into<String>,
        detail: Option<serde_json::Value>,
    ) -> RegistryError {
        self.entries.push(ErrorEntry {
            code: code.as_str(),
            message: message.into(),
            detail,
        });
        self
    }

    /// Tells the client to retry after `seconds`.
    pub fn with_retry_after(mut self, seconds: u32) -> RegistryError {
        self.retry_after_secs = Some(seconds);
        self
    }

    /// Tells the client how many bytes its upload holds, so that it knows where to resume;
    /// an offset already set is kept (it was stated closer to the cause).
    pub fn with_upload_offset(mut self, offset: u64) -> RegistryError {
        self.upload_offset.get_or_insert(offset);
        self
    }

    /// Forgets the upload's offset (for an upload the client never saw).
    pub fn without_upload_offset(mut self) -> RegistryError {
        self.upload_offset = None;
        self
    }

    /// The first entry's code.
    pub fn error_code(&self) -> ErrorCode {
        self.code
    }

    /// What sets the refusal apart from others of its code.
    pub fn condition(&self) -> Condition {
        self.condition
    }

    /// Seconds after which the client may retry.
    pub fn retry_after_secs(&self) -> Option<u32> {
        self.retry_after_secs
    }

    /// The bytes the client's upload holds, where the refusal concerns one.
    pub fn upload_offset(&self) -> Option<u64> {
        self.upload_offset
    }

    /// The envelope entries.
    pub fn entries(&self) -> &[ErrorEntry] {
        &self.entries
    }

    /// The internal cause of a server fault, for logs.
    pub fn cause(&self) -> Option<&str> {
        self.cause.as_deref()
    }

    /// The first entry's code.
    pub fn code(&self) -> &'static str {
        self.code.as_str()
    }
}

impl std::fmt::Display for RegistryError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let first = self.entries.first();
        write!(
            f,
            "{}: {}",
            self.code(),
            first.map(|e| e.message.as_str()).unwrap_or("")
        )?;
        if let Some(cause) = &self.cause {
            write!(f, " ({cause})")?;
        }
        Ok(())
    }
}

impl std::error::Error for RegistryError {}

impl From<MetadataError> for RegistryError {
    fn from(e: MetadataError) -> Self {
        match e {
            MetadataError::Unavailable(_) | MetadataError::Interrupted(_) => {
                let mut err = RegistryError::unavailable(
                    "the metadata database is unavailable; retry shortly",
                );
                err.cause = Some(e.to_string());
                err
            }
            MetadataError::Full(_) => {
                let mut err = RegistryError::storage_full("the metadata database");
                err.cause = Some(e.to_string());
                err
            }
            other => RegistryError::internal(other),
        }
    }
}

impl From<StorageError> for RegistryError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable(_) => {
                let mut err =
                    RegistryError::unavailable("blob storage is unavailable; retry shortly");
                err.cause = Some(e.to_string());
                err
            }
            StorageError::Limit(message) => {
                RegistryError::new(ErrorCode::BlobUploadInvalid, message)
            }
            StorageError::Full(_) => {
                let mut err = RegistryError::storage_full("blob storage");
                err.cause = Some(e.to_string());
                err
            }
            other => RegistryError::internal(other),
        }
    }
}

impl From<NameError> for RegistryError {
    fn from(e: NameError) -> Self {
        RegistryError::new(ErrorCode::NameInvalid, e.to_string())
    }
}

impl From<DigestError> for RegistryError {
    fn from(e: DigestError) -> Self {
        RegistryError::new(ErrorCode::DigestInvalid, e.to_string())
    }
}

impl From<TagError> for RegistryError {
    fn from(e: TagError) -> Self {
        RegistryError::new(ErrorCode::TagInvalid, e.to_string())
    }
}

impl From<ReferenceError> for RegistryError {
    fn from(e: ReferenceError) -> Self {
        match e {
            ReferenceError::Digest(d) => d.into(),
            ReferenceError::Tag(t) => t.into(),
        }
    }
}

impl From<ManifestError> for RegistryError {
    fn from(e: ManifestError) -> Self {
        RegistryError::new(ErrorCode::ManifestInvalid, e.to_string())
    }
}
