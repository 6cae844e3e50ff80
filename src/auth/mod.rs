//! Authentication and authorization, free of HTTP: who the users are
//! ([`htpasswd`]), what they may do ([`policy`]), the bearer tokens of the
//! Docker token flow ([`token`]), and the caches and limits that keep
//! Basic authentication cheap and brute force slow ([`limiter`]).
//!
//! Only a known user's password is ever checked with bcrypt: an unknown
//! user name waits as long as a check typically takes, without a CPU or a
//! bcrypt slot, so neither the answer nor its timing tells which names
//! exist, and a caller spraying names cannot take the pool from real
//! users. The checks a client address can run at once and the failed
//! checks it may cause per minute are capped (see [`limiter`]).
//!
//! [`Auth`] ties them together; the HTTP layer (`http::auth`) calls it
//! from one middleware and from the `/token` endpoint. Authentication is
//! on when `BPF_REGISTRY_AUTH_HTPASSWD` is set. The user file and the
//! policy are re-read when they change on disk (checked every
//! [`RELOAD_INTERVAL`]) or on SIGHUP; a reload that fails keeps what was
//! loaded before and logs why. No password, hash or token is ever logged.

pub mod htpasswd;
pub mod limiter;
pub mod policy;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, Weak};
use std::time::{Duration, Instant, SystemTime};

pub use htpasswd::Users;
pub use policy::{Action, Actions, HostAction, HostActions, Policy};
pub use token::{Claims, ResourceActions, TokenError, TokenKey};

use crate::oci::RepoName;
use limiter::{AddressSlots, FailureLimiter, LoginCache, VerifyTimer};
use sha2::{Digest as _, Sha256};

/// How often the user and policy files are checked for changes.
pub const RELOAD_INTERVAL: Duration = Duration::from_secs(2);
/// Lifetime of a refresh token (`offline_token=true`, `access_type=offline`).
pub const REFRESH_TTL: Duration = Duration::from_secs(24 * 3600);
/// bcrypt checks running at once; more wait (each takes a core for tens of
/// milliseconds). One client address gets at most
/// [`limiter::BCRYPT_PER_ADDRESS`] of them.
const BCRYPT_PARALLEL: usize = 4;
/// Verified access tokens remembered at most.
const VERIFIED_CACHE_MAX: usize = 10_000;

/// What authentication needs from the configuration.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    pub htpasswd: PathBuf,
    pub policy: Option<PathBuf>,
    pub token_key: Option<PathBuf>,
    pub token_ttl: Duration,
    pub data_dir: PathBuf,
}

/// Why a Basic login was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LoginError {
    /// Unknown user or wrong password (the caller cannot tell which).
    Invalid,
    /// Too many failures for this user from this address; retry after.
    RateLimited(Duration),
}

/// A scope asked of the token endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    /// `repository:<name>:<actions>`
    Repository(RepoName, Actions),
    /// `registry:catalog:*`
    Catalog,
}

/// Parses one or more space-separated scopes; unknown types, invalid
/// names and unknown actions are skipped (they simply grant nothing).
pub fn parse_scopes(s: &str) -> Vec<Scope> {
    let mut out = Vec::new();
    for one in s.split_whitespace() {
        let Some((kind, rest)) = one.split_once(':') else {
            continue;
        };
        let Some((name, actions)) = rest.rsplit_once(':') else {
            continue;
        };
        match kind {
            "repository" => {
                let Ok(repo) = RepoName::parse(name) else {
                    continue;
                };
                let set: Actions = actions
                    .split(',')
                    .flat_map(|a| {
                        if a == "*" {
                            Action::ALL.to_vec()
                        } else {
                            Action::parse(a).into_iter().collect()
                        }
                    })
                    .collect();
                out.push(Scope::Repository(repo, set));
            }
            "registry" if name == "catalog" => out.push(Scope::Catalog),
            _ => {}
        }
    }
    out
}

