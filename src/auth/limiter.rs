//! The small in-memory tables that keep Basic authentication cheap and
//! bound the bcrypt work a caller without a password can cause:
//!
//! - [`LoginCache`]: recent successful checks, and recent failed ones (a
//!   negative cache: the same wrong password again costs no bcrypt), keyed
//!   by a keyed hash of `user:password` (so the table never holds a
//!   password or an unsalted hash of one);
//! - [`FailureLimiter`]: failed logins per (user, client address), and
//!   failed bcrypt verifications per client address;
//! - [`AddressSlots`]: bcrypt verifications running at once per client
//!   address, so one address can never hold the whole bcrypt pool;
//! - [`VerifyTimer`]: how long a verification typically takes, which is
//!   how long an unknown user waits (asynchronously, without bcrypt).
//!
//! Client addresses are keyed as [`client_key`] says: an IPv6 client by
//! its /64.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// How long a successful bcrypt check is remembered.
pub const LOGIN_CACHE_TTL: Duration = Duration::from_secs(60);
/// How long a failed one is remembered.
pub const FAILED_CACHE_TTL: Duration = Duration::from_secs(60);
/// Entries kept at most per table; beyond, expired ones are dropped, then all.
const LOGIN_CACHE_MAX: usize = 10_000;
/// Failed logins allowed per (user, client address) within the window.
pub const MAX_FAILURES: u32 = 5;
/// Failed bcrypt verifications allowed per client address within the
/// window (distinct wrong passwords of known users); over it, every login
/// from the address that is not in the cache is refused until the window
/// ends. Unknown users cost no verification and do not count.
pub const MAX_VERIFIED_FAILURES_PER_ADDRESS: u32 = 20;
/// The window; once over a limit, the refusal lasts until it ends.
pub const FAILURE_WINDOW: Duration = Duration::from_secs(60);
const LIMITER_MAX: usize = 100_000;
/// bcrypt verifications running at once for one client address.
pub const BCRYPT_PER_ADDRESS: usize = 2;
/// Idle per-address semaphores are dropped once there are this many.
const SLOTS_SWEEP_AT: usize = 1024;

/// The key of a client address in these tables: IPv4 as is (and
/// IPv4-mapped IPv6 as IPv4), IPv6 by its /64, which one client usually
/// holds whole.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut s = v6.segments();
                s[4..].fill(0);
                IpAddr::V6(Ipv6Addr::from(s))
            }
        },
    }
}

/// Drops expired entries of a full table, then everything if it is still
/// full (so an insert never pays a scan twice in a row).
fn make_room<K, V>(map: &mut HashMap<K, V>, max: usize, live: impl FnMut(&K, &mut V) -> bool) {
    if map.len() >= max {
        map.retain(live);
        if map.len() >= max {
            map.clear();
        }
    }
}

