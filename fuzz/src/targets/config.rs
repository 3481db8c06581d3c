//! The `berth` binary's TOML configuration (`src/config.rs`, included here by path since it
//! is a module of the binary, not of the library): reading any file and resolving it never
//! panics, and a configuration that resolves keeps the limits `resolve` promises.

use std::time::Duration;

#[allow(dead_code, unexpected_cfgs, unused_imports)]
#[path = "../../../src/config.rs"]
mod settings;

use settings::{Settings, StorageKind};

const MIB: u64 = 1 << 20;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(settings) = toml::from_str::<Settings>(text) else {
        return;
    };
    assert!(settings.config.is_none(), "config is not a file key");
    let resolved = settings.clone().resolve();
    let Ok(config) = resolved else {
        return;
    };
    assert!((64 * 1024..=1024 * MIB).contains(&(config.fs_part_size as u64)));
    if config.storage == StorageKind::S3 {
        assert!(config.s3.bucket.as_deref().is_some_and(|b| !b.is_empty()));
        assert!((5 * MIB..=5 * 1024 * MIB).contains(&config.s3.part_size));
    }
    if config.storage == StorageKind::Memory {
        assert!(config.database_url.is_none());
    }
    assert!(config.registry.upload_buffers >= 1);
    assert!(config.s3.upload_concurrency >= 1);
    assert!(config.auth.token_lifetime >= Duration::from_secs(60));
    assert!(config.registry.maintenance_interval >= Duration::from_millis(100));
    assert!(config.db_lock_timeout >= Duration::from_millis(10));
    assert!(config.http_header_timeout >= Duration::from_millis(100));
    assert!(config.database_url.as_deref() != Some(""));
    let _ = config.effective_database_url();
    // Resolving is a function of the settings.
    let again = settings.resolve().expect("resolved once");
    assert_eq!(format!("{again:?}"), format!("{config:?}"));
}
