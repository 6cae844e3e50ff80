//! Two small in-memory tables that keep Basic authentication cheap and
//! brute force slow: a cache of recent successful bcrypt checks, keyed by
//! a keyed hash of `user:password` (so the table never holds a password
//! or an unsalted hash of one), and a failed-login limiter per (user,
//! client address).

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// How long a successful bcrypt check is remembered.
pub const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);
/// Entries kept at most; beyond, expired ones are dropped, then all.
const LOGIN_CACHE_MAX: usize = 10_000;
/// Failed logins allowed per (user, client address) within the window.
pub const MAX_FAILURES: u32 = 5;
/// The window; once over the limit, the pair is refused until it ends.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const LIMITER_MAX: usize = 100_000;

/// Successful logins, remembered for [`LOGIN_CACHE_TTL`].
pub struct LoginCache {
    key: [u8; 32],
    entries: HashMap<[u8; 32], Instant>,
}

impl LoginCache {
    pub fn new() -> LoginCache {
        let mut key = [0u8; 32];
        if aws_lc_rs::rand::fill(&mut key).is_err() {
            // Without an RNG the table is still keyed per process.
            key = Sha256::digest(format!("{:?}{}", Instant::now(), std::process::id()).as_bytes())
                .into();
        }
        LoginCache {
            key,
            entries: HashMap::new(),
        }
    }

    /// The table key of a credential pair.
    pub fn key_of(&self, user: &str, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update((user.len() as u64).to_be_bytes());
        h.update(user.as_bytes());
        h.update(password.as_bytes());
        h.update(self.key);
        h.finalize().into()
    }

    /// Whether this pair passed a bcrypt check less than the TTL ago.
    pub fn hit(&self, k: &[u8; 32], now: Instant) -> bool {
        self.entries
            .get(k)
            .is_some_and(|at| now.duration_since(*at) < LOGIN_CACHE_TTL)
    }

    pub fn remember(&mut self, k: [u8; 32], now: Instant) {
        if self.entries.len() >= LOGIN_CACHE_MAX {
            self.entries
                .retain(|_, at| now.duration_since(*at) < LOGIN_CACHE_TTL);
            if self.entries.len() >= LOGIN_CACHE_MAX {
                self.entries.clear();
            }
        }
        self.entries.insert(k, now);
    }

    /// Forgets everything (the htpasswd file changed).
    pub fn clear(&mut self) {
        self.entries.clear();
    }
}

impl Default for LoginCache {
    fn default() -> Self {
        Self::new()
    }
}

struct Window {
    started: Instant,
    failures: u32,
}

/// Failed logins per (user, client address).
#[derive(Default)]
pub struct FailureLimiter {
    windows: HashMap<(String, IpAddr), Window>,
}

impl FailureLimiter {
    pub fn new() -> FailureLimiter {
        FailureLimiter::default()
    }

    /// `Some(wait)` when this pair is over the limit.
    pub fn blocked(&self, user: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        let w = self.windows.get(&(user.to_string(), ip))?;
        let elapsed = now.duration_since(w.started);
        if w.failures >= MAX_FAILURES && elapsed < FAILURE_WINDOW {
            Some(FAILURE_WINDOW - elapsed)
        } else {
            None
        }
    }

    /// Records a failure; returns the failures counted in this window.
    pub fn fail(&mut self, user: &str, ip: IpAddr, now: Instant) -> u32 {
        if self.windows.len() >= LIMITER_MAX {
            self.windows
                .retain(|_, w| now.duration_since(w.started) < FAILURE_WINDOW);
        }
        let key = (user.chars().take(256).collect::<String>(), ip);
        let w = self.windows.entry(key).or_insert(Window {
            started: now,
            failures: 0,
        });
        if now.duration_since(w.started) >= FAILURE_WINDOW {
            w.started = now;
            w.failures = 0;
        }
        w.failures = w.failures.saturating_add(1);
        w.failures
    }

    /// A success clears the pair's failures.
    pub fn succeed(&mut self, user: &str, ip: IpAddr) {
        self.windows.remove(&(user.to_string(), ip));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn cache_expires_and_is_keyed() {
        let mut c = LoginCache::new();
        let now = Instant::now();
        let k = c.key_of("alice", "pw");
        assert_ne!(k, c.key_of("alice", "pw2"));
        assert_ne!(c.key_of("ab", "c"), c.key_of("a", "bc"));
        assert!(!c.hit(&k, now));
        c.remember(k, now);
        assert!(c.hit(&k, now + Duration::from_secs(59)));
        assert!(!c.hit(&k, now + LOGIN_CACHE_TTL));
        c.clear();
        assert!(!c.hit(&k, now));
    }

    #[test]
    fn limiter_blocks_after_max_failures() {
        let mut l = FailureLimiter::new();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let now = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            l.fail("bob", ip, now);
        }
        assert!(l.blocked("bob", ip, now).is_none());
        l.fail("bob", ip, now);
        let wait = l.blocked("bob", ip, now + Duration::from_secs(10)).unwrap();
        assert_eq!(wait, FAILURE_WINDOW - Duration::from_secs(10));
        assert!(l.blocked("bob", other, now).is_none());
        assert!(l.blocked("alice", ip, now).is_none());
        assert!(l.blocked("bob", ip, now + FAILURE_WINDOW).is_none());
        l.succeed("bob", ip);
        assert!(l.blocked("bob", ip, now).is_none());
    }
}
