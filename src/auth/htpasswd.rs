//! Users and passwords from an htpasswd file with bcrypt hashes (`htpasswd -B`).
//!
//! bcrypt is slow on purpose, so a successful check is remembered for a minute (keyed by a
//! SHA-256 of the user and password, never the password itself): clients that send Basic
//! credentials with every request do not pay it each time. The file is read again when it
//! changes, checked at most every few seconds, so users can be added or removed without a
//! restart (a removed user's remembered check ends with the reload).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest as _, Sha256};

use super::cache::TtlCache;

/// How long a successful password check is remembered.
const REMEMBER: Duration = Duration::from_secs(60);
/// A bcrypt hash (cost 10) no password is known for, checked against when the user is
/// unknown.
const UNKNOWN_USER_HASH: &str = "$2b$10$90KrSTaSMs3mHyuvzEYO8O2OTYxHCXtSk7ls4iVPi7CDjxp2wx5Vy";
/// How often the file's modification time is looked at.
const RELOAD_CHECK: Duration = Duration::from_secs(5);

/// Why an htpasswd file was refused.
#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    /// The file cannot be read.
    #[error("reading htpasswd file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// A line is not `user:bcrypt-hash`.
    #[error("htpasswd file {path}, line {line}: {message}")]
    Invalid {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        message: String,
    },
}

#[derive(Debug)]
struct Loaded {
    users: HashMap<String, String>,
    modified: Option<SystemTime>,
    checked: Instant,
}

/// The users of an htpasswd file.
pub struct Htpasswd {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    remembered: TtlCache<()>,
}

impl std::fmt::Debug for Htpasswd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Htpasswd")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// The users of htpasswd text (`user:bcrypt-hash` lines; blank lines and `#` comments are
/// skipped), user name to hash, as [`Htpasswd::load`] reads them; `path` only names the file
/// in errors.
pub fn parse(path: &Path, text: &str) -> Result<HashMap<String, String>, HtpasswdError> {
    let mut users = HashMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |message: String| HtpasswdError::Invalid {
            path: path.display().to_string(),
            line: i + 1,
            message,
        };
        let (user, hash) = line
            .split_once(':')
            .ok_or_else(|| invalid("expected user:hash".into()))?;
        if user.is_empty() {
            return Err(invalid("empty user name".into()));
        }
        if !(hash.starts_with("$2y$") || hash.starts_with("$2b$") || hash.starts_with("$2a$")) {
            return Err(invalid(format!(
                "user {user:?} has a hash that is not bcrypt; only bcrypt is accepted (create it with `htpasswd -B`)"
            )));
        }
        users.insert(user.to_owned(), hash.to_owned());
    }
    Ok(users)
}

fn read(path: &Path) -> Result<(String, Option<SystemTime>), HtpasswdError> {
    let modified = std::fs::metadata(path).and_then(|m| m.modified()).ok();
    let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
        path: path.display().to_string(),
        source,
    })?;
    Ok((text, modified))
}

impl Htpasswd {
    /// Reads an htpasswd file; every entry must be a bcrypt hash.
    pub fn load(path: &Path) -> Result<Htpasswd, HtpasswdError> {
        let (text, modified) = read(path)?;
        let users = parse(path, &text)?;
        Ok(Htpasswd {
            path: path.to_owned(),
            loaded: RwLock::new(Loaded {
                users,
                modified,
                checked: Instant::now(),
            }),
            remembered: TtlCache::new(REMEMBER, 10_000),
        })
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.read_loaded().users.len()
    }

    /// Whether the file has no users.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read_loaded(&self) -> std::sync::RwLockReadGuard<'_, Loaded> {
        self.loaded.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads the file again if it changed; a file that became invalid is logged and the
    /// users loaded before are kept.
    fn refresh(&self) {
        if self.read_loaded().checked.elapsed() < RELOAD_CHECK {
            return;
        }
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        if loaded.checked.elapsed() < RELOAD_CHECK {
            return;
        }
        loaded.checked = Instant::now();
        let modified = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        if modified == loaded.modified {
            return;
        }
        match read(&self.path)
            .and_then(|(text, modified)| Ok((parse(&self.path, &text)?, modified)))
        {
            Ok((users, modified)) => {
                tracing::info!(path = %self.path.display(), users = users.len(), "htpasswd file reloaded");
                loaded.users = users;
                loaded.modified = modified;
                self.remembered.clear();
            }
            Err(e) => {
                tracing::error!(error = %e, "htpasswd file changed but cannot be used; keeping the users loaded before")
            }
        }
    }

    /// The stored hash of `user`, if the user exists.
    pub fn hash_of(&self, user: &str) -> Option<String> {
        self.refresh();
        self.read_loaded().users.get(user).cloned()
    }

    /// Whether `password` is `user`'s. Runs bcrypt on a blocking thread unless a recent
    /// success is remembered.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        self.refresh();
        let key: [u8; 32] = {
            let mut h = Sha256::new();
            h.update(user.as_bytes());
            h.update([0u8]);
            h.update(password.as_bytes());
            h.finalize().into()
        };
        if self.remembered.get(&key).is_some() {
            return true;
        }
        let known = self.read_loaded().users.get(user).cloned();
        // An unknown user costs a bcrypt run too, so the time taken does not tell which user
        // names exist.
        let hash = known
            .clone()
            .unwrap_or_else(|| UNKNOWN_USER_HASH.to_owned());
        let password = password.to_owned();
        let valid = tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or(false)
            && known.is_some();
        if valid {
            self.remembered
                .insert(key, Arc::new(()), Instant::now() + REMEMBER);
        }
        valid
    }
}
