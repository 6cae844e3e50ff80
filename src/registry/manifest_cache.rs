//! The bounded cache of verified manifest bytes by digest. Content-
//! addressed, so an entry is never stale (whether a repository may serve
//! it, and with which media type, comes from the metadata store on every
//! request); bounded by total bytes, emptied when full.

use bytes::Bytes;

use crate::oci::Digest;

#[derive(Default)]
pub struct ManifestCache {
    inner: std::sync::Mutex<CacheInner>,
}

/// Entries and their total size.
type CacheInner = (std::collections::HashMap<Digest, Bytes>, usize);

const MANIFEST_CACHE_BYTES: usize = 32 * 1024 * 1024;

impl ManifestCache {
    pub(super) fn get(&self, d: &Digest) -> Option<Bytes> {
        let guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.get(d).cloned()
    }

    pub(super) fn put(&self, d: &Digest, bytes: &Bytes) {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if guard.1.saturating_add(bytes.len()) > MANIFEST_CACHE_BYTES {
            guard.0.clear();
            guard.1 = 0;
        }
        guard.1 = guard.1.saturating_add(bytes.len());
        guard.0.insert(d.clone(), bytes.clone());
    }
}