/// A freshly signed access token.
#[derive(Debug, Clone)]
pub struct Issued {
    pub token: String,
    pub expires_in: u64,
    /// RFC 3339.
    pub issued_at: String,
    pub access: Vec<ResourceActions>,
}

/// `(modified, length, inode)`: enough to notice an edit or a replace.
type Stamp = Option<(SystemTime, u64, u64)>;

fn stamp(path: &Path) -> Stamp {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let ino = 0;
    Some((m.modified().ok()?, m.len(), ino))
}

fn read_users(path: &Path) -> Result<Users, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("BPF_REGISTRY_AUTH_HTPASSWD {}: {e}", path.display()))?;
    Users::parse(&text).map_err(|e| format!("BPF_REGISTRY_AUTH_HTPASSWD {}: {e}", path.display()))
}

fn read_policy(path: Option<&Path>) -> Result<Policy, String> {
    let Some(path) = path else {
        return Ok(Policy::allow_authenticated());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("BPF_REGISTRY_AUTH_POLICY {}: {e}", path.display()))?;
    Policy::parse(&text).map_err(|e| format!("BPF_REGISTRY_AUTH_POLICY {}: {e}", path.display()))
}

/// How long one bcrypt check at the file's highest cost takes here (a
/// hash costs what a verification costs).
fn time_one_check(users: &Users) -> Result<Duration, String> {
    let started = Instant::now();
    bcrypt::hash("bpf-registry-timing", users.max_cost().clamp(4, 31))
        .map_err(|e| format!("cannot prepare bcrypt: {e}"))?;
    Ok(started.elapsed())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Users, policy, token key, caches: everything a request is checked
/// against.
pub struct Auth {
    settings: AuthSettings,
    users: RwLock<Arc<Users>>,
    policy: RwLock<Arc<Policy>>,
    /// Bumped when the user file is reloaded: a bcrypt check that started
    /// before is not cached.
    generation: AtomicU64,
    stamps: Mutex<(Stamp, Stamp)>,
    key: TokenKey,
    cache: Mutex<LoginCache>,
    limiter: Mutex<FailureLimiter>,
    /// How long a check takes: an unknown user waits that long.
    verify_timer: VerifyTimer,
    bcrypt_slots: tokio::sync::Semaphore,
    address_slots: AddressSlots,
    /// Access tokens that verified, by SHA-256 of the token.
    verified: Mutex<HashMap<[u8; 32], Arc<Claims>>>,
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auth")
            .field("htpasswd", &self.settings.htpasswd)
            .field("policy", &self.settings.policy)
            .field("kid", &self.key.kid())
            .finish()
    }
}

impl Auth {
    /// Reads the user file, the policy and the token key (generating it
    /// when needed). Any error stops the start-up; it names the variable,
    /// the file and the line.
    pub fn load(settings: AuthSettings) -> Result<Auth, String> {
        let users = read_users(&settings.htpasswd)?;
        let policy = read_policy(settings.policy.as_deref())?;
        let (key, key_path, generated) =
            TokenKey::load_or_create(settings.token_key.as_deref(), &settings.data_dir).map_err(
                |e| {
                    if settings.token_key.is_some() {
                        format!("BPF_REGISTRY_TOKEN_KEY: {e}")
                    } else {
                        e.to_string()
                    }
                },
            )?;
        let verify_timer = VerifyTimer::new(time_one_check(&users)?);
        let (groups, grants, anonymous) = policy.summary();
        tracing::info!(
            users = users.len(),
            policy = if policy.is_default() { "default: authenticated users may do everything" } else { "file" },
            groups,
            grants,
            anonymous,
            token_key = %key_path.display(),
            token_key_generated = generated,
            kid = key.kid(),
            "authentication on"
        );
        if policy.anonymous_may_write() {
            tracing::warn!("the policy lets anonymous callers push, delete or report hosts");
        }
        let stamps = (
            stamp(&settings.htpasswd),
            settings.policy.as_deref().and_then(stamp),
        );
        Ok(Auth {
            users: RwLock::new(Arc::new(users)),
            policy: RwLock::new(Arc::new(policy)),
            generation: AtomicU64::new(0),
            stamps: Mutex::new(stamps),
            key,
            cache: Mutex::new(LoginCache::new()),
            limiter: Mutex::new(FailureLimiter::new()),
            verify_timer,
            bcrypt_slots: tokio::sync::Semaphore::new(BCRYPT_PARALLEL),
            address_slots: AddressSlots::default(),
            verified: Mutex::new(HashMap::new()),
            settings,
        })
    }

