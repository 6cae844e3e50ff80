//! One in-process lock per key (a repository; a repository and manifest),
//! for the writes that check and then change what the key names. Keyed by
//! the value itself, not by a hash stripe: two keys never wait for each
//! other (with stripes a tenant could pick a name that shares a victim's
//! stripe). An entry lives while someone holds or waits for it, so the map
//! holds at most one entry per request in flight.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// A key's lock and how many hold or wait for it (changed under the
/// map's lock, so it is exact whatever order futures drop in).
struct Entry {
    lock: Arc<tokio::sync::Mutex<()>>,
    users: usize,
}

type Map<K> = Arc<Mutex<HashMap<K, Entry>>>;

pub struct KeyedLocks<K> {
    held: Map<K>,
}

impl<K> Default for KeyedLocks<K> {
    fn default() -> Self {
        KeyedLocks {
            held: Arc::default(),
        }
    }
}

/// A key's lock, held until dropped; then its entry goes if nobody else
/// holds or waits for it.
pub struct KeyedLockGuard<K: Hash + Eq> {
    guard: Option<OwnedMutexGuard<()>>,
    key: K,
    held: Map<K>,
}

impl<K: Hash + Eq + Clone> KeyedLocks<K> {
    /// Waits for `key`'s lock (first come, first served). A waiter
    /// dropped while it waits gives up its place and its count.
    pub async fn lock(&self, key: &K) -> KeyedLockGuard<K> {
        let lock = {
            let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
            let entry = held.entry(key.clone()).or_insert_with(|| Entry {
                lock: Arc::default(),
                users: 0,
            });
            entry.users += 1;
            entry.lock.clone()
        };
        // Counted from here: a waiter dropped mid-wait still uncounts.
        let mut guard = KeyedLockGuard {
            guard: None,
            key: key.clone(),
            held: self.held.clone(),
        };
        guard.guard = Some(lock.lock_owned().await);
        guard
    }

    /// Keys with an entry now (held or waited for).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.held.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl<K: Hash + Eq> Drop for KeyedLockGuard<K> {
    fn drop(&mut self) {
        self.guard.take();
        let mut held = self.held.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(entry) = held.get_mut(&self.key) {
            entry.users = entry.users.saturating_sub(1);
            if entry.users == 0 {
                held.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::RepoName;
    use std::time::Duration;

    fn repo(s: &str) -> RepoName {
        RepoName::parse(s).unwrap()
    }

    #[tokio::test]
    async fn a_held_repository_does_not_block_another_and_entries_go_when_released() {
        let locks = KeyedLocks::default();
        let a = locks.lock(&repo("bench-post/client-3")).await;
        // These two shared a stripe of the 64 striped locks this replaced.
        let b = tokio::time::timeout(
            Duration::from_secs(5),
            locks.lock(&repo("bench-post/client-4")),
        )
        .await
        .expect("another repository's lock waited for this one");
        assert_eq!(locks.len(), 2);
        drop(a);
        drop(b);
        assert!(locks.is_empty());
    }

    #[tokio::test]
    async fn one_repository_is_held_by_one_at_a_time_and_waiters_keep_the_entry() {
        let locks = Arc::new(KeyedLocks::default());
        let first = locks.lock(&repo("r/x")).await;
        let (tx, mut rx) = tokio::sync::oneshot::channel();
        let l2 = locks.clone();
        let waiter = tokio::spawn(async move {
            let g = l2.lock(&repo("r/x")).await;
            let _ = tx.send(());
            g
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(rx.try_recv().is_err(), "the second got the held lock");
        drop(first);
        assert_eq!(locks.len(), 1, "the waiter's entry went");
        let second = waiter.await.unwrap();
        rx.await.unwrap();
        drop(second);
        assert!(locks.is_empty());

        // A waiter dropped mid-wait leaves nothing behind.
        let held = locks.lock(&repo("r/y")).await;
        let l3 = locks.clone();
        let cancelled = tokio::spawn(async move {
            let _g = l3.lock(&repo("r/y")).await;
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancelled.abort();
        let _ = cancelled.await;
        drop(held);
        assert!(locks.is_empty());
    }
}
