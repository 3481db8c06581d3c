//! Faults on one machine: a full disk, a database locked by another process, storage that
//! answers "out of space". Berth answers 507 or 503 with a clear message (never a bare 500),
//! removes what cannot be resumed, keeps what can, keeps reads working and recovers by itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use reqwest::Method;

use crate::util::*;

/// A small filesystem mounted for one test: ext4 on a loop device, or tmpfs where loop
/// devices are not available. Unmounted when dropped.
pub struct SmallFs {
    pub path: PathBuf,
    _dir: tempfile::TempDir,
    image: Option<PathBuf>,
}

impl SmallFs {
    pub fn mount(mib: u64) -> SmallFs {
        let dir = tempfile::Builder::new()
            .prefix("berth-smallfs-")
            .tempdir()
            .unwrap();
        let path = dir.path().join("mnt");
        std::fs::create_dir_all(&path).unwrap();
        let image = dir.path().join("fs.img");
        let ext4 = Command::new("truncate")
            .args(["-s", &format!("{mib}M")])
            .arg(&image)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&image)
                .status()
                .is_ok_and(|s| s.success())
            && Command::new("mount")
                .args(["-o", "loop"])
                .arg(&image)
                .arg(&path)
                .status()
                .is_ok_and(|s| s.success());
        if ext4 {
            return SmallFs {
                path,
                _dir: dir,
                image: Some(image),
            };
        }
        let tmpfs = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&path)
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            tmpfs,
            "mounting a small filesystem needs root (mount -o loop, or tmpfs)"
        );
        SmallFs {
            path,
            _dir: dir,
            image: None,
        }
    }

    pub fn free(&self) -> u64 {
        let out = Command::new("df")
            .args(["--output=avail", "-B1"])
            .arg(&self.path)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    /// Fills the filesystem with a file until writes fail; returns the file.
    pub fn fill(&self) -> PathBuf {
        let filler = self.path.join("filler");
        let _ = Command::new("dd")
            .args(["if=/dev/zero", "bs=1M"])
            .arg(format!("of={}", filler.display()))
            .output();
        filler
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        if let Some(image) = &self.image {
            let _ = std::fs::remove_file(image);
        }
    }
}

/// Settings putting the data directory on `fs`.
fn on(fs: &SmallFs, extra: &[(&'static str, &'static str)]) -> Vec<(String, String)> {
    let mut settings = vec![(
        "BERTH_DATA_DIR".to_owned(),
        fs.path.join("data").display().to_string(),
    )];
    settings.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    settings
}

fn start(settings: &[(String, String)]) -> Server {
    crate::auth_fixtures::start_with_owned(settings)
}

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("blobs"))
}

