//! Request routing: every `/v2/…` request is parsed into an [`Operation`] on a repository,
//! with the repository name and what the path ends with parsed and validated once, here.
//!
//! Repository names have any number of `/`-separated segments in the middle of the path, so
//! paths are parsed from the right end (`…/blobs/uploads/<id>`, `…/blobs/<digest>`,
//! `…/manifests/<reference>`, `…/tags/list`, `…/referrers/<digest>`), not by a path router.

use http::Method;

use super::error::{ApiError, ApiResult};
use crate::oci::{Digest, DigestError, NameError, Reference, ReferenceError, RepositoryName};
use crate::registry::uploads::{UploadId, UploadIdError};

/// What access an operation needs; the basis of authorization.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Action {
    /// Nothing beyond reaching the registry (`GET /v2/`).
    None,
    /// Read a repository.
    Pull,
    /// Write to a repository.
    Push,
    /// Delete from a repository.
    Delete,
    /// List all repositories.
    Catalog,
}

/// Every operation of the distribution API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operation {
    /// `GET /v2/`
    ApiVersion,
    /// `GET /v2/_catalog`
    Catalog,
    /// `GET /v2/<name>/tags/list`
    ListTags,
    /// `GET /v2/<name>/manifests/<reference>`
    GetManifest,
    /// `HEAD /v2/<name>/manifests/<reference>`
    HeadManifest,
    /// `PUT /v2/<name>/manifests/<reference>`
    PutManifest,
    /// `DELETE /v2/<name>/manifests/<reference>`
    DeleteManifest,
    /// `GET /v2/<name>/blobs/<digest>`
    GetBlob,
    /// `HEAD /v2/<name>/blobs/<digest>`
    HeadBlob,
    /// `DELETE /v2/<name>/blobs/<digest>`
    DeleteBlob,
    /// `POST /v2/<name>/blobs/uploads/`
    StartUpload,
    /// `GET /v2/<name>/blobs/uploads/<id>`
    UploadStatus,
    /// `PATCH /v2/<name>/blobs/uploads/<id>`
    PatchUpload,
    /// `PUT /v2/<name>/blobs/uploads/<id>`
    FinishUpload,
    /// `DELETE /v2/<name>/blobs/uploads/<id>`
    CancelUpload,
    /// `GET /v2/<name>/referrers/<digest>`
    ListReferrers,
}

impl Operation {
    /// A stable, low-cardinality name for logs and metrics.
    pub fn name(self) -> &'static str {
        match self {
            Operation::ApiVersion => "api_version",
            Operation::Catalog => "catalog",
            Operation::ListTags => "list_tags",
            Operation::GetManifest => "get_manifest",
            Operation::HeadManifest => "head_manifest",
            Operation::PutManifest => "put_manifest",
            Operation::DeleteManifest => "delete_manifest",
            Operation::GetBlob => "get_blob",
            Operation::HeadBlob => "head_blob",
            Operation::DeleteBlob => "delete_blob",
            Operation::StartUpload => "start_upload",
            Operation::UploadStatus => "upload_status",
            Operation::PatchUpload => "patch_upload",
            Operation::FinishUpload => "finish_upload",
            Operation::CancelUpload => "cancel_upload",
            Operation::ListReferrers => "list_referrers",
        }
    }

    /// The access the operation needs.
    pub fn action(self) -> Action {
        match self {
            Operation::ApiVersion => Action::None,
            Operation::Catalog => Action::Catalog,
            Operation::ListTags
            | Operation::GetManifest
            | Operation::HeadManifest
            | Operation::GetBlob
            | Operation::HeadBlob
            | Operation::ListReferrers => Action::Pull,
            Operation::PutManifest
            | Operation::StartUpload
            | Operation::UploadStatus
            | Operation::PatchUpload
            | Operation::FinishUpload
            | Operation::CancelUpload => Action::Push,
            Operation::DeleteManifest | Operation::DeleteBlob => Action::Delete,
        }
    }
}

