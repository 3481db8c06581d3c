//! A piece of the test proxies in front of S3, shared by the integration tests
//! (`util/s3.rs`) and the simulation (`net.rs`), each of which includes this file with `#[path]`.

/// The request `parts` describe, addressed to `target` (the server behind the proxy) with the
/// same method, path, query and headers (`Host` included, so that signatures still hold); the
/// caller adds the body.
pub fn upstream(
    client: &reqwest::Client,
    parts: &http::request::Parts,
    target: &str,
) -> reqwest::RequestBuilder {
    let url = format!(
        "{target}{}",
        parts
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or("/")
    );
    let mut request = client.request(parts.method.clone(), url);
    for (name, value) in &parts.headers {
        request = request.header(name, value);
    }
    request
}