async fn a_full_disk_answers_507_removes_what_cannot_resume_and_recovers() {
    let fs = SmallFs::mount(64);
    let admin = format!("127.0.0.1:{}", free_port());
    let mut settings = on(
        &fs,
        &[
            ("BERTH_MIN_FREE_SPACE", "8MiB"),
            ("BERTH_FS_PART_SIZE", "1MiB"),
        ],
    );
    settings.push(("BERTH_ADMIN_LISTEN".into(), admin.clone()));
    let server = start(&settings);
    let metrics = Client::new(&format!("http://{admin}"));
    let storage_low = async || {
        let exposition = metrics.get("/metrics").await;
        exposition.expect(200, None);
        metric(
            &String::from_utf8_lossy(&exposition.body),
            "berth_storage_low",
        )
    };
    let c = server.client();
    let data_dir = fs.path.join("data");
    let image = c.push_image("disk/app", "v1", unique_seed()).await;
    let small = random_bytes(4 << 20, unique_seed());
    let small_digest = c.push_blob("disk/app", &small).await;
    let files_before = blob_files(&data_dir).len();
    let free_before = fs.free();

    // A monolithic push larger than the disk: 507, and its bytes are gone at once.
    let big = random_bytes(100 << 20, unique_seed());
    let a = c
        .send(
            c.request(Method::POST, "/v2/disk/app/blobs/uploads/")
                .query(&[("digest", sha256(&big))])
                .body(big.clone()),
        )
        .await;
    a.expect(507, Some("INSUFFICIENT_STORAGE"));
    let message = a.json()["errors"][0]["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        message.contains("out of space") && message.contains("free"),
        "{message}"
    );
    assert_eq!(
        blob_files(&data_dir).len(),
        files_before,
        "no partial upload is left behind"
    );
    assert!(
        fs.free() + (1 << 20) >= free_before,
        "its space is free again: {} before, {} now",
        free_before,
        fs.free()
    );

    // A chunked upload keeps what it stored; its Range stays truthful.
    let location = c.start_upload("disk/app").await;
    let first = 24 << 20;
    c.patch_chunk(&location, &big, 0..first)
        .await
        .expect(202, None);
    let a = c.patch_chunk(&location, &big, first..big.len()).await;
    a.expect(507, Some("INSUFFICIENT_STORAGE"));
    let range = a
        .header("range")
        .expect("the refusal says what the upload holds")
        .to_owned();
    let held = c.upload_offset(&location).await;
    assert_eq!(
        range,
        format!("0-{}", held - 1),
        "the Range answered is the session's"
    );
    assert!(held >= first, "the first chunk is kept");

    // Something else takes the disk below the reserve: new uploads are refused, reads keep
    // working, readiness says why.
    let filler = fs.path.join("filler");
    std::fs::write(&filler, vec![0u8; (fs.free() - (4 << 20)) as usize]).unwrap();
    c.call(Method::POST, "/v2/disk/app/blobs/uploads/")
        .await
        .expect(507, Some("INSUFFICIENT_STORAGE"));
    c.get("/v2/disk/app/manifests/v1").await.expect(200, None);
    let got = c.get(&format!("/v2/disk/app/blobs/{small_digest}")).await;
    got.expect(200, None);
    assert!(got.body[..] == small[..]);
    let ready = c.get("/readyz").await;
    ready.expect(200, None);
    let said = String::from_utf8_lossy(&ready.body).to_string();
    assert!(
        said.contains("degraded") && said.contains("uploads are refused"),
        "{said}"
    );
    assert_eq!(
        storage_low().await,
        Some(1.0),
        "the metric reports the pressure"
    );

    // Freeing space is enough: nothing to restart.
    std::fs::remove_file(&filler).unwrap();
    c.call(Method::DELETE, &location).await.expect(204, None);
    c.push_blob("disk/app", &random_bytes(1 << 20, unique_seed()))
        .await;
    let ready = c.get("/readyz").await;
    assert_eq!(String::from_utf8_lossy(&ready.body), "ready\n");
    assert_eq!(storage_low().await, Some(0.0));
    c.get(&format!("/v2/disk/app/manifests/{}", image.digest))
        .await
        .expect(200, None);
    assert!(!server.log_text().contains("panicked"));
}

async fn a_disk_filled_by_someone_else_answers_507_for_writes_and_keeps_reads() {
    let fs = SmallFs::mount(48);
    // No reserve: the disk fills completely, under the database too.
    let server = start(&on(
        &fs,
        &[
            ("BERTH_MIN_FREE_SPACE", "0"),
            ("BERTH_FS_PART_SIZE", "1MiB"),
        ],
    ));
    let c = server.client();
    let image = c.push_image("full/app", "v1", unique_seed()).await;
    let filler = fs.fill();

    // Blob writes hit ENOSPC: 507.
    let blob = random_bytes(2 << 20, unique_seed());
    let a = c
        .send(
            c.request(Method::POST, "/v2/full/app/blobs/uploads/")
                .query(&[("digest", sha256(&blob))])
                .body(blob.clone()),
        )
        .await;
    a.expect(507, Some("INSUFFICIENT_STORAGE"));
    // Database writes fill the last pages and then fail: 507, never 500.
    let mut refused = None;
    for i in 0..2000 {
        let a = c
            .put_manifest("full/app", &format!("t{i}"), OCI_MANIFEST, &image.manifest)
            .await;
        assert!(
            a.status.as_u16() == 201 || a.status.as_u16() == 507,
            "tag {i}: {} {}",
            a.status,
            String::from_utf8_lossy(&a.body)
        );
        if a.status.as_u16() == 507 {
            refused = Some(a);
            break;
        }
    }
    let refused = refused.expect("a full disk refuses database writes");
    assert_eq!(refused.error_code(), "INSUFFICIENT_STORAGE");
    // Reads keep working.
    c.get("/v2/full/app/manifests/v1").await.expect(200, None);
    let layer = c
        .get(&format!("/v2/full/app/blobs/{}", sha256(&image.layer)))
        .await;
    layer.expect(200, None);
    assert!(layer.body[..] == image.layer[..]);
    c.get("/readyz").await.expect(200, None);

    // Space comes back: so do writes.
    std::fs::remove_file(filler).unwrap();
    c.put_manifest("full/app", "after", OCI_MANIFEST, &image.manifest)
        .await
        .expect(201, None);
    c.push_blob("full/app", &blob).await;
    assert!(
        !server.log_text().contains("status=500"),
        "no request was answered 500"
    );
}

