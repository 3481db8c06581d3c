//! The one mapping of registry errors to HTTP: each code and [`Condition`] gets its status,
//! the hints (retry after, the upload's offset) become headers, and the envelope its JSON
//! wire form.

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use http::{HeaderName, HeaderValue, StatusCode, header};

use crate::error::{Condition, ErrorCode, RegistryError};
use crate::metadata::MetadataError;
use crate::oci::{DigestError, ManifestError, NameError, ReferenceError, TagError};
use crate::registry::uploads::UploadIdError;
use crate::storage::StorageError;

/// A registry error as it is answered: its status and headers decided.
#[derive(Clone, Debug)]
pub struct ApiError {
    error: RegistryError,
    status: StatusCode,
    headers: Vec<(HeaderName, HeaderValue)>,
}

/// Result alias for the HTTP layer.
pub type ApiResult<T> = Result<T, ApiError>;

/// The status a code is answered with unless its condition or the request needs another.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BlobUnknown
        | ErrorCode::BlobUploadUnknown
        | ErrorCode::ManifestUnknown
        | ErrorCode::NameUnknown => StatusCode::NOT_FOUND,
        ErrorCode::BlobUploadInvalid
        | ErrorCode::DigestInvalid
        | ErrorCode::ManifestBlobUnknown
        | ErrorCode::ManifestInvalid
        | ErrorCode::NameInvalid
        | ErrorCode::SizeInvalid
        | ErrorCode::TagInvalid => StatusCode::BAD_REQUEST,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Denied => StatusCode::FORBIDDEN,
        ErrorCode::Unsupported => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
    }
}

/// The `Range` header value for an upload holding `offset` bytes (`0-<last byte>`; `0-0`
/// when empty, as Docker's registry has always answered).
pub fn upload_range(offset: u64) -> HeaderValue {
    let last = offset.saturating_sub(1);
    HeaderValue::from_str(&format!("0-{last}")).unwrap_or_else(|_| HeaderValue::from_static("0-0"))
}

impl From<RegistryError> for ApiError {
    fn from(error: RegistryError) -> ApiError {
        let status = match error.condition() {
            Condition::Usual => status_of(error.error_code()),
            Condition::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Condition::TooSlow => StatusCode::REQUEST_TIMEOUT,
            Condition::OutOfOrder => StatusCode::RANGE_NOT_SATISFIABLE,
        };
        let mut headers = Vec::new();
        if let Some(seconds) = error.retry_after_secs() {
            headers.push((header::RETRY_AFTER, HeaderValue::from(seconds)));
        }
        if let Some(offset) = error.upload_offset() {
            headers.push((header::RANGE, upload_range(offset)));
        }
        ApiError {
            error,
            status,
            headers,
        }
    }
}

impl ApiError {
    /// An error with `code`'s usual status.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        RegistryError::new(code, message).into()
    }

    /// A server fault: clients see a generic message, `cause` goes to the log.
    pub fn internal(cause: impl std::fmt::Display) -> ApiError {
        RegistryError::internal(cause).into()
    }

    /// A dependency is down; the message says which, and clients may retry.
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        RegistryError::unavailable(message).into()
    }

    /// Replaces the status, for a refusal only the request's form explains.
    pub fn with_status(mut self, status: StatusCode) -> ApiError {
        self.status = status;
        self
    }

    /// Sets the detail of the first entry.
    pub fn with_detail(mut self, detail: serde_json::Value) -> ApiError {
        self.error = self.error.with_detail(detail);
        self
    }

    /// Adds a response header.
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> ApiError {
        self.headers.push((name, value));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers beyond `Content-Type`.
    pub fn headers(&self) -> &[(HeaderName, HeaderValue)] {
        &self.headers
    }

    /// The value of header `name`, if the answer has it.
    pub fn header(&self, name: &HeaderName) -> Option<&HeaderValue> {
        self.headers.iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }

    /// The first entry's code.
    pub fn code(&self) -> &'static str {
        self.error.code()
    }

    /// The JSON envelope `{"errors":[…]}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({ "errors": self.error.entries() })
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.status.as_u16(), self.error)
    }
}

impl std::error::Error for ApiError {}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() {
            tracing::error!(status = self.status.as_u16(), code = self.code(), cause = ?self.error.cause(), "request failed");
        }
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        for (name, value) in self.headers {
            headers.append(name, value);
        }
        response
    }
}

/// Lower layers' errors reach the HTTP layer as the registry maps them.
macro_rules! through_registry_error {
    ($($from:ty),*) => {$(
        impl From<$from> for ApiError {
            fn from(e: $from) -> ApiError {
                RegistryError::from(e).into()
            }
        }
    )*};
}
through_registry_error!(
    MetadataError,
    StorageError,
    NameError,
    DigestError,
    TagError,
    ReferenceError,
    ManifestError
);

impl From<UploadIdError> for ApiError {
    fn from(e: UploadIdError) -> ApiError {
        ApiError::new(ErrorCode::BlobUploadUnknown, e.to_string())
    }
}