/// Successful and failed checks, remembered for [`LOGIN_CACHE_TTL`] and
/// [`FAILED_CACHE_TTL`].
pub struct LoginCache {
    key: [u8; 32],
    entries: HashMap<[u8; 32], Instant>,
    failed: HashMap<[u8; 32], Instant>,
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
            failed: HashMap::new(),
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
        make_room(&mut self.entries, LOGIN_CACHE_MAX, |_, at| {
            now.duration_since(*at) < LOGIN_CACHE_TTL
        });
        self.failed.remove(&k);
        self.entries.insert(k, now);
    }

    /// Whether this pair failed a bcrypt check less than the TTL ago.
    pub fn failed_recently(&self, k: &[u8; 32], now: Instant) -> bool {
        self.failed
            .get(k)
            .is_some_and(|at| now.duration_since(*at) < FAILED_CACHE_TTL)
    }

    pub fn remember_failure(&mut self, k: [u8; 32], now: Instant) {
        make_room(&mut self.failed, LOGIN_CACHE_MAX, |_, at| {
            now.duration_since(*at) < FAILED_CACHE_TTL
        });
        self.failed.insert(k, now);
    }

    /// Forgets everything (the htpasswd file changed).
    pub fn clear(&mut self) {
        self.entries.clear();
        self.failed.clear();
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

impl Window {
    fn new(now: Instant) -> Window {
        Window {
            started: now,
            failures: 0,
        }
    }

    fn live(&self, now: Instant) -> bool {
        now.duration_since(self.started) < FAILURE_WINDOW
    }

    /// `Some(wait)` while `limit` failures are counted in this window.
    fn blocked(&self, limit: u32, now: Instant) -> Option<Duration> {
        let elapsed = now.duration_since(self.started);
        (self.failures >= limit && elapsed < FAILURE_WINDOW).then(|| FAILURE_WINDOW - elapsed)
    }

    fn fail(&mut self, now: Instant) -> u32 {
        if !self.live(now) {
            *self = Window::new(now);
        }
        self.failures = self.failures.saturating_add(1);
        self.failures
    }
}

/// Failed logins per (user, client address), and failed bcrypt
/// verifications per client address. Unknown user names are kept in a
/// table of their own, so spraying random names (which costs the sprayer
/// nothing) can never flush the windows of real users.
#[derive(Default)]
pub struct FailureLimiter {
    known: HashMap<(String, IpAddr), Window>,
    unknown: HashMap<(String, IpAddr), Window>,
    addresses: HashMap<IpAddr, Window>,
}

fn pair(user: &str, ip: IpAddr) -> (String, IpAddr) {
    (user.chars().take(256).collect(), client_key(ip))
}

impl FailureLimiter {
    pub fn new() -> FailureLimiter {
        FailureLimiter::default()
    }

    /// `Some(wait)` when this pair is over the limit.
    pub fn blocked(&self, user: &str, ip: IpAddr, now: Instant) -> Option<Duration> {
        let k = pair(user, ip);
        [&self.known, &self.unknown]
            .iter()
            .filter_map(|t| t.get(&k))
            .find_map(|w| w.blocked(MAX_FAILURES, now))
    }

    /// `Some(wait)` when this address failed too many verifications.
    pub fn address_blocked(&self, ip: IpAddr, now: Instant) -> Option<Duration> {
        self.addresses
            .get(&client_key(ip))?
            .blocked(MAX_VERIFIED_FAILURES_PER_ADDRESS, now)
    }

    /// Records a failure of a pair (`known`: the user exists); returns the
    /// failures counted in this window.
    pub fn fail(&mut self, user: &str, ip: IpAddr, known: bool, now: Instant) -> u32 {
        let table = if known {
            &mut self.known
        } else {
            &mut self.unknown
        };
        make_room(table, LIMITER_MAX, |_, w| w.live(now));
        table
            .entry(pair(user, ip))
            .or_insert_with(|| Window::new(now))
            .fail(now)
    }

    /// Records a failed bcrypt verification from `ip`.
    pub fn fail_verification(&mut self, ip: IpAddr, now: Instant) -> u32 {
        make_room(&mut self.addresses, LIMITER_MAX, |_, w| w.live(now));
        self.addresses
            .entry(client_key(ip))
            .or_insert_with(|| Window::new(now))
            .fail(now)
    }

    /// A success clears the pair's failures.
    pub fn succeed(&mut self, user: &str, ip: IpAddr) {
        self.known.remove(&pair(user, ip));
    }
}

/// bcrypt verifications running at once per client address.
#[derive(Default)]
pub struct AddressSlots {
    by_address: Mutex<HashMap<IpAddr, Arc<tokio::sync::Semaphore>>>,
}

impl AddressSlots {
    /// Waits for one of the address's [`BCRYPT_PER_ADDRESS`] slots.
    pub async fn acquire(&self, ip: IpAddr) -> Option<tokio::sync::OwnedSemaphorePermit> {
        let sem = {
            let mut m = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
            if m.len() >= SLOTS_SWEEP_AT {
                // Clones are made under this lock: an entry only the map
                // holds is idle.
                m.retain(|_, s| Arc::strong_count(s) > 1);
            }
            m.entry(client_key(ip))
                .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(BCRYPT_PER_ADDRESS)))
                .clone()
        };
        sem.acquire_owned().await.ok()
    }
}

/// A running estimate of one bcrypt verification's duration (a moving
/// average of the last ones, seeded at start-up).
pub struct VerifyTimer {
    micros: AtomicU64,
}

impl VerifyTimer {
    pub fn new(seed: Duration) -> VerifyTimer {
        VerifyTimer {
            micros: AtomicU64::new(seed.as_micros().min(u64::MAX as u128) as u64),
        }
    }

    pub fn typical(&self) -> Duration {
        Duration::from_micros(self.micros.load(Ordering::Relaxed))
    }