async fn a_locked_database_answers_503_within_the_lock_timeout() {
    let backend = Backend::current();
    let admin = format!("127.0.0.1:{}", free_port());
    let server = Server::start_with(&[
        ("BERTH_DB_LOCK_TIMEOUT", "1s"),
        ("BERTH_ADMIN_LISTEN", admin.as_str()),
    ]);
    let metrics = Client::new(&format!("http://{admin}"));
    let c = server.client();
    c.push_image("locked/app", "v1", unique_seed()).await;
    let errors_before = metric_sum(
        &scrape(&metrics).await,
        "berth_metadata_operation_errors_total",
        &[],
    );
    // Another process takes the database's write lock and holds it.
    let locker = format!("berth-test-locker-{}", unique_seed());
    let mut holder = match backend {
        Backend::Sqlite => Command::new("python3")
            .args([
                "-c",
                "import sqlite3, sys, time\n\
                 c = sqlite3.connect(sys.argv[1], isolation_level=None)\n\
                 c.execute('BEGIN EXCLUSIVE')\n\
                 print('locked', flush=True)\n\
                 time.sleep(60)",
            ])
            .arg(server.deployment.data_dir().join("berth.db"))
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
        _ => {
            // A script on stdin: psql prints each statement's result as it runs.
            let mut psql = Command::new("psql")
                .arg(server.deployment.database_url().unwrap())
                .args(["-q", "-A", "-t", "-f", "-"])
                .env("PGAPPNAME", &locker)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            use std::io::Write;
            psql.stdin
                .as_mut()
                .unwrap()
                .write_all(
                    b"BEGIN;\nLOCK TABLE upload_sessions, manifests, tags IN ACCESS EXCLUSIVE MODE;\n\
                      SELECT 'locked';\nSELECT pg_sleep(60);\nCOMMIT;\n",
                )
                .unwrap();
            psql
        }
    };
    {
        use std::io::BufRead;
        let stdout = holder.stdout.take().unwrap();
        let mut lines = std::io::BufReader::new(stdout).lines();
        assert!(
            lines.any(|l| l.is_ok_and(|l| l.contains("locked"))),
            "the lock is taken"
        );
    }
    let started = Instant::now();
    let a = c.call(Method::POST, "/v2/locked/app/blobs/uploads/").await;
    let waited = started.elapsed();
    a.expect(503, Some("UNAVAILABLE"));
    assert!(a.header("retry-after").is_some());
    assert!(
        waited < Duration::from_secs(5),
        "the request waited {waited:?}, about the 1 s lock timeout"
    );
    let errors = metric_sum(
        &scrape(&metrics).await,
        "berth_metadata_operation_errors_total",
        &[],
    );
    assert!(
        errors > errors_before,
        "the lock timeout counts as a metadata error ({errors_before} before, {errors} after)"
    );
    let _ = holder.kill();
    let _ = holder.wait();
    if let Some(url) = server.deployment.database_url() {
        // The server side of a killed psql sleeps on with its lock: end it.
        let _ = Command::new("psql")
            .arg(url)
            .args([
                "-q",
                "-c",
                &format!(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = '{locker}'"
                ),
            ])
            .output();
    }
    eventually(
        "writes work once the lock is released",
        Duration::from_secs(10),
        async || {
            c.call(Method::POST, "/v2/locked/app/blobs/uploads/")
                .await
                .status
                == 202
        },
    )
    .await;
}

