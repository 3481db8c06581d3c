//! Raw S3 for reference: `PutObject` from one and from several clients, and a presigned `GET`,
//! against the bucket the `AWS_*` environment names.

use super::*;

async fn s3_client() -> aws_sdk_s3::Client {
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .load()
        .await;
    let config = aws_sdk_s3::config::Builder::from(&sdk)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

pub(crate) async fn s3_put(bench: &mut Bench, parallel: usize) -> Result<()> {
    let client = s3_client().await;
    let bucket = bench
        .opts
        .s3_bucket
        .clone()
        .or_else(|| std::env::var("S3_BUCKET").ok())
        .ok_or("set --s3-bucket or S3_BUCKET")?;
    let size = bench.opts.size_mib * MIB;
    let part = bench.opts.s3_part_mib * MIB;
    let data = payload(size, seed());
    let key = format!("berth-bench/raw-{}", seed());
    let t = Instant::now();
    let upload = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await?;
    let id = upload.upload_id().ok_or("no upload id")?.to_owned();
    let parts: Vec<(i32, Bytes)> = (0..size.div_ceil(part))
        .map(|i| {
            (
                i as i32 + 1,
                data.slice(i * part..((i + 1) * part).min(size)),
            )
        })
        .collect();
    let completed: Vec<aws_sdk_s3::types::CompletedPart> = futures::stream::iter(parts)
        .map(|(n, body)| {
            let (client, bucket, key, id) =
                (client.clone(), bucket.clone(), key.clone(), id.clone());
            async move {
                let len = body.len() as i64;
                let out = client
                    .upload_part()
                    .bucket(&bucket)
                    .key(&key)
                    .upload_id(&id)
                    .part_number(n)
                    .content_length(len)
                    .body(aws_sdk_s3::primitives::ByteStream::from(body))
                    .send()
                    .await?;
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
                    aws_sdk_s3::types::CompletedPart::builder()
                        .part_number(n)
                        .set_e_tag(out.e_tag().map(str::to_owned))
                        .build(),
                )
            }
        })
        .buffered(parallel)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<Result<_>>()?;
    client
        .complete_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await?;
    let elapsed = t.elapsed();
    let name = if parallel > 1 {
        format!("s3-put-x{parallel}")
    } else {
        "s3-put".to_owned()
    };
    bench.record(&name, mb_per_s(size, elapsed), "MB/s", None);

    let t = Instant::now();
    let out = client.get_object().bucket(&bucket).key(&key).send().await?;
    let mut body = out.body;
    let mut hasher = Sha256::new();
    let mut got = 0;
    while let Some(chunk) = body.next().await {
        let chunk = chunk?;
        got += chunk.len();
        hasher.update(&chunk);
    }
    let elapsed = t.elapsed();
    if got != size {
        return Err(format!("GET returned {got} bytes").into());
    }
    if parallel == 1 {
        bench.record("s3-get-sdk", mb_per_s(size, elapsed), "MB/s", None);
        // The same bytes through a presigned URL and the HTTP client registry pulls use: the
        // baseline for a pull that is redirected to S3.
        let presigned = client
            .get_object()
            .bucket(&bucket)
            .key(&key)
            .presigned(aws_sdk_s3::presigning::PresigningConfig::expires_in(
                Duration::from_secs(600),
            )?)
            .await?;
        let t = Instant::now();
        let r = bench.http.get(presigned.uri()).send().await?;
        let (got, _) = drain(r).await?;
        let elapsed = t.elapsed();
        if got != size {
            return Err(format!("presigned GET returned {got} bytes").into());
        }
        bench.record("s3-get", mb_per_s(size, elapsed), "MB/s", None);
    }
    client
        .delete_object()
        .bucket(&bucket)
        .key(&key)
        .send()
        .await?;
    Ok(())
}
