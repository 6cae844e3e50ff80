//! The copies of a manifest that are artifacts (what a REST id can mean),
//! kept in process on SQLite: every request naming an id resolves it, and
//! the rows change only with a manifest write. An entry is the answer read
//! at a value of the change feed's [`repo_writes`] counter taken before
//! the read, served only while that counter is unchanged, so any manifest
//! write or delete committed in any repository (with SQLite, all of them
//! are this process's) empties it for every reader. On PostgreSQL other
//! replicas' writes reach the feed late: nothing is kept, every call reads.
//!
//! [`repo_writes`]: crate::metadata::ChangeFeed::repo_writes

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::model::ArtifactRecord;
use crate::metadata::{Engine, Metadata};
use crate::oci::Digest;

/// Digests kept at most before the cache is emptied (a bound, not a
/// target: an entry holds records the rows already share).
const MAX_ENTRIES: usize = 65_536;

pub type Copies = Vec<Arc<ArtifactRecord>>;

#[derive(Default)]
pub struct CopiesCache {
    /// The counter the entries were read at, and per digest its copies.
    entries: Mutex<(u64, HashMap<Digest, Arc<Copies>>)>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl CopiesCache {
    /// The copies of `digest`: kept ones when still current, else `read`
    /// (whose answer is kept when it names any copy).
    pub async fn get<F, Fut, E>(
        &self,
        meta: &Metadata,
        digest: &Digest,
        read: F,
    ) -> Result<Copies, E>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Copies, E>>,
    {
        if meta.engine() != Engine::Sqlite {
            return read().await;
        }
        // Taken before the read: a write committed after it moves the
        // counter, so what the read saw is never served after that write.
        let at = meta.changes().repo_writes();
        {
            let cache = locked(&self.entries);
            if cache.0 == at {
                if let Some(c) = cache.1.get(digest) {
                    return Ok(c.as_ref().clone());
                }
            }
        }
        let copies = read().await?;
        if !copies.is_empty() {
            let mut cache = locked(&self.entries);
            if cache.0 != at {
                if cache.0 > at {
                    // Read before a newer write: not kept.
                    return Ok(copies);
                }
                *cache = (at, HashMap::new());
            }
            if cache.1.len() >= MAX_ENTRIES {
                cache.1.clear();
            }
            cache.1.insert(digest.clone(), Arc::new(copies.clone()));
        }
        Ok(copies)
    }
}
