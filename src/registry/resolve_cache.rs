//! The bounded in-process cache of what a reference resolves to in a
//! repository (tag or digest → the manifest row, or nothing), for the
//! embedded SQLite store only: there one process makes every write, and
//! each write publishes its repository's counter to this process's change
//! feed before it is acknowledged. An entry is kept with the repository's
//! [`ScopeToken`] read before its query and is used only while the token
//! is unchanged, so a tag move, a delete or a push answered to any client
//! is never hidden by the cache. With PostgreSQL another replica's write
//! reaches the feed asynchronously, so every resolution goes to SQL.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::metadata::changes::repo_scope;
use crate::metadata::{ChangeFeed, ManifestRow, ScopeToken};
use crate::oci::{Reference, RepoName};

/// Entries kept at most (a resolution is about 300 bytes); the cache is
/// emptied when full, which only costs queries.
const MAX_ENTRIES: usize = 16 * 1024;

/// One repository's cached resolutions, all read under `token`.
struct RepoEntries {
    token: ScopeToken,
    refs: HashMap<Reference, Option<ManifestRow>>,
}

#[derive(Default)]
struct Inner {
    repos: HashMap<RepoName, RepoEntries>,
    entries: usize,
}

pub struct ResolveCache {
    inner: Mutex<Inner>,
}

/// The token a resolution was (or is about to be) read under.
pub struct ReadToken(ScopeToken);

impl ResolveCache {
    pub fn new() -> Self {
        ResolveCache {
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The cached resolution of `reference` in `repo`, if one is valid
    /// now; otherwise the token to [`put`](Self::put) the fresh one with.
    pub fn get(
        &self,
        feed: &ChangeFeed,
        repo: &RepoName,
        reference: &Reference,
    ) -> Result<Option<ManifestRow>, ReadToken> {
        let token = feed.token(&repo_scope(repo.as_str()));
        let inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match inner.repos.get(repo) {
            Some(e) if e.token == token => match e.refs.get(reference) {
                Some(hit) => Ok(hit.clone()),
                None => Err(ReadToken(token)),
            },
            _ => Err(ReadToken(token)),
        }
    }

    /// Keeps a resolution read from the store after `token` was taken.
    pub fn put(
        &self,
        token: ReadToken,
        repo: &RepoName,
        reference: &Reference,
        row: Option<ManifestRow>,
    ) {
        let token = token.0;
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if inner.entries >= MAX_ENTRIES {
            inner.repos.clear();
            inner.entries = 0;
        }
        let Inner { repos, entries } = &mut *inner;
        let e = repos.entry(repo.clone()).or_insert_with(|| RepoEntries {
            token,
            refs: HashMap::new(),
        });
        if e.token != token {
            // Read under another token (older or newer): the repository's
            // entries start again from this one.
            *entries = entries.saturating_sub(e.refs.len());
            e.refs.clear();
            e.token = token;
        }
        if e.refs.insert(reference.clone(), row).is_none() {
            *entries += 1;
        }
    }
}

impl Default for ResolveCache {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::oci::{Digest, Tag};

    fn row(hex: char) -> ManifestRow {
        ManifestRow {
            digest: Digest::parse(&format!("sha256:{}", hex.to_string().repeat(64))).unwrap(),
            media_type: "application/vnd.oci.image.manifest.v1+json".into(),
            size: 10,
            linked_at: 0,
        }
    }

    #[test]
    fn an_entry_is_used_until_its_repository_publishes_a_change() {
        let feed = ChangeFeed::default();
        let cache = ResolveCache::new();
        let a = RepoName::parse("team/a").unwrap();
        let b = RepoName::parse("team/b").unwrap();
        let latest = Reference::Tag(Tag::parse("latest").unwrap());
        let t = cache.get(&feed, &a, &latest).unwrap_err();
        cache.put(t, &a, &latest, Some(row('1')));
        let t = cache.get(&feed, &b, &latest).unwrap_err();
        cache.put(t, &b, &latest, None);
        assert_eq!(cache.get(&feed, &a, &latest).ok(), Some(Some(row('1'))));
        assert_eq!(cache.get(&feed, &b, &latest).ok(), Some(None));
        // A write of another repository leaves a's entry valid.
        feed.publish(&[(repo_scope("team/b"), 1)]);
        assert_eq!(cache.get(&feed, &a, &latest).ok(), Some(Some(row('1'))));
        assert!(cache.get(&feed, &b, &latest).is_err());
        // A write of a: its entry is not used again.
        feed.publish(&[(repo_scope("team/a"), 1)]);
        assert!(cache.get(&feed, &a, &latest).is_err());
        // A reset (changes possibly missed) invalidates everything.
        let t = cache.get(&feed, &a, &latest).unwrap_err();
        cache.put(t, &a, &latest, Some(row('2')));
        assert!(cache.get(&feed, &a, &latest).is_ok());
        feed.reset();
        assert!(cache.get(&feed, &a, &latest).is_err());
    }

    #[test]
    fn a_resolution_read_before_a_write_is_not_served_after_it() {
        let feed = ChangeFeed::default();
        let cache = ResolveCache::new();
        let a = RepoName::parse("team/a").unwrap();
        let latest = Reference::Tag(Tag::parse("latest").unwrap());
        // A reader takes its token, a write publishes, then the reader
        // puts what it read (possibly the old state).
        let t = cache.get(&feed, &a, &latest).unwrap_err();
        feed.publish(&[(repo_scope("team/a"), 1)]);
        cache.put(t, &a, &latest, Some(row('1')));
        assert!(cache.get(&feed, &a, &latest).is_err());
    }

    #[test]
    fn the_cache_stays_bounded() {
        let feed = ChangeFeed::default();
        let cache = ResolveCache::new();
        let a = RepoName::parse("team/a").unwrap();
        for i in 0..(MAX_ENTRIES + 10) {
            let r = Reference::Tag(Tag::parse(&format!("t{i}")).unwrap());
            let t = cache.get(&feed, &a, &r).unwrap_err();
            cache.put(t, &a, &r, None);
        }
        let inner = cache.inner.lock().unwrap();
        assert!(inner.entries <= MAX_ENTRIES);
        assert_eq!(
            inner.entries,
            inner.repos.values().map(|e| e.refs.len()).sum::<usize>()
        );
    }
}
