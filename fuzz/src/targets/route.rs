//! The router (`route(method, path)`): never panics; a route found names its parts so that
//! the canonical path of its operation, built from them, routes to the same thing.

use berth::http::{Operation, Route, RouteError, Target, route};
use berth::oci::RepositoryName;
use http::Method;

use crate::input;

const METHODS: &[&str] = &["GET", "HEAD", "PUT", "DELETE", "POST", "PATCH", "OPTIONS"];

fn canonical(route: &Route) -> String {
    use Operation as O;
    let name = route.name.as_ref().map(ToString::to_string).unwrap_or_default();
    let target = route.target.to_string();
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
            let target = found.target.to_string();
            assert!(!target.contains('/'), "{path:?}: {found:?}");
            let needs_name = !matches!(found.operation, O::ApiVersion | O::Catalog);
            assert_eq!(found.name.is_some(), needs_name, "{path:?}: {found:?}");
            let needs_target = !matches!(
                found.operation,
                O::ApiVersion | O::Catalog | O::ListTags | O::StartUpload
            );
            assert_eq!(!target.is_empty(), needs_target, "{path:?}: {found:?}");
            assert_eq!(
                matches!(found.target, Target::None),
                !needs_target,
                "{path:?}: {found:?}"
            );
            if let Some(name) = &found.name {
                assert!(path.contains(name.as_str()));
                // A routed name is a valid one, parsed once.
                assert_eq!(RepositoryName::parse(name.as_str()).as_ref(), Ok(name));
            }
            if needs_target {
                assert!(path.ends_with(&format!("/{target}")));
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
                assert!(
                    matches!(
                        route(other, path),
                        Ok(_) | Err(RouteError::InvalidName { .. })
                    ),
                    "{other} {path:?}"
                );
            }
        }
        Err(RouteError::InvalidName { name, .. }) => {
            assert!(RepositoryName::parse(&name).is_err(), "{path:?}: {name:?}");
        }
        Err(RouteError::NotFound) => {
            for other in METHODS {
                let other = Method::from_bytes(other.as_bytes()).unwrap();
                assert_eq!(route(&other, path), Err(RouteError::NotFound), "{path:?}");
            }
        }
    }
}
