//! A limit on failed logins per client address: a token bucket that each failure drains and
//! time refills. A client with an empty bucket is refused (`429` with `Retry-After`) before its
//! credentials are even checked, so guessing passwords, or keeping bcrypt busy, is slow.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most clients tracked; past it, the ones whose buckets have refilled are forgotten.
const MAX_CLIENTS: usize = 100_000;

#[derive(Clone, Copy, Debug)]
struct Bucket {
    failures: f64,
    updated: Instant,
}

/// Failed logins per client.
#[derive(Debug)]
pub struct LoginLimiter {
    burst: f64,
    refill: Duration,
    clients: Mutex<HashMap<IpAddr, Bucket>>,
}

impl LoginLimiter {
    /// Allows `burst` failures in a row, then one more per `refill`.
    pub fn new(burst: u32, refill: Duration) -> LoginLimiter {
        LoginLimiter {
            burst: f64::from(burst.max(1)),
            refill: refill.max(Duration::from_millis(1)),
            clients: Mutex::new(HashMap::new()),
        }
    }

    fn settled(&self, bucket: Bucket, now: Instant) -> f64 {
        let recovered =
            now.duration_since(bucket.updated).as_secs_f64() / self.refill.as_secs_f64();
        (bucket.failures - recovered).max(0.0)
    }

    /// `Err(seconds)` while `client` may not try to log in.
    pub fn check(&self, client: Option<IpAddr>) -> Result<(), u64> {
        let Some(ip) = client else { return Ok(()) };
        let now = Instant::now();
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        match clients.get(&ip) {
            Some(bucket) => {
                let failures = self.settled(*bucket, now);
                if failures + 1.0 > self.burst {
                    let wait = (failures + 1.0 - self.burst) * self.refill.as_secs_f64();
                    Err(wait.ceil().max(1.0) as u64)
                } else {
                    Ok(())
                }
            }
            None => Ok(()),
        }
    }

    /// Counts a failed login of `client`.
    pub fn failed(&self, client: Option<IpAddr>) {
        let Some(ip) = client else { return };
        let now = Instant::now();
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if clients.len() >= MAX_CLIENTS {
            clients.retain(|_, b| self.settled(*b, now) > 0.0);
        }
        let failures = clients.get(&ip).map_or(0.0, |b| self.settled(*b, now));
        clients.insert(
            ip,
            Bucket {
                failures: failures + 1.0,
                updated: now,
            },
        );
    }
}

impl Default for LoginLimiter {
    /// Ten failures in a row, then one every six seconds.
    fn default() -> Self {
        LoginLimiter::new(10, Duration::from_secs(6))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_past_the_burst_lock_a_client_out_for_a_while() {
        let limiter = LoginLimiter::new(3, Duration::from_millis(200));
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let b: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.check(Some(a)).is_ok());
            limiter.failed(Some(a));
        }
        let wait = limiter.check(Some(a)).unwrap_err();
        assert!(wait >= 1);
        assert!(
            limiter.check(Some(b)).is_ok(),
            "other clients are not affected"
        );
        assert!(limiter.check(None).is_ok());
        std::thread::sleep(Duration::from_millis(250));
        assert!(limiter.check(Some(a)).is_ok(), "time lets it try again");
    }
}
