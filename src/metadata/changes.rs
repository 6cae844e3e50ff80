//! The change feed of the fleet views: every write that can change what a
//! host is assigned (a manifest or tag of a repository, a host's facts or
//! associations, any selector) bumps a per-scope counter in
//! `fleet_changes` inside its own transaction, and the commit is published
//! to the watchers of this process (and, on PostgreSQL, through
//! `NOTIFY` to every replica). The views validate their caches against
//! these counters and long-poll waiters wake on them.
//!
//! Scopes: `host:<id>`, `repo:<name>`, `selectors`. A transaction bumps its
//! scopes last, in byte order, so two writers never lock two counter rows
//! in opposite orders.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use crate::metadata::WriteTx;
use sqlx::Row;
use tokio::sync::watch;

use super::{Engine, Metadata, MetadataResult};

/// The PostgreSQL notification channel of the feed.
pub const CHANNEL: &str = "bpf_registry_fleet";

/// A scope's counter after a commit.
pub type Change = (String, i64);

/// The scope of a repository's manifests and tags.
pub fn repo_scope(repo: &str) -> String {
    format!("repo:{repo}")
}

/// The repository a [`repo_scope`] names; `None` for another scope.
pub fn repo_of_scope(scope: &str) -> Option<&str> {
    scope.strip_prefix("repo:")
}

/// The scope of a host's facts, labels and direct associations.
pub fn host_scope(host: &str) -> String {
    format!("host:{host}")
}

/// The scope of every selector of every repository.
pub const SELECTORS: &str = "selectors";

/// What this process knows of a scope at one moment: the feed's epoch and
/// the scope's last published counter. Two equal tokens of a scope mean no
/// write of it was published (or possibly missed) in between.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScopeToken {
    epoch: u64,
    seq: Option<i64>,
}

/// What this process knows of the counters: the last value each scope was
/// published with, and a tick every waiter watches.
pub struct ChangeFeed {
    /// The counters; the epoch is changed under this lock too, so a
    /// [`ScopeToken`] is read consistently.
    known: Mutex<Known>,
    /// Bumped on every publish; the value is the epoch (below) in the
    /// high bits so a receiver can tell a reset from a change.
    tick: watch::Sender<u64>,
    /// Incremented when changes may have been missed (a listener
    /// reconnect): waiters then re-read from SQL.
    epoch: std::sync::atomic::AtomicU64,
    /// Incremented after every publish that holds a repository scope (and
    /// on a reset): what a cache of rows any repository's manifest writes
    /// change is validated against (see [`ChangeFeed::repo_writes`]).
    repo_writes: std::sync::atomic::AtomicU64,
}

/// The published counters, and whether they are all of them.
#[derive(Default)]
struct Known {
    seqs: HashMap<String, i64>,
    /// Every scope with a counter is in `seqs` (SQLite, from the seed at
    /// start-up until a reset): one absent was never written, so its
    /// counter is 0 without asking SQL. Without it (PostgreSQL, or after
    /// a reset) an absent scope is only unknown.
    complete: bool,
}

impl Default for ChangeFeed {
    fn default() -> Self {
        ChangeFeed {
            known: Mutex::new(Known::default()),
            tick: watch::channel(0).0,
            epoch: std::sync::atomic::AtomicU64::new(0),
            repo_writes: std::sync::atomic::AtomicU64::new(0),
        }
    }
}