/// A parsed request: the operation, the repository it names and what its path ends with,
/// each already validated, so that handlers never parse the path again.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The operation.
    pub operation: Operation,
    /// The repository (none for `/v2/` and the catalog).
    pub name: Option<RepositoryName>,
    /// The reference, digest or upload id the path ends with.
    pub target: Target,
}

/// What a request's path ends with, parsed as its operation names it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The operation names nothing there.
    None,
    /// A manifest, by tag or digest.
    Reference(Reference),
    /// A blob, or the subject of a referrers list.
    Digest(Digest),
    /// An upload session.
    Upload(UploadId),
    /// The path ends with something its operation cannot name. Answered once access is
    /// decided, as each operation's handler says (a manifest read answers it as missing).
    Invalid {
        /// The segment as written.
        raw: String,
        /// Why it names nothing.
        error: TargetError,
    },
}

/// Why the last segment of a path names nothing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetError {
    /// Neither a tag nor a digest.
    Reference(ReferenceError),
    /// Not a digest.
    Digest(DigestError),
    /// Not an upload id.
    Upload(UploadIdError),
}

impl Target {
    /// The manifest reference, or why there is none.
    pub fn reference(&self) -> ApiResult<&Reference> {
        match self {
            Target::Reference(reference) => Ok(reference),
            other => Err(other.mismatch()),
        }
    }

    /// The digest, or why there is none.
    pub fn digest(&self) -> ApiResult<&Digest> {
        match self {
            Target::Digest(digest) => Ok(digest),
            other => Err(other.mismatch()),
        }
    }

    /// The upload id, or why there is none.
    pub fn upload(&self) -> ApiResult<&UploadId> {
        match self {
            Target::Upload(id) => Ok(id),
            other => Err(other.mismatch()),
        }
    }

    fn mismatch(&self) -> ApiError {
        match self {
            Target::Invalid { error, .. } => match error.clone() {
                TargetError::Reference(e) => e.into(),
                TargetError::Digest(e) => e.into(),
                TargetError::Upload(e) => e.into(),
            },
            _ => ApiError::internal(format!(
                "a handler asked a route for the wrong target: {self:?}"
            )),
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::None => Ok(()),
            Target::Reference(reference) => reference.fmt(f),
            Target::Digest(digest) => digest.fmt(f),
            Target::Upload(id) => id.fmt(f),
            Target::Invalid { raw, .. } => f.write_str(raw),
        }
    }
}

/// Why a request matches no operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No endpoint has this path.
    NotFound,
    /// The endpoint exists but not with this method; lists the allowed ones.
    MethodNotAllowed(&'static [Method]),
    /// The repository name is not a valid one: it names nothing, so it is refused before
    /// access is decided.
    InvalidName {
        /// The operation the path asks for.
        operation: Operation,
        /// The name as written.
        name: String,
        /// Why it is not a name.
        error: NameError,
    },
}

enum Resource {
    ApiVersion,
    Catalog,
    Tags,
    Manifest,
    Blob,
    Uploads,
    Upload,
    Referrers,
}

const GET_HEAD: &[Method] = &[Method::GET, Method::HEAD];
const GET: &[Method] = &[Method::GET];
const MANIFEST: &[Method] = &[Method::GET, Method::HEAD, Method::PUT, Method::DELETE];
const BLOB: &[Method] = &[Method::GET, Method::HEAD, Method::DELETE];
const POST: &[Method] = &[Method::POST];
const UPLOAD: &[Method] = &[Method::GET, Method::PATCH, Method::PUT, Method::DELETE];