    pub fn token_ttl(&self) -> Duration {
        self.settings.token_ttl
    }

    pub fn token_key(&self) -> &TokenKey {
        &self.key
    }

    fn users(&self) -> Arc<Users> {
        self.users.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn policy(&self) -> Arc<Policy> {
        self.policy
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Re-reads the files that changed (all of them when `force`). A file
    /// that no longer parses is reported and the previous version kept.
    pub fn reload(&self, force: bool) {
        let (old_users, old_policy) = *lock(&self.stamps);
        let new_users = stamp(&self.settings.htpasswd);
        let new_policy = self.settings.policy.as_deref().and_then(stamp);
        if force || new_users != old_users {
            match read_users(&self.settings.htpasswd) {
                Ok(u) => {
                    let n = u.len();
                    // The cost may have changed: start the estimate over.
                    if let Ok(took) = time_one_check(&u) {
                        self.verify_timer.reset(took);
                    }
                    *self.users.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(u);
                    self.generation.fetch_add(1, Ordering::SeqCst);
                    lock(&self.cache).clear();
                    tracing::info!(users = n, "user file reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "user file not reloaded; keeping the previous one")
                }
            }
            lock(&self.stamps).0 = new_users;
        }
        if self.settings.policy.is_some() && (force || new_policy != old_policy) {
            match read_policy(self.settings.policy.as_deref()) {
                Ok(p) => {
                    *self.policy.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(p);
                    tracing::info!("policy reloaded");
                }
                Err(e) => {
                    tracing::error!(error = %e, "policy not reloaded; keeping the previous one")
                }
            }
            lock(&self.stamps).1 = new_policy;
        }
    }

    /// Watches the files (and SIGHUP) until the `Auth` is dropped.
    pub fn spawn_watcher(self: &Arc<Self>) {
        let weak: Weak<Auth> = Arc::downgrade(self);
        tokio::spawn(async move {
            #[cfg(unix)]
            let mut hup =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(RELOAD_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                #[cfg(unix)]
                let forced = match hup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = tick.tick() => false,
                        _ = h.recv() => true,
                    },
                    None => {
                        tick.tick().await;
                        false
                    }
                };
                #[cfg(not(unix))]
                let forced = {
                    tick.tick().await;
                    false
                };
                let Some(auth) = weak.upgrade() else {
                    return;
                };
                if forced {
                    tracing::info!("SIGHUP: reloading the user file and the policy");
                }
                // Reading two small files: fine on a blocking thread.
                let _ = tokio::task::spawn_blocking(move || auth.reload(forced)).await;
            }
        });
    }

    /// Checks a user name and password (Basic), through the caches and
    /// the failure limits. Only a known user's password costs a bcrypt
    /// check, and only if this pair did not fail a moment ago; everything
    /// else that fails waits the typical check time and costs nothing.
    pub async fn check_password(
        &self,
        user: &str,
        password: &str,
        client: IpAddr,
    ) -> Result<(), LoginError> {
        let now = Instant::now();
        if let Some(wait) = lock(&self.limiter).blocked(user, client, now) {
            return Err(LoginError::RateLimited(wait));
        }
        let key = {
            let cache = lock(&self.cache);
            let key = cache.key_of(user, password);
            if cache.hit(&key, now) {
                return Ok(());
            }
            key
        };
        // Checked after the cache: a user whose login is cached keeps
        // working from an address that is refused new checks.
        if let Some(wait) = lock(&self.limiter).address_blocked(client, now) {
            return Err(LoginError::RateLimited(wait));
        }
        let generation = self.generation.load(Ordering::SeqCst);
        let users = self.users();
        let hash = users.hash_of(user).map(str::to_string);
        let known = hash.is_some();
        let failed_before = known && lock(&self.cache).failed_recently(&key, now);
        let Some(hash) = hash.filter(|_| !failed_before) else {
            tokio::time::sleep(self.verify_timer.typical()).await;
            return Err(self.login_failed(user, client, known, false, None));
        };
        let pw = password.to_string();
        let ok = {
            let _mine = self.address_slots.acquire(client).await;
            let _slot = self.bcrypt_slots.acquire().await;
            let started = Instant::now();
            let ok =
                tokio::task::spawn_blocking(move || bcrypt::verify(pw, &hash).unwrap_or(false))
                    .await
                    .unwrap_or(false);
            self.verify_timer.record(started.elapsed());
            ok
        };
        if ok {
            if self.generation.load(Ordering::SeqCst) == generation {
                lock(&self.cache).remember(key, Instant::now());
            }
            lock(&self.limiter).succeed(user, client);
            return Ok(());
        }
        let unchanged = self.generation.load(Ordering::SeqCst) == generation;
        Err(self.login_failed(user, client, true, true, unchanged.then_some(key)))
    }

    /// Counts a failed login: for the pair, and for the address when
    /// bcrypt ran (`verified`); `remember` is the pair's cache key when
    /// the failure may be cached (the user file did not change meanwhile).
    fn login_failed(
        &self,
        user: &str,
        client: IpAddr,
        known: bool,
        verified: bool,
        remember: Option<[u8; 32]>,
    ) -> LoginError {
        let now = Instant::now();
        let failures = {
            let mut l = lock(&self.limiter);
            if verified {
                l.fail_verification(client, now);
            }
            l.fail(user, client, known, now)
        };
        if let Some(key) = remember {
            lock(&self.cache).remember_failure(key, now);
        }
        tracing::warn!(
            user = %user.chars().take(64).collect::<String>(),
            client = %client,
            failures,
            "login failed"
        );
        LoginError::Invalid
    }

    /// What `user` (`None`: anonymous) may do on `repo`.
    pub fn actions_for(&self, user: Option<&str>, repo: &RepoName) -> Actions {
        self.policy().actions_for(user, repo.as_str())
    }

    /// Whether `user` may do `action` somewhere.
    pub fn may_somewhere(&self, user: Option<&str>, action: Action) -> bool {
        self.policy().may_somewhere(user, action)
    }

    /// What `user` (`None`: anonymous) may do on the fleet host `host`.
    pub fn host_actions_for(&self, user: Option<&str>, host: &str) -> HostActions {
        self.policy().host_actions_for(user, host)
    }

    /// Whether `user` may do the host action `action` on some host.
    pub fn may_host_somewhere(&self, user: Option<&str>, action: HostAction) -> bool {
        self.policy().may_host_somewhere(user, action)
    }

    /// Whether `user` may read `GET /metrics` by the policy.
    pub fn may_read_metrics(&self, user: &str) -> bool {
        self.policy().may_read_metrics(user)
    }

    /// Verifies an access token. A token that verified before is found in
    /// a small cache (keyed by its SHA-256, kept until it expires), so a
    /// client sending the same token on every request pays one ECDSA
    /// verification per token, not per request.
    pub fn verify_access_token(&self, token: &str) -> Result<Arc<Claims>, TokenError> {
        let now = token::unix_now();
        let k: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(c) = lock(&self.verified).get(&k) {
            if c.exp > now {
                return Ok(c.clone());
            }
        }
        let claims = Arc::new(self.key.verify(token, token::SERVICE, now)?);
        let mut cache = lock(&self.verified);
        if cache.len() >= VERIFIED_CACHE_MAX {
            cache.retain(|_, c| c.exp > now);
            if cache.len() >= VERIFIED_CACHE_MAX {
                cache.clear();
            }
        }
        cache.insert(k, claims.clone());
        Ok(claims)
    }

    /// Signs an access token for `user` (`None`: anonymous) granting the
    /// intersection of what was asked and what the policy allows.
    pub fn issue(&self, user: Option<&str>, scopes: &[Scope]) -> Result<Issued, TokenError> {
        let policy = self.policy();
        let mut access: Vec<ResourceActions> = Vec::new();
        for s in scopes {
            match s {
                Scope::Repository(repo, asked) => {
                    let granted = asked.intersect(policy.actions_for(user, repo.as_str()));
                    if granted.is_empty() {
                        continue;
                    }
                    // Merge repeated scopes for one repository.
                    if let Some(e) = access
                        .iter_mut()
                        .find(|e| e.kind == "repository" && e.name == repo.as_str())
                    {
                        let merged: Actions = e
                            .actions
                            .iter()
                            .filter_map(|a| Action::parse(a))
                            .collect::<Actions>()
                            .union(granted);
                        e.actions = merged.iter().map(|a| a.as_str().to_string()).collect();
                    } else {
                        access.push(ResourceActions {
                            kind: "repository".into(),
                            name: repo.as_str().to_string(),
                            actions: granted.iter().map(|a| a.as_str().to_string()).collect(),
                        });
                    }
                }
                Scope::Catalog => {
                    let allowed = user.is_some() || policy.may_somewhere(None, Action::Pull);
                    if allowed && !access.iter().any(|e| e.kind == "registry") {
                        access.push(ResourceActions {
                            kind: "registry".into(),
                            name: "catalog".into(),
                            actions: vec!["*".into()],
                        });
                    }
                }
            }
        }
        let now = token::unix_now();
        let ttl = self.settings.token_ttl.as_secs().max(1);
        let claims = Claims {
            iss: token::ISSUER.into(),
            sub: user.unwrap_or("").to_string(),
            aud: serde_json::Value::String(token::SERVICE.into()),
            exp: now + ttl as i64,
            nbf: now,
            iat: now,
            jti: token::random_id(),
            access: access.clone(),
            pwh: None,
        };
        let token = self.key.sign(&claims)?;
        let issued_at = time::OffsetDateTime::from_unix_timestamp(now)
            .ok()
            .and_then(|t| {
                t.format(&time::format_description::well_known::Rfc3339)
                    .ok()
            })
            .unwrap_or_default();
        Ok(Issued {
            token,
            expires_in: ttl,
            issued_at,
            access,
        })
    }

    /// A refresh token for `user`, revoked by a password change.
    pub fn issue_refresh(&self, user: &str) -> Result<String, TokenError> {
        let pwh = self.users().fingerprint(user);
        let now = token::unix_now();
        self.key.sign(&Claims {
            iss: token::ISSUER.into(),
            sub: user.to_string(),
            aud: serde_json::Value::String(token::REFRESH_AUDIENCE.into()),
            exp: now + REFRESH_TTL.as_secs() as i64,
            nbf: now,
            iat: now,
            jti: token::random_id(),
            access: Vec::new(),
            pwh,
        })
    }

    /// The user a refresh token stands for, if it is valid and the user's
    /// password has not changed since.
    pub fn verify_refresh(&self, refresh: &str) -> Result<String, TokenError> {
        let claims = self
            .key
            .verify(refresh, token::REFRESH_AUDIENCE, token::unix_now())?;
        let current = self.users().fingerprint(&claims.sub);
        let same = match (&current, &claims.pwh) {
            (Some(a), Some(b)) => {
                a.len() == b.len()
                    && bool::from(subtle::ConstantTimeEq::ct_eq(a.as_bytes(), b.as_bytes()))
            }
            _ => false,
        };
        if claims.sub.is_empty() || !same {
            return Err(TokenError::Signature);
        }
        Ok(claims.sub)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        let s = parse_scopes("repository:bpf/x:pull,push repository:y:* registry:catalog:* repository:Bad:pull junk repository:z:fly");
        assert_eq!(s.len(), 4);
        assert_eq!(
            s[0],
            Scope::Repository(
                RepoName::parse("bpf/x").unwrap(),
                Actions::NONE.with(Action::Pull).with(Action::Push)
            )
        );
        assert_eq!(
            s[1],
            Scope::Repository(RepoName::parse("y").unwrap(), Actions::ALL)
        );
        assert_eq!(s[2], Scope::Catalog);
        assert_eq!(
            s[3],
            Scope::Repository(RepoName::parse("z").unwrap(), Actions::NONE)
        );
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn settings(dir: &Path, policy: Option<&str>) -> AuthSettings {
        let h = bcrypt::hash("pw", 4).unwrap();
        let htpasswd = write(dir, "htpasswd", &format!("alice:{h}\nbob:{h}\n"));
        let policy = policy.map(|p| write(dir, "policy.toml", p));
        AuthSettings {
            htpasswd,
            policy,
            token_key: None,
            token_ttl: Duration::from_secs(300),
            data_dir: dir.join("data"),
        }
    }

    #[tokio::test]
    async fn login_cache_limiter_and_issue() {
        let dir = tempfile::tempdir().unwrap();
        let policy = "[[grant]]\nusers=[\"alice\"]\nrepositories=[\"bpf/**\"]\nactions=[\"pull\",\"push\"]\n[[grant]]\nusers=[\"bob\"]\nrepositories=[\"**\"]\nactions=[\"pull\"]\n";
        let auth = Auth::load(settings(dir.path(), Some(policy))).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(auth.check_password("alice", "pw", ip).await, Ok(()));
        // cached now
        assert_eq!(auth.check_password("alice", "pw", ip).await, Ok(()));
        assert_eq!(
            auth.check_password("nobody", "pw", ip).await,
            Err(LoginError::Invalid)
        );
        for _ in 0..limiter::MAX_FAILURES {
            assert_eq!(
                auth.check_password("bob", "wrong", ip).await,
                Err(LoginError::Invalid)
            );
        }
        assert!(matches!(
            auth.check_password("bob", "pw", ip).await,
            Err(LoginError::RateLimited(_))
        ));
        // Another address is not affected.
        assert_eq!(
            auth.check_password("bob", "pw", "127.0.0.2".parse().unwrap())
                .await,
            Ok(())
        );
        let issued = auth
            .issue(
                Some("alice"),
                &parse_scopes("repository:bpf/x:pull,push,delete repository:other:pull"),
            )
            .unwrap();
        assert_eq!(issued.access.len(), 1);
        assert_eq!(issued.access[0].actions, vec!["pull", "push"]);
        let c = auth.verify_access_token(&issued.token).unwrap();
        assert_eq!(c.sub, "alice");
        assert!(c.grants("bpf/x", "push"));
        // The generated key was written with mode 0600.
        let key_path = dir.path().join("data").join(token::GENERATED_KEY_PATH);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        // A second load reuses it.
        let again = Auth::load(settings(dir.path(), Some(policy))).unwrap();
        assert!(again.verify_access_token(&issued.token).is_ok());
    }

    #[tokio::test]
    async fn unknown_users_and_repeated_failures_cost_no_bcrypt_slot() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(settings(dir.path(), None)).unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        // A failed pair is remembered...
        assert_eq!(
            auth.check_password("bob", "wrong", ip).await,
            Err(LoginError::Invalid)
        );
        // ...so with every bcrypt slot taken, unknown users and the same
        // wrong password are still answered...
        let _all = auth
            .bcrypt_slots
            .acquire_many(BCRYPT_PARALLEL as u32)
            .await
            .unwrap();
        let bound = Duration::from_secs(5);
        for (user, pw) in [("nobody", "pw"), ("bob", "wrong")] {
            let r = tokio::time::timeout(bound, auth.check_password(user, pw, ip)).await;
            assert_eq!(r, Ok(Err(LoginError::Invalid)), "{user}");
        }
        // ...while a real check waits for a slot.
        let r = tokio::time::timeout(
            Duration::from_millis(200),
            auth.check_password("alice", "pw", ip),
        )
        .await;
        assert!(r.is_err(), "a known user's check needs a bcrypt slot");
    }

    #[tokio::test]
    async fn an_address_guessing_many_passwords_is_refused_new_checks() {
        let dir = tempfile::tempdir().unwrap();
        let h = bcrypt::hash("pw", 4).unwrap();
        let names: Vec<String> = (0..8).map(|i| format!("user{i}")).collect();
        let file: String = names.iter().map(|n| format!("{n}:{h}\n")).collect();
        let mut s = settings(dir.path(), None);
        s.htpasswd = write(dir.path(), "htpasswd", &format!("{file}alice:{h}\n"));
        let auth = Auth::load(s).unwrap();
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        let other: IpAddr = "10.1.1.2".parse().unwrap();
        // A login cached before the attack keeps working.
        assert_eq!(auth.check_password("alice", "pw", ip).await, Ok(()));
        let mut guesses = 0;
        'guessing: for n in &names {
            for g in 0..limiter::MAX_FAILURES - 1 {
                if guesses == limiter::MAX_VERIFIED_FAILURES_PER_ADDRESS {
                    break 'guessing;
                }
                let r = auth.check_password(n, &format!("guess{g}"), ip).await;
                assert_eq!(r, Err(LoginError::Invalid));
                guesses += 1;
            }
        }
        assert_eq!(guesses, limiter::MAX_VERIFIED_FAILURES_PER_ADDRESS);
        // Every new check from the address is refused, whatever the name.
        for user in ["user7", "nobody"] {
            assert!(
                matches!(
                    auth.check_password(user, "pw", ip).await,
                    Err(LoginError::RateLimited(_))
                ),
                "{user}"
            );
        }
        assert_eq!(auth.check_password("alice", "pw", ip).await, Ok(()));
        assert_eq!(auth.check_password("user7", "pw", other).await, Ok(()));
    }