    pub fn reset(&self, took: Duration) {
        let micros = took.as_micros().min(u64::MAX as u128) as u64;
        self.micros.store(micros, Ordering::Relaxed);
    }

    pub fn record(&self, took: Duration) {
        let sample = took.as_micros().min(u64::MAX as u128) as u64;
        // Races between two updates lose one sample: harmless for an average.
        let old = self.micros.load(Ordering::Relaxed);
        let new = old - old / 8 + sample / 8;
        self.micros.store(new, Ordering::Relaxed);
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
    fn failed_pairs_are_remembered_until_a_success_or_the_ttl() {
        let mut c = LoginCache::new();
        let now = Instant::now();
        let k = c.key_of("alice", "wrong");
        c.remember_failure(k, now);
        assert!(c.failed_recently(&k, now + Duration::from_secs(1)));
        assert!(!c.failed_recently(&c.key_of("alice", "other"), now));
        assert!(!c.failed_recently(&k, now + FAILED_CACHE_TTL));
        c.remember(k, now);
        assert!(!c.failed_recently(&k, now));
    }

    #[test]
    fn limiter_blocks_after_max_failures() {
        let mut l = FailureLimiter::new();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        let now = Instant::now();
        for _ in 0..MAX_FAILURES - 1 {
            l.fail("bob", ip, true, now);
        }
        assert!(l.blocked("bob", ip, now).is_none());
        l.fail("bob", ip, true, now);
        let wait = l.blocked("bob", ip, now + Duration::from_secs(10)).unwrap();
        assert_eq!(wait, FAILURE_WINDOW - Duration::from_secs(10));
        assert!(l.blocked("bob", other, now).is_none());
        assert!(l.blocked("alice", ip, now).is_none());
        assert!(l.blocked("bob", ip, now + FAILURE_WINDOW).is_none());
        l.succeed("bob", ip);
        assert!(l.blocked("bob", ip, now).is_none());
        // Unknown names are limited the same way (no enumeration by 429).
        for _ in 0..MAX_FAILURES {
            l.fail("nobody", ip, false, now);
        }
        assert!(l.blocked("nobody", ip, now).is_some());
    }

    #[test]
    fn a_flood_of_unknown_names_never_flushes_a_real_users_window() {
        let mut l = FailureLimiter::new();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let now = Instant::now();
        for _ in 0..MAX_FAILURES {
            l.fail("bob", ip, true, now);
        }
        for i in 0..LIMITER_MAX + 10 {
            l.fail(&format!("nobody-{i}"), ip, false, now);
        }
        assert!(l.unknown.len() <= LIMITER_MAX);
        assert!(l.blocked("bob", ip, now).is_some());
    }

    #[test]
    fn addresses_are_limited_on_failed_verifications() {
        let mut l = FailureLimiter::new();
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8::ffff".parse().unwrap();
        let now = Instant::now();
        for _ in 0..MAX_VERIFIED_FAILURES_PER_ADDRESS - 1 {
            l.fail_verification(ip, now);
        }
        assert!(l.address_blocked(ip, now).is_none());
        l.fail_verification(same_64, now);
        assert!(l.address_blocked(ip, now).is_some());
        assert!(l.address_blocked(ip, now + FAILURE_WINDOW).is_none());
        assert!(l
            .address_blocked("2001:db8:0:1::1".parse().unwrap(), now)
            .is_none());
    }

    #[tokio::test]
    async fn one_address_holds_at_most_its_slots() {
        let s = AddressSlots::default();
        let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let mut held = Vec::new();
        for _ in 0..BCRYPT_PER_ADDRESS {
            held.push(s.acquire(ip).await.unwrap());
        }
        let more = tokio::time::timeout(Duration::from_millis(50), s.acquire(ip)).await;
        assert!(more.is_err(), "a third slot for the same address");
        let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        assert!(s.acquire(other).await.is_some());
        held.pop();
        assert!(s.acquire(ip).await.is_some());
    }

    #[test]
    fn the_timer_follows_recent_verifications() {
        let t = VerifyTimer::new(Duration::from_millis(80));
        assert_eq!(t.typical(), Duration::from_millis(80));
        for _ in 0..64 {
            t.record(Duration::from_millis(200));
        }
        let now = t.typical();
        assert!(now > Duration::from_millis(190) && now <= Duration::from_millis(200));
        t.reset(Duration::from_millis(5));
        assert_eq!(t.typical(), Duration::from_millis(5));
    }
}