async fn postgres_out_of_disk_answers_507() {
    let server = Server::start();
    let c = server.client();
    let image = c.push_image("pgfull/app", "v1", unique_seed()).await;
    let url = server.deployment.database_url().unwrap();
    let psql = |sql: &str| {
        let out = Command::new("psql")
            .arg(&url)
            .args(["-v", "ON_ERROR_STOP=1", "-q", "-c", sql])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Postgres answers what it answers when its disk is full: SQLSTATE 53100.
    psql(
        "CREATE FUNCTION berth_test_disk_full() RETURNS trigger LANGUAGE plpgsql AS $$ \
         BEGIN RAISE EXCEPTION 'could not extend file: No space left on device' \
         USING ERRCODE = 'disk_full'; END $$; \
         CREATE TRIGGER full_sessions BEFORE INSERT ON upload_sessions \
         FOR EACH ROW EXECUTE FUNCTION berth_test_disk_full(); \
         CREATE TRIGGER full_tags BEFORE INSERT OR UPDATE ON tags \
         FOR EACH ROW EXECUTE FUNCTION berth_test_disk_full();",
    );
    c.call(Method::POST, "/v2/pgfull/app/blobs/uploads/")
        .await
        .expect(507, Some("INSUFFICIENT_STORAGE"));
    c.put_manifest("pgfull/app", "v2", OCI_MANIFEST, &image.manifest)
        .await
        .expect(507, Some("INSUFFICIENT_STORAGE"));
    c.get("/v2/pgfull/app/manifests/v1").await.expect(200, None);
    psql("DROP TRIGGER full_sessions ON upload_sessions; DROP TRIGGER full_tags ON tags;");
    c.put_manifest("pgfull/app", "v2", OCI_MANIFEST, &image.manifest)
        .await
        .expect(201, None);
    c.push_blob("pgfull/app", b"after the disk was freed").await;
}

async fn s3_out_of_space_answers_507_and_keeps_resumable_uploads() {
    let s3 = FullS3::start(s3_server().endpoint).await;
    let server = Server::start_with(&[
        ("BERTH_S3_ENDPOINT", s3.endpoint.as_str()),
        ("BERTH_S3_PART_SIZE", "5MiB"),
    ]);
    let c = server.client();
    c.push_image("s3full/app", "v1", unique_seed()).await;
    let data = random_bytes(12 << 20, unique_seed());
    let location = c.start_upload("s3full/app").await;
    c.patch_chunk(&location, &data, 0..6 << 20)
        .await
        .expect(202, None);
    let held = c.upload_offset(&location).await;

    s3.set_full(true);
    // A monolithic push: 507, nothing left behind.
    let blob = random_bytes(3 << 20, unique_seed());
    c.send(
        c.request(Method::POST, "/v2/s3full/app/blobs/uploads/")
            .query(&[("digest", sha256(&blob))])
            .body(blob.clone()),
    )
    .await
    .expect(507, Some("INSUFFICIENT_STORAGE"));
    // A chunk that needs a part: 507, and the upload still holds what it held.
    let a = c.patch_chunk(&location, &data, held..data.len()).await;
    a.expect(507, Some("INSUFFICIENT_STORAGE"));
    assert_eq!(a.header("range"), Some(format!("0-{}", held - 1).as_str()));
    assert_eq!(c.upload_offset(&location).await, held);
    c.get("/v2/s3full/app/manifests/v1").await.expect(200, None);

    s3.set_full(false);
    c.complete_upload("s3full/app", &location, &data, held)
        .await;
    c.push_blob("s3full/app", &blob).await;
}

/// Starting an upload stores nothing (a crash before its session row commits would leave it
/// with no owner): its file is made by its first bytes, and one lost after bytes were recorded
/// is reported, not silently restarted.
async fn an_upload_file_is_made_by_its_first_bytes_and_one_lost_after_them_is_reported() {
    let server = Server::start();
    let c = server.client();
    let file_of = |location: &str| {
        let id = location.rsplit('/').next().unwrap().to_owned();
        server
            .deployment
            .data_dir()
            .join("blobs")
            .join(&id[..2])
            .join(&id)
    };
    let data = random_bytes(3 * 4096 + 17, unique_seed());
    let location = c.start_upload("lost-file").await;
    assert!(
        !file_of(&location).exists(),
        "an upload with no bytes has no file"
    );
    c.complete_upload("lost-file", &location, &data, 0).await;
    assert!(file_of(&location).exists(), "the file is the blob");

    let location = c.start_upload("lost-file").await;
    c.send(
        c.request(Method::PATCH, &location)
            .body(data[..4096].to_vec()),
    )
    .await
    .expect(202, None);
    std::fs::remove_file(file_of(&location)).unwrap();
    c.send(
        c.request(Method::PATCH, &location)
            .body(data[4096..].to_vec()),
    )
    .await
    .expect(404, Some("BLOB_UPLOAD_UNKNOWN"));
}

crate::harness::trials! {
    a_full_disk_answers_507_removes_what_cannot_resume_and_recovers.needs(LocalBlobs);
    a_disk_filled_by_someone_else_answers_507_for_writes_and_keeps_reads.needs(Sqlite);
    a_locked_database_answers_503_within_the_lock_timeout.needs(Database);
    postgres_out_of_disk_answers_507.needs(Postgres);
    s3_out_of_space_answers_507_and_keeps_resumable_uploads.needs(S3);
    an_upload_file_is_made_by_its_first_bytes_and_one_lost_after_them_is_reported.needs(Sqlite);
}