impl ChangeFeed {
    /// A receiver that sees every publish after this call.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tick.subscribe()
    }

    /// The counter of `scope` as last published here, if known (0 for a
    /// scope never written, once the feed holds every counter).
    pub fn known(&self, scope: &str) -> Option<i64> {
        let known = self.known.lock().ok()?;
        match known.seqs.get(scope) {
            Some(seq) => Some(*seq),
            None => known.complete.then_some(0),
        }
    }

    /// The committed counter of `scope`, when this process's feed holds
    /// every counter (SQLite after the seed, until a reset): then every
    /// write that returned to its caller was published here before it
    /// returned (see [`Metadata::commit_with_changes`]), so this is what
    /// SQL would answer to a request that starts now. `None`: ask SQL.
    pub fn committed(&self, scope: &str) -> Option<i64> {
        let known = self.known.lock().ok()?;
        if !known.complete {
            return None;
        }
        Some(known.seqs.get(scope).copied().unwrap_or(0))
    }

    /// The token of `scope` now (see [`ScopeToken`]).
    pub fn token(&self, scope: &str) -> ScopeToken {
        let known = self.known.lock().unwrap_or_else(|p| p.into_inner());
        ScopeToken {
            epoch: self.epoch.load(std::sync::atomic::Ordering::Acquire),
            seq: known.seqs.get(scope).copied(),
        }
    }

    /// The current epoch (see the field).
    pub fn epoch(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    /// How many publishes held a repository scope (plus resets). With
    /// SQLite every write of a store is this process's, and a
    /// transaction's changes are published once it has committed (see
    /// [`Metadata::commit_with_changes`]): a value read before a query of
    /// manifest-derived rows that is still the current one says no
    /// manifest write committed since. Not so on PostgreSQL, where other
    /// replicas' changes arrive late.
    pub fn repo_writes(&self) -> u64 {
        self.repo_writes.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Records committed changes and wakes the waiters.
    pub fn publish(&self, changes: &[Change]) {
        self.publish_counters(changes, false);
    }

    /// Records every counter there is (read in one query at start-up, when
    /// no other process writes the store): from now on a scope that is not
    /// here was never written, until a reset.
    fn publish_all(&self, counters: &[Change]) {
        self.publish_counters(counters, true);
    }

    fn publish_counters(&self, changes: &[Change], all: bool) {
        if changes.is_empty() && !all {
            return;
        }
        if changes.iter().any(|(s, _)| repo_of_scope(s).is_some()) {
            self.repo_writes
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            for (scope, seq) in changes {
                let e = known.seqs.entry(scope.clone()).or_insert(*seq);
                *e = (*e).max(*seq);
            }
            known.complete |= all;
            // Bounded: a scope forgotten is only re-read from SQL.
            if known.seqs.len() > 1_000_000 {
                self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                *known = Known::default();
            }
        }
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }

    /// Forgets what was known: changes may have been missed.
    pub fn reset(&self) {
        {
            let mut known = self.known.lock().unwrap_or_else(|p| p.into_inner());
            // The epoch first, under the lock: no token pairs the old
            // epoch with a forgotten counter.
            self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            *known = Known::default();
        }
        self.repo_writes
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.tick.send_modify(|t| *t = t.wrapping_add(1));
    }
}

/// The scopes a transaction changes, bumped at its end.
#[derive(Debug, Default, Clone)]
pub struct Scopes(BTreeSet<String>);

impl Scopes {
    pub fn add(&mut self, scope: String) {
        self.0.insert(scope);
    }
}

/// Bumps every scope of `scopes` in the caller's transaction (in byte
/// order) and, on PostgreSQL, queues the notification sent at commit.
pub(super) async fn bump(
    tx: &mut WriteTx<'_>,
    engine: Engine,
    scopes: &Scopes,
) -> MetadataResult<Vec<Change>> {
    let mut out = Vec::with_capacity(scopes.0.len());
    for scope in &scopes.0 {
        let row = sqlx::query(
            "INSERT INTO fleet_changes (scope, seq) VALUES ($1, 1)
             ON CONFLICT (scope) DO UPDATE SET seq = fleet_changes.seq + 1
             RETURNING seq",
        )
        .bind(scope.clone())
        .fetch_one(&mut **tx)
        .await?;
        let seq: i64 = row.try_get(0)?;
        if engine == Engine::Postgres {
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(CHANNEL)
                .bind(format!("{seq} {scope}"))
                .execute(&mut **tx)
                .await?;
        }
        out.push((scope.clone(), seq));
    }
    Ok(out)
}

/// Resets the feed when dropped, unless defused: what a commit whose
/// outcome is unknown leaves behind (it returned an error, or its task
/// was dropped with the runtime).
struct ResetUnlessDefused<'a>(Option<&'a ChangeFeed>);