/// Parses a percent-decoded path below `/v2`.
pub fn route(method: &Method, path: &str) -> Result<Route, RouteError> {
    let rest = path.strip_prefix("/v2").ok_or(RouteError::NotFound)?;
    let (resource, name, target) = parse_resource(rest).ok_or(RouteError::NotFound)?;
    use Operation as O;
    let operation = match (resource, method.as_str()) {
        (Resource::ApiVersion, "GET" | "HEAD") => O::ApiVersion,
        (Resource::ApiVersion, _) => return Err(RouteError::MethodNotAllowed(GET_HEAD)),
        (Resource::Catalog, "GET") => O::Catalog,
        (Resource::Catalog, _) => return Err(RouteError::MethodNotAllowed(GET)),
        (Resource::Tags, "GET") => O::ListTags,
        (Resource::Tags, _) => return Err(RouteError::MethodNotAllowed(GET)),
        (Resource::Manifest, "GET") => O::GetManifest,
        (Resource::Manifest, "HEAD") => O::HeadManifest,
        (Resource::Manifest, "PUT") => O::PutManifest,
        (Resource::Manifest, "DELETE") => O::DeleteManifest,
        (Resource::Manifest, _) => return Err(RouteError::MethodNotAllowed(MANIFEST)),
        (Resource::Blob, "GET") => O::GetBlob,
        (Resource::Blob, "HEAD") => O::HeadBlob,
        (Resource::Blob, "DELETE") => O::DeleteBlob,
        (Resource::Blob, _) => return Err(RouteError::MethodNotAllowed(BLOB)),
        (Resource::Uploads, "POST") => O::StartUpload,
        (Resource::Uploads, _) => return Err(RouteError::MethodNotAllowed(POST)),
        (Resource::Upload, "GET") => O::UploadStatus,
        (Resource::Upload, "PATCH") => O::PatchUpload,
        (Resource::Upload, "PUT") => O::FinishUpload,
        (Resource::Upload, "DELETE") => O::CancelUpload,
        (Resource::Upload, _) => return Err(RouteError::MethodNotAllowed(UPLOAD)),
        (Resource::Referrers, "GET") => O::ListReferrers,
        (Resource::Referrers, _) => return Err(RouteError::MethodNotAllowed(GET)),
    };
    let name = match operation {
        O::ApiVersion | O::Catalog => None,
        _ => Some(
            RepositoryName::parse(name).map_err(|error| RouteError::InvalidName {
                operation,
                name: name.to_owned(),
                error,
            })?,
        ),
    };
    let invalid = |error| Target::Invalid {
        raw: target.to_owned(),
        error,
    };
    let target = match operation {
        O::ApiVersion | O::Catalog | O::ListTags | O::StartUpload => Target::None,
        O::GetManifest | O::HeadManifest | O::PutManifest | O::DeleteManifest => {
            match Reference::parse(target) {
                Ok(reference) => Target::Reference(reference),
                Err(e) => invalid(TargetError::Reference(e)),
            }
        }
        O::GetBlob | O::HeadBlob | O::DeleteBlob | O::ListReferrers => {
            match Digest::parse(target) {
                Ok(digest) => Target::Digest(digest),
                Err(e) => invalid(TargetError::Digest(e)),
            }
        }
        O::UploadStatus | O::PatchUpload | O::FinishUpload | O::CancelUpload => {
            match UploadId::parse(target) {
                Ok(id) => Target::Upload(id),
                Err(e) => invalid(TargetError::Upload(e)),
            }
        }
    };
    Ok(Route {
        operation,
        name,
        target,
    })
}

