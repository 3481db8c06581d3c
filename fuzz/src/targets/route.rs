//! The router (`route(method, path)`): never panics; a route found names its parts so that
//! the canonical path of its operation, built from them, routes to the same thing.

use berth::http::{Operation, Route, RouteError, route};
use http::Method;

use crate::input;

const METHODS: &[&str] = &["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH", "OPTIONS"];

fn canonical(route: &Route) -> String {
    use Operation as O;
    let (name, target) = (&route.name, &route.target);
    match route.operation {
        O::ApiVersion => "/v2/".to_owned(),
        O::Catalog => "/v2/_catalog".to_owned(),
        O::ListTags => format!("/v2/{name}/tags/list"),
        O::GetManifest | O::HeadManifest | O::PutManifest | O::DeleteManifest => {
            format!("/v2/{name}/manifests/{target}")
        }
        O::GetBlob | O::HeadBlob | O::DeleteBlob => format!("/v2/{name}/blobs/{target}"),
        O::StartUpload => format!("/v2/{name}/blobs/uploads/"),
        O::UploadStatus | O::PatchUpload | O::FinishUpload | O::CancelUpload => {
            format!("/v2/{name}/blobs/uploads/{target}")
        }
        O::ListReferrers => format!("/v2/{name}/referrers/{target}"),
    }
}

pub fn run(data: &[u8]) {
    let (selector, rest) = input::selector(data);
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let method = Method::from_bytes(METHODS[selector as usize % METHODS.len()].as_bytes()).unwrap();
    match route(&method, path) {
        Ok(found) => {
            use Operation as O;
            assert!(path.starts_with("/v2"));
            assert!(!found.target.contains('/'), "{path:?}: {found:?}");
            let needs_name = !matches!(found.operation, O::ApiVersion | O::Catalog);
            assert_eq!(!found.name.is_empty(), needs_name, "{path:?}: {found:?}");
            let needs_target = !matches!(
                found.operation,
                O::ApiVersion | O::Catalog | O::ListTags | O::StartUpload
            );
            assert_eq!(
                !found.target.is_empty(),
                needs_target,
                "{path:?}: {found:?}"
            );
            if needs_name {
                assert!(path.contains(&found.name));
            }
            if needs_target {
                assert!(path.ends_with(&format!("/{}", found.target)));
            }
            let again = canonical(&found);
            assert_eq!(
                route(&method, &again).as_ref(),
                Ok(&found),
                "{path:?} -> {again:?}"
            );
            // The action the operation needs is defined for every operation.
            let _ = found.operation.action();
            assert!(!found.operation.name().is_empty());
        }
        Err(RouteError::MethodNotAllowed(allowed)) => {
            assert!(!allowed.is_empty());
            assert!(!allowed.contains(&method), "{method} {path:?}");
            for other in allowed {
                assert!(route(other, path).is_ok(), "{other} {path:?}");
            }
        }
        Err(RouteError::NotFound) => {
            for other in METHODS {
                let other = Method::from_bytes(other.as_bytes()).unwrap();
                assert_eq!(route(&other, path), Err(RouteError::NotFound), "{path:?}");
            }
        }
    }
}