impl ResetUnlessDefused<'_> {
    fn defuse(mut self) {
        self.0 = None;
    }
}

impl Drop for ResetUnlessDefused<'_> {
    fn drop(&mut self) {
        if let Some(feed) = self.0 {
            feed.reset();
        }
    }
}

/// A notification's payload back into a change.
fn parse_payload(p: &str) -> Option<Change> {
    let (seq, scope) = p.split_once(' ')?;
    Some((scope.to_string(), seq.parse().ok()?))
}

impl Metadata {
    /// The feed of this process.
    pub fn changes(&self) -> &Arc<ChangeFeed> {
        &self.changes
    }

    /// The committed counters of `scopes` (0 for a scope never bumped).
    pub async fn change_seqs(&self, scopes: &[String]) -> MetadataResult<HashMap<String, i64>> {
        let mut out: HashMap<String, i64> = scopes.iter().map(|s| (s.clone(), 0)).collect();
        for chunk in scopes.chunks(200) {
            let placeholders: Vec<String> = (1..=chunk.len()).map(|i| format!("${i}")).collect();
            let sql = format!(
                "SELECT scope, seq FROM fleet_changes WHERE scope IN ({})",
                placeholders.join(", ")
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for s in chunk {
                q = q.bind(s.clone());
            }
            for r in q.fetch_all(self.pool()).await? {
                out.insert(r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?);
            }
        }
        Ok(out)
    }

    /// Bumps `scopes` in the caller's transaction, commits it and
    /// publishes the changes. The commit and the publish run in a task of
    /// their own: a caller that goes away (a client hanging up) cannot
    /// leave a committed transaction unpublished, which the caches
    /// validated against [`ChangeFeed::repo_writes`] rely on.
    pub(super) async fn commit_with_changes(
        &self,
        mut tx: WriteTx<'static>,
        scopes: &Scopes,
    ) -> MetadataResult<()> {
        let changes = bump(&mut tx, self.engine, scopes).await?;
        let feed = self.changes.clone();
        let done = tokio::spawn(async move {
            // A commit that fails may still have happened (an error after
            // the data is durable): then the feed is reset, so nothing this
            // process derived from the old state is trusted.
            let unsure = ResetUnlessDefused(Some(feed.as_ref()));
            tx.commit().await?;
            unsure.defuse();
            feed.publish(&changes);
            Ok::<(), super::MetadataError>(())
        });
        // A join error is the task's panic (or the runtime going away).
        done.await
            .unwrap_or(Err(super::MetadataError::Sql(sqlx::Error::WorkerCrashed)))
    }

    /// On SQLite (one process per store), loads every committed counter
    /// into this process's feed: a woken waiter then finds every scope's
    /// counter in the feed and reads no SQL, also for scopes not written
    /// since the start. Changes published meanwhile keep the higher value.
    pub async fn seed_change_feed(&self) -> MetadataResult<usize> {
        if self.engine != Engine::Sqlite {
            return Ok(0);
        }
        let rows = sqlx::query("SELECT scope, seq FROM fleet_changes")
            .fetch_all(self.pool())
            .await?;
        let mut changes = Vec::with_capacity(rows.len());
        for r in &rows {
            changes.push((r.try_get::<String, _>(0)?, r.try_get::<i64, _>(1)?));
        }
        self.changes.publish_all(&changes);
        Ok(changes.len())
    }

    /// On PostgreSQL, listens for the other replicas' changes until the
    /// process ends; a lost connection is re-established and the feed
    /// reset (changes may have been missed meanwhile). SQLite has one
    /// process per store: nothing to listen to.
    pub fn spawn_change_listener(&self) {
        let Some(url) = self.url.clone() else {
            return;
        };
        let feed = self.changes.clone();
        tokio::spawn(async move {
            loop {
                match sqlx::postgres::PgListener::connect(&url).await {
                    Ok(mut listener) => {
                        if let Err(e) = listener.listen(CHANNEL).await {
                            tracing::warn!(error = %e, "change listener: LISTEN failed");
                        } else {
                            // What happened while not listening is unknown.
                            feed.reset();
                            loop {
                                match listener.try_recv().await {
                                    Ok(Some(n)) => {
                                        if let Some(c) = parse_payload(n.payload()) {
                                            feed.publish(&[c]);
                                        }
                                    }
                                    // Reconnected: changes may be lost.
                                    Ok(None) => feed.reset(),
                                    Err(e) => {
                                        tracing::warn!(error = %e, "change listener lost");
                                        break;
                                    }
                                }
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "change listener: connect failed"),
                }
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip() {
        assert_eq!(
            parse_payload("12 repo:team/x"),
            Some(("repo:team/x".to_string(), 12))
        );
        assert_eq!(parse_payload("x repo:a"), None);
        assert_eq!(parse_payload("nospace"), None);
    }

    #[tokio::test]
    async fn a_new_process_on_sqlite_knows_every_committed_counter_once_seeded() {
        let dir = tempfile::tempdir().unwrap();
        let meta = Metadata::open_in_dir(dir.path()).await.unwrap();
        let host = crate::metadata::HostRow {
            host_id: "h1".into(),
            architecture: "x86_64".into(),
            kernel_release: "6.1.0".into(),
            btf: Some(true),
            agent_version: None,
            labels: "{}".into(),
            registered_at: 0,
            last_seen: 0,
        };
        meta.upsert_host(&host).await.unwrap();
        meta.upsert_host(&host).await.unwrap();
        let written = meta.changes().known(&host_scope("h1"));
        assert!(written.is_some());
        drop(meta);
        // Another process: its feed starts empty, the seed fills it.
        let meta = Metadata::open_in_dir(dir.path()).await.unwrap();
        assert_eq!(meta.changes().known(&host_scope("h1")), None);
        assert_eq!(meta.changes().known(SELECTORS), None);
        assert!(meta.seed_change_feed().await.unwrap() >= 1);
        assert_eq!(meta.changes().known(&host_scope("h1")), written);
        // Seeded, the feed holds every counter: it answers for committed
        // state, a scope never written is 0 (the selectors here), without
        // a query; a write publishes before it returns. Until a reset.
        assert_eq!(meta.changes().known(SELECTORS), Some(0));
        assert_eq!(meta.changes().committed(&host_scope("h1")), written);
        assert_eq!(meta.changes().committed(SELECTORS), Some(0));
        meta.upsert_host(&host).await.unwrap();
        assert!(meta.changes().committed(&host_scope("h1")) > written);
        meta.changes().reset();
        assert_eq!(meta.changes().known(SELECTORS), None);
        assert_eq!(meta.changes().committed(SELECTORS), None);
        assert_eq!(meta.changes().known(&host_scope("h1")), None);
    }

    #[test]
    fn a_write_whose_outcome_is_unknown_resets_the_feed() {
        let feed = ChangeFeed::default();
        feed.publish(&[("repo:a".into(), 3)]);
        let before = feed.token("repo:a");
        // Defused: the commit was seen, the publish follows.
        ResetUnlessDefused(Some(&feed)).defuse();
        assert_eq!(feed.token("repo:a"), before);
        // Dropped (the commit returned an error, or its task was dropped).
        drop(ResetUnlessDefused(Some(&feed)));
        assert_ne!(feed.token("repo:a"), before);
        assert_eq!(feed.known("repo:a"), None);
    }

    #[tokio::test]
    async fn a_publish_wakes_a_subscriber_and_keeps_the_highest_counter() {
        let feed = ChangeFeed::default();
        let mut rx = feed.subscribe();
        feed.publish(&[("repo:a".into(), 3)]);
        feed.publish(&[("repo:a".into(), 2)]);
        rx.changed().await.unwrap();
        assert_eq!(feed.known("repo:a"), Some(3));
        let e = feed.epoch();
        feed.reset();
        assert_eq!(feed.known("repo:a"), None);
        assert_eq!(feed.epoch(), e + 1);
    }
}
