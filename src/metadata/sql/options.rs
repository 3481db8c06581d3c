//! Connection settings, with the defaults the `berth` binary's configuration uses too (built
//! with or without a SQL backend).

use std::time::Duration;

/// Connection settings.
#[derive(Clone, Debug)]
pub struct SqlOptions {
    /// Most connections in the pool.
    pub max_connections: u32,
    /// How long a query waits for a connection before the database counts as unavailable.
    pub acquire_timeout: Duration,
    /// How long a statement waits for a lock another process holds (a backup, a migration,
    /// an exclusive transaction) before the database counts as unavailable.
    pub lock_timeout: Duration,
    /// How long a statement may run before it is cancelled (Postgres; SQLite statements are
    /// bounded by the lock timeout).
    pub statement_timeout: Duration,
}

impl Default for SqlOptions {
    fn default() -> Self {
        SqlOptions {
            max_connections: 16,
            acquire_timeout: Duration::from_secs(5),
            lock_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
        }
    }
}