    #[test]
    fn host_actions_follow_the_policy() {
        let dir = tempfile::tempdir().unwrap();
        let auth = Auth::load(settings(dir.path(), None)).unwrap();
        assert_eq!(auth.host_actions_for(Some("bob"), "n1"), HostActions::ALL);
        assert_eq!(auth.host_actions_for(None, "n1"), HostActions::NONE);
        assert!(auth.may_host_somewhere(Some("bob"), HostAction::Delete));
        assert!(!auth.may_host_somewhere(None, HostAction::Read));
        let policy = "[[grant]]\nusers=[\"*\"]\nhosts=[\"{user}\"]\nactions=[\"report\"]\n";
        let auth = Auth::load(settings(dir.path(), Some(policy))).unwrap();
        let mine = auth.host_actions_for(Some("bob"), "bob");
        assert!(mine.contains(HostAction::Report) && mine.contains(HostAction::Read));
        assert!(!mine.contains(HostAction::Delete));
        assert_eq!(
            auth.host_actions_for(Some("bob"), "alice"),
            HostActions::NONE
        );
        assert!(!auth.may_host_somewhere(Some("bob"), HostAction::Delete));
        assert_eq!(
            auth.actions_for(Some("bob"), &RepoName::parse("x").unwrap()),
            Actions::NONE
        );
    }

