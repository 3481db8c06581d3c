//! What a database error means for Berth, decided in one place: every sqlx error becomes a
//! [`MetadataError`] through the `From` impl here (so `?` converts it), by its kind and, for
//! errors the database reported, by its code ([`classify`]):
//!
//! - no connection to be had (the pool timed out or is closed) → `Unavailable` (503);
//! - a connection lost mid-statement, and codes of transient trouble (locked, busy, shutting
//!   down, overloaded, a lost serialization race, a deadlock, a timeout) → `Interrupted` (503;
//!   reads are repeated once on a fresh connection, `retrying!`);
//! - out of disk space or quota → `Full` (507);
//! - anything else → `Database` (500).

use crate::metadata::MetadataError;

/// What a database error code means for Berth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ErrorClass {
    /// Out of disk space or quota.
    Full,
    /// Transient: locked, busy, shutting down, overloaded, or a lost serialization race;
    /// the same request can succeed if retried.
    Transient,
    /// Anything else.
    Other,
}

/// Classifies a database error code: Postgres SQLSTATEs (always five characters, often all
/// digits) and SQLite result codes (at most four digits; the primary code is the low byte).
fn classify(code: &str) -> ErrorClass {
    if code.len() < 5
        && let Ok(sqlite) = code.parse::<u32>()
    {
        return match sqlite & 0xff {
            // SQLITE_FULL.
            13 => ErrorClass::Full,
            // SQLITE_BUSY, SQLITE_LOCKED.
            5 | 6 => ErrorClass::Transient,
            _ => ErrorClass::Other,
        };
    }
    match code {
        // disk_full.
        "53100" => ErrorClass::Full,
        // out_of_memory, too_many_connections, configuration_limit_exceeded;
        // admin_shutdown, crash_shutdown, cannot_connect_now;
        // serialization_failure, deadlock_detected; lock_not_available; query_canceled
        // (statement or lock timeout); connection failures (class 08).
        "53200" | "53300" | "53400" | "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "55P03"
        | "57014" => ErrorClass::Transient,
        c if c.starts_with("08") => ErrorClass::Transient,
        _ => ErrorClass::Other,
    }
}

impl From<sqlx::Error> for MetadataError {
    fn from(e: sqlx::Error) -> MetadataError {
        match e {
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                MetadataError::Unavailable(e.to_string())
            }
            sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::Protocol(_) => {
                MetadataError::Interrupted(e.to_string())
            }
            sqlx::Error::Database(ref db) => match db.code().as_deref().map(classify) {
                Some(ErrorClass::Full) => MetadataError::Full(e.to_string()),
                Some(ErrorClass::Transient) => MetadataError::Interrupted(e.to_string()),
                _ => MetadataError::Database(e.to_string()),
            },
            other => MetadataError::Database(other.to_string()),
        }
    }
}

/// A failed migration: a statement's error is classified like any other; anything else
/// (a migration missing or changed since it was applied) is a `Database` error.
pub(super) fn migration_failed(e: sqlx::migrate::MigrateError) -> MetadataError {
    match e {
        sqlx::migrate::MigrateError::Execute(e) => e.into(),
        other => MetadataError::Database(format!("migration failed: {other}")),
    }
}

#[cfg(test)]
mod tests {
    use super::{ErrorClass, classify};

    #[test]
    fn error_codes_are_classified() {
        assert_eq!(classify("13"), ErrorClass::Full);
        assert_eq!(classify("5"), ErrorClass::Transient);
        assert_eq!(
            classify("517"),
            ErrorClass::Transient,
            "SQLITE_BUSY_SNAPSHOT"
        );
        assert_eq!(
            classify("262"),
            ErrorClass::Transient,
            "SQLITE_LOCKED_SHAREDCACHE"
        );
        assert_eq!(
            classify("2067"),
            ErrorClass::Other,
            "SQLITE_CONSTRAINT_UNIQUE"
        );
        assert_eq!(classify("53100"), ErrorClass::Full);
        assert_eq!(classify("57P01"), ErrorClass::Transient);
        assert_eq!(classify("08006"), ErrorClass::Transient);
        assert_eq!(classify("23505"), ErrorClass::Other);
        assert_eq!(classify("40001"), ErrorClass::Transient);
        assert_eq!(
            classify("40P01"),
            ErrorClass::Transient,
            "deadlock_detected"
        );
        assert_eq!(
            classify("55P03"),
            ErrorClass::Transient,
            "lock_not_available"
        );
    }
}
