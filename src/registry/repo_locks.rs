//! Per-repository write locks, striped: one writer at a time per
//! repository for the manifest writes that must not interleave (a tag
//! write and a deletion by digest). A collision of two repositories on one
//! stripe only serializes them.

use crate::oci::RepoName;

/// The stripes.
pub struct RepoLocks {
    stripes: [tokio::sync::Mutex<()>; REPO_LOCK_STRIPES],
}

const REPO_LOCK_STRIPES: usize = 64;

impl Default for RepoLocks {
    fn default() -> Self {
        RepoLocks {
            stripes: std::array::from_fn(|_| tokio::sync::Mutex::new(())),
        }
    }
}

impl RepoLocks {
    /// Waits for the stripe of `repo`.
    pub(super) async fn lock(&self, repo: &RepoName) -> tokio::sync::MutexGuard<'_, ()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        repo.hash(&mut h);
        let i = (h.finish() % REPO_LOCK_STRIPES as u64) as usize;
        self.stripes[i].lock().await
    }
}
