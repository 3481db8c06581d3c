//! The S3 server of the Postgres + S3 configuration: a client to look behind Berth's back and
//! a proxy that makes it answer as a full MinIO does.

use std::sync::Arc;

use super::proxy;

/// The S3 server of the Postgres + S3 configuration (see `services.rs`).
pub fn s3_server() -> crate::services::S3 {
    crate::services::for_configuration(crate::services::s3(), "PostgresS3")
}

/// An S3 client for the test server, to look behind Berth's back.
pub async fn s3_client() -> aws_sdk_s3::Client {
    s3_server().client().await
}

pub fn s3_bucket() -> String {
    s3_server().bucket
}

/// Keys and in-progress multipart uploads under a prefix.
pub async fn s3_listing(prefix: &str) -> (Vec<String>, Vec<String>) {
    let client = s3_client().await;
    let objects = client
        .list_objects_v2()
        .bucket(s3_bucket())
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_owned))
        .collect();
    let uploads = client
        .list_multipart_uploads()
        .bucket(s3_bucket())
        .prefix(prefix)
        .send()
        .await
        .unwrap()
        .uploads()
        .iter()
        .filter_map(|u| u.key().map(str::to_owned))
        .collect();
    (objects, uploads)
}

/// An HTTP proxy in front of the S3 server that, while `full` is set, answers every upload
/// (`PutObject`, `UploadPart`) the way MinIO does when its drives are full: 507 with
/// `XMinioStorageFull`. Everything else passes through unchanged (signatures included: the
/// `Host` header is kept).
pub struct FullS3 {
    pub endpoint: String,
    pub full: Arc<std::sync::atomic::AtomicBool>,
}

impl FullS3 {
    pub async fn start(target: String) -> FullS3 {
        use http_body_util::BodyExt;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let full = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let flag = Arc::clone(&full);
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (client, flag, target) = (client.clone(), Arc::clone(&flag), target.clone());
                let service = hyper::service::service_fn(
                    move |request: hyper::Request<hyper::body::Incoming>| {
                        let (client, flag, target) =
                            (client.clone(), Arc::clone(&flag), target.clone());
                        async move {
                            let upload = request.method() == hyper::Method::PUT
                                && !request.headers().contains_key("x-amz-copy-source");
                            if upload && flag.load(std::sync::atomic::Ordering::SeqCst) {
                                // A server reads the request before it answers.
                                let _ = request.into_body().collect().await;
                                let body = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>XMinioStorageFull</Code><Message>Storage backend has reached its minimum free drive threshold. Please delete a few objects to proceed.</Message></Error>";
                                let response = hyper::Response::builder()
                                    .status(507)
                                    .header("content-type", "application/xml")
                                    .body(
                                        http_body_util::Full::new(bytes::Bytes::from(body))
                                            .map_err(|e| match e {})
                                            .boxed(),
                                    )
                                    .unwrap();
                                return Ok::<_, std::convert::Infallible>(response);
                            }
                            let (parts, body) = request.into_parts();
                            let forward = proxy::upstream(&client, &parts, &target);
                            let body = body.into_data_stream();
                            let forwarded =
                                forward.body(reqwest::Body::wrap_stream(body)).send().await;
                            let response = match forwarded {
                                Ok(r) => {
                                    let mut builder = hyper::Response::builder().status(r.status());
                                    for (name, value) in r.headers() {
                                        builder = builder.header(name, value);
                                    }
                                    let stream = futures::StreamExt::map(r.bytes_stream(), |c| {
                                        c.map(hyper::body::Frame::data)
                                            .map_err(std::io::Error::other)
                                    });
                                    builder
                                        .body(http_body_util::StreamBody::new(stream).boxed())
                                        .unwrap()
                                }
                                Err(_) => hyper::Response::builder()
                                    .status(502)
                                    .body(
                                        http_body_util::Empty::new()
                                            .map_err(|e| match e {})
                                            .boxed(),
                                    )
                                    .unwrap(),
                            };
                            Ok(response)
                        }
                    },
                );
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FullS3 { endpoint, full }
    }

    pub fn set_full(&self, full: bool) {
        self.full.store(full, std::sync::atomic::Ordering::SeqCst);
    }
}