fn parse_resource(rest: &str) -> Option<(Resource, &str, &str)> {
    if rest.is_empty() || rest == "/" {
        return Some((Resource::ApiVersion, "", ""));
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some((Resource::Catalog, "", ""));
    }
    let segments: Vec<&str> = rest.split('/').collect();
    let n = segments.len();
    let name_of = |k: usize| -> Option<&str> {
        // The name is everything before the last `k` segments.
        let cut = segments[..n - k].iter().map(|s| s.len() + 1).sum::<usize>();
        let name = rest.get(..cut.checked_sub(1)?)?;
        (!name.is_empty()).then_some(name)
    };
    if n >= 3 && segments[n - 3] == "blobs" && segments[n - 2] == "uploads" {
        let name = name_of(3)?;
        let id = segments[n - 1];
        let resource = if id.is_empty() {
            Resource::Uploads
        } else {
            Resource::Upload
        };
        return Some((resource, name, id));
    }
    if n >= 3 && segments[n - 2] == "blobs" && segments[n - 1] == "uploads" {
        // `POST /v2/<name>/blobs/uploads` without the trailing slash.
        return Some((Resource::Uploads, name_of(2)?, ""));
    }
    if n < 3 {
        return None;
    }
    let target = segments[n - 1];
    let resource = match segments[n - 2] {
        "tags" if target == "list" => Resource::Tags,
        "manifests" if !target.is_empty() => Resource::Manifest,
        "blobs" if !target.is_empty() => Resource::Blob,
        "referrers" if !target.is_empty() => Resource::Referrers,
        _ => return None,
    };
    let target = if matches!(resource, Resource::Tags) {
        ""
    } else {
        target
    };
    Some((resource, name_of(2)?, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: Method, path: &str) -> (Operation, String, String) {
        let r = route(&method, path).unwrap_or_else(|e| panic!("{method} {path}: {e:?}"));
        let name = r.name.map(|n| n.to_string()).unwrap_or_default();
        (r.operation, name, r.target.to_string())
    }

    #[test]
    fn targets_are_parsed_for_their_operation() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let id = "5f0c1e9a-3b5d-4c1e-9f2a-0d6b7e8c9a10";
        let blob = route(&Method::GET, &format!("/v2/a/blobs/{digest}")).expect("routed");
        assert_eq!(
            blob.target,
            Target::Digest(Digest::parse(&digest).expect("a digest"))
        );
        let manifest = route(&Method::PUT, "/v2/a/manifests/v1").expect("routed");
        assert!(matches!(
            manifest.target,
            Target::Reference(Reference::Tag(_))
        ));
        let upload = route(&Method::PATCH, &format!("/v2/a/blobs/uploads/{id}")).expect("routed");
        assert_eq!(upload.target.upload().expect("an upload id").as_str(), id);
        // Malformed targets are kept for the handler, which answers them after access is
        // decided.
        for (method, path, raw) in [
            (Method::GET, "/v2/a/blobs/sha256:short", "sha256:short"),
            (Method::GET, "/v2/a/manifests/-bad", "-bad"),
            (Method::PATCH, "/v2/a/blobs/uploads/not-an-id", "not-an-id"),
        ] {
            let found = route(&method, path).expect("routed");
            assert!(
                matches!(&found.target, Target::Invalid { raw: r, .. } if r == raw),
                "{path}: {found:?}"
            );
            assert!(found.target.digest().is_err() && found.target.upload().is_err());
        }
        assert!(matches!(
            route(&Method::GET, "/v2/A/tags/list"),
            Err(RouteError::InvalidName { .. })
        ));
        assert_eq!(
            route(&Method::GET, "/v2/_catalog").expect("routed").name,
            None
        );
    }

    #[test]
    fn routes_every_endpoint() {
        use Operation as O;
        let d = "sha256:abc";
        let table: Vec<(Method, String, O, &str, &str)> = vec![
            (Method::GET, "/v2/".into(), O::ApiVersion, "", ""),
            (Method::GET, "/v2".into(), O::ApiVersion, "", ""),
            (Method::GET, "/v2/_catalog".into(), O::Catalog, "", ""),
            (Method::GET, "/v2/a/tags/list".into(), O::ListTags, "a", ""),
            (
                Method::GET,
                "/v2/a/b/manifests/latest".into(),
                O::GetManifest,
                "a/b",
                "latest",
            ),
            (
                Method::HEAD,
                "/v2/a/manifests/x".into(),
                O::HeadManifest,
                "a",
                "x",
            ),
            (
                Method::PUT,
                "/v2/a/manifests/x".into(),
                O::PutManifest,
                "a",
                "x",
            ),
            (
                Method::DELETE,
                "/v2/a/manifests/x".into(),
                O::DeleteManifest,
                "a",
                "x",
            ),
            (
                Method::GET,
                format!("/v2/a/b/c/d/blobs/{d}"),
                O::GetBlob,
                "a/b/c/d",
                d,
            ),
            (
                Method::HEAD,
                format!("/v2/a/blobs/{d}"),
                O::HeadBlob,
                "a",
                d,
            ),
            (
                Method::DELETE,
                format!("/v2/a/blobs/{d}"),
                O::DeleteBlob,
                "a",
                d,
            ),
            (
                Method::POST,
                "/v2/a/b/blobs/uploads/".into(),
                O::StartUpload,
                "a/b",
                "",
            ),
            (
                Method::POST,
                "/v2/a/b/blobs/uploads".into(),
                O::StartUpload,
                "a/b",
                "",
            ),
            (
                Method::GET,
                "/v2/a/blobs/uploads/u1".into(),
                O::UploadStatus,
                "a",
                "u1",
            ),
            (
                Method::PATCH,
                "/v2/a/blobs/uploads/u1".into(),
                O::PatchUpload,
                "a",
                "u1",
            ),
            (
                Method::PUT,
                "/v2/a/blobs/uploads/u1".into(),
                O::FinishUpload,
                "a",
                "u1",
            ),
            (
                Method::DELETE,
                "/v2/a/blobs/uploads/u1".into(),
                O::CancelUpload,
                "a",
                "u1",
            ),
            (
                Method::GET,
                format!("/v2/a/referrers/{d}"),
                O::ListReferrers,
                "a",
                d,
            ),
        ];
        for (method, path, op, name, target) in table {
            assert_eq!(
                ok(method, &path),
                (op, name.to_owned(), target.to_owned()),
                "{path}"
            );
        }
    }

    #[test]
    fn names_may_contain_endpoint_words() {
        assert_eq!(
            ok(Method::GET, "/v2/blobs/manifests/manifests/latest"),
            (
                Operation::GetManifest,
                "blobs/manifests".into(),
                "latest".into()
            )
        );
        assert_eq!(
            ok(Method::GET, "/v2/x/blobs/uploads/blobs/sha256:a"),
            (
                Operation::GetBlob,
                "x/blobs/uploads".into(),
                "sha256:a".into()
            )
        );
        assert_eq!(
            ok(Method::PATCH, "/v2/a/blobs/blobs/uploads/u"),
            (Operation::PatchUpload, "a/blobs".into(), "u".into())
        );
        assert_eq!(
            ok(Method::GET, "/v2/tags/tags/list"),
            (Operation::ListTags, "tags".into(), "".into())
        );
    }

    #[test]
    fn unknown_paths_and_methods_are_refused() {
        for path in [
            "/v3/",
            "/v2/a",
            "/v2/manifests/latest",
            "/v2/a/manifests/",
            "/v2/a/tags/other",
            "/v2/a/unknown/x",
            "/v2//manifests/x",
        ] {
            assert_eq!(
                route(&Method::GET, path),
                Err(RouteError::NotFound),
                "{path}"
            );
        }
        assert!(matches!(
            route(&Method::POST, "/v2/a/manifests/x"),
            Err(RouteError::MethodNotAllowed(_))
        ));
        assert!(matches!(
            route(&Method::PATCH, "/v2/a/blobs/uploads/"),
            Err(RouteError::MethodNotAllowed(_))
        ));
    }

    #[test]
    fn every_operation_has_an_action() {
        assert_eq!(Operation::GetBlob.action(), Action::Pull);
        assert_eq!(Operation::PatchUpload.action(), Action::Push);
        assert_eq!(Operation::DeleteManifest.action(), Action::Delete);
        assert_eq!(Operation::Catalog.action(), Action::Catalog);
    }
}
