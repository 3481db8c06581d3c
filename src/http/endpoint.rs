//! Request routing: every `/v2/…` request is parsed into an [`Operation`] on a repository.
//!
//! Repository names have any number of `/`-separated segments in the middle of the path, so
//! paths are parsed from the right end (`…/blobs/uploads/<id>`, `…/blobs/<digest>`,
//! `…/manifests/<reference>`, `…/tags/list`, `…/referrers/<digest>`), not by a path router.

use http::Method;

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

/// A parsed request target: the operation, the raw repository name and the last segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    /// The operation.
    pub operation: Operation,
    /// The repository name as written (validated by the caller).
    pub name: String,
    /// The reference, digest or upload id the path ends with (empty if none).
    pub target: String,
}

/// Why a request matches no operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RouteError {
    /// No endpoint has this path.
    NotFound,
    /// The endpoint exists but not with this method; lists the allowed ones.
    MethodNotAllowed(&'static [Method]),
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
    Ok(Route {
        operation,
        name: name.to_owned(),
        target: target.to_owned(),
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
        (r.operation, r.name, r.target)
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