    #[tokio::test]
    async fn refresh_tokens_die_with_the_password() {
        let dir = tempfile::tempdir().unwrap();
        let s = settings(dir.path(), None);
        let auth = Auth::load(s.clone()).unwrap();
        let r = auth.issue_refresh("alice").unwrap();
        assert_eq!(auth.verify_refresh(&r).unwrap(), "alice");
        // A refresh token is not an access token, nor the other way round.
        assert_eq!(auth.verify_access_token(&r), Err(TokenError::Audience));
        let a = auth.issue(Some("alice"), &[]).unwrap();
        assert!(auth.verify_refresh(&a.token).is_err());
        // New password: the refresh token is void.
        let h = bcrypt::hash("new", 4).unwrap();
        std::fs::write(&s.htpasswd, format!("alice:{h}\n")).unwrap();
        auth.reload(true);
        assert!(auth.verify_refresh(&r).is_err());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert_eq!(auth.check_password("alice", "new", ip).await, Ok(()));
        assert_eq!(
            auth.check_password("alice", "pw", ip).await,
            Err(LoginError::Invalid)
        );
    }

    #[test]
    fn auth_and_tls_variables() {
        use crate::config::Config;
        use std::collections::HashMap;
        let cfg = |pairs: &[(&str, &str)]| {
            let m: HashMap<String, String> = pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            Config::from_lookup(|k| m.get(k).cloned())
        };
        let c = cfg(&[]).unwrap();
        assert!(c.auth_htpasswd.is_none() && c.tls_cert.is_none());
        assert_eq!(c.token_ttl_secs, 300);
        let c = cfg(&[
            ("BPF_REGISTRY_AUTH_HTPASSWD", "/etc/h"),
            ("BPF_REGISTRY_AUTH_POLICY", "/etc/p.toml"),
            ("BPF_REGISTRY_EXTERNAL_URL", "https://reg.example:8443/"),
            ("BPF_REGISTRY_TOKEN_TTL", "60"),
        ])
        .unwrap();
        assert_eq!(c.external_url.as_deref(), Some("https://reg.example:8443"));
        assert_eq!(c.token_ttl_secs, 60);
        let var = |pairs: &[(&str, &str)]| cfg(pairs).unwrap_err().var;
        assert_eq!(
            var(&[("BPF_REGISTRY_AUTH_POLICY", "/p")]),
            "BPF_REGISTRY_AUTH_POLICY"
        );
        assert_eq!(
            var(&[("BPF_REGISTRY_TOKEN_KEY", "/k")]),
            "BPF_REGISTRY_TOKEN_KEY"
        );
        assert_eq!(
            var(&[("BPF_REGISTRY_TLS_CERT", "/c")]),
            "BPF_REGISTRY_TLS_KEY"
        );
        assert_eq!(
            var(&[("BPF_REGISTRY_TLS_KEY", "/k")]),
            "BPF_REGISTRY_TLS_CERT"
        );
        for bad in [
            "reg.example",
            "https://",
            "https://r.example/path",
            "ftp://r",
        ] {
            assert_eq!(
                var(&[("BPF_REGISTRY_EXTERNAL_URL", bad)]),
                "BPF_REGISTRY_EXTERNAL_URL",
                "{bad}"
            );
        }
        assert_eq!(
            var(&[("BPF_REGISTRY_TOKEN_TTL", "0")]),
            "BPF_REGISTRY_TOKEN_TTL"
        );
        assert_eq!(
            var(&[("BPF_REGISTRY_TOKEN_TTL", "100000")]),
            "BPF_REGISTRY_TOKEN_TTL"
        );
    }

    #[test]
    fn bad_files_stop_the_start_naming_the_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = settings(
            dir.path(),
            Some("[[grant]]\nusers=[\"a\"]\nrepositories=[\"x\"]\nactions=[\"fly\"]\n"),
        );
        let e = Auth::load(s.clone()).unwrap_err();
        assert!(
            e.contains("BPF_REGISTRY_AUTH_POLICY") && e.contains("line 4"),
            "{e}"
        );
        s.policy = None;
        std::fs::write(
            &s.htpasswd,
            "ok:$2y$04$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234\nmd5:$apr1$x$y\n",
        )
        .unwrap();
        let e = Auth::load(s).unwrap_err();
        assert!(
            e.contains("BPF_REGISTRY_AUTH_HTPASSWD") && e.contains("line 2"),
            "{e}"
        );
    }
}
