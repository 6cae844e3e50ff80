//! A local, size-capped cache of a remote store's large blobs: a blob
//! pulled once is kept as a file on local disk and later pulls are served
//! from it by mapping (`registry::io::mapped_stream`), so a fleet pulling
//! the same program costs the local disk, not one remote GET per host.
//!
//! Blobs are content-addressed and never change, so an entry cannot be
//! stale: it is filled only by a whole read whose SHA-256 matches its
//! name, and dropped when the store deletes or moves the blob. Whether a
//! repository may read a blob is decided before the cache is asked (the
//! metadata's reachability), so a cached copy of a deleted blob is never
//! served. The cache's files are not synced (a power loss may tear them),
//! so it is emptied at start-up; one process holds its folder (`flock`),
//! and the least recently used entries go when it is over its cap.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::{
    paths, AppendWriter, Backend, Entry, ObjectReader, StorageError, StorageResult, StorePath,
};
use crate::oci::{Digest, Sha256Hasher};

/// Wraps a remote backend with a [`BlobCache`]: every call goes to the
/// inner backend; `open_file` of a blob answers from the cache, filling it
/// on a miss.
pub struct CachingBackend {
    inner: Arc<dyn Backend>,
    cache: BlobCache,
}

struct BlobCache {
    dir: PathBuf,
    cap: u64,
    state: Mutex<CacheState>,
    /// Held for the process's lifetime: the folder is this process's.
    _lock: File,
}

#[derive(Default)]
struct CacheState {
    entries: HashMap<String, CacheEntry>,
    total: u64,
    clock: u64,
    /// One fill per blob at a time: a second reader of a missing blob waits
    /// for the first one's fill instead of fetching it again.
    filling: HashMap<String, Arc<Mutex<()>>>,
}

struct CacheEntry {
    len: u64,
    last_used: u64,
}

/// Why a fill failed: the store's read (or its bytes), or the local disk.
enum Fill {
    Remote(io::Error),
    Local(io::Error),
}

impl CachingBackend {
    /// Takes `dir` (creating it, emptying what a previous run left) for a
    /// cache of at most `cap` bytes in front of `inner`.
    pub fn open(inner: Arc<dyn Backend>, dir: &Path, cap: u64) -> io::Result<CachingBackend> {
        fs::create_dir_all(dir)?;
        let lock = File::create(dir.join(".lock"))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "blob cache {} is in use by another process (give each replica its own BPF_REGISTRY_BLOB_CACHE_DIR): {e}",
                    dir.display()
                ),
            ));
        }
        for e in fs::read_dir(dir)? {
            let e = e?;
            if e.file_name() != ".lock" {
                fs::remove_file(e.path())?;
            }
        }
        Ok(CachingBackend {
            inner,
            cache: BlobCache {
                dir: dir.to_path_buf(),
                cap,
                state: Mutex::new(CacheState::default()),
                _lock: lock,
            },
        })
    }

    /// The cached file of `digest`, filled from the inner backend on a
    /// miss; `None` if the blob does not exist or is larger than the cap.
    fn cached(&self, path: &StorePath, digest: &Digest) -> StorageResult<Option<File>> {
        let hex = digest.hex();
        if let Some(f) = self.cache.hit(hex).map_err(|e| StorageError::io(path, e))? {
            return Ok(Some(f));
        }
        let gate = self.cache.fill_gate(hex);
        let _filling = gate.lock().unwrap_or_else(|p| p.into_inner());
        let result = (|| {
            // Another reader may have filled it while this one waited.
            if let Some(f) = self.cache.hit(hex).map_err(|e| StorageError::io(path, e))? {
                return Ok(Some(f));
            }
            let Some(reader) = self.inner.open_read(path, 0)? else {
                return Ok(None);
            };
            if reader.len > self.cache.cap {
                return Ok(None);
            }
            match self.cache.fill(digest, reader) {
                Ok(f) => Ok(Some(f)),
                // The local disk failed (full, say): the blob is still in
                // the store, so it is streamed from there, uncached.
                Err(Fill::Local(e)) => {
                    tracing::warn!(blob = %digest, error = %e, "blob cache fill failed; streaming from the store");
                    Ok(None)
                }
                Err(Fill::Remote(e)) => Err(StorageError::io(path, e)),
            }
        })();
        self.cache.fill_done(hex);
        result
    }

    fn forget(&self, path: &StorePath) {
        if let Some(d) = paths::blob_digest(path) {
            self.cache.forget(d.hex());
        }
    }
}

fn lock(state: &Mutex<CacheState>) -> std::sync::MutexGuard<'_, CacheState> {
    // The state is a map and counters, consistent after every statement.
    state.lock().unwrap_or_else(|p| p.into_inner())
}

impl BlobCache {
    fn hit(&self, hex: &str) -> io::Result<Option<File>> {
        let mut st = lock(&self.state);
        st.clock += 1;
        let clock = st.clock;
        let Some(e) = st.entries.get_mut(hex) else {
            return Ok(None);
        };
        e.last_used = clock;
        match File::open(self.dir.join(hex)) {
            Ok(f) => Ok(Some(f)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if let Some(gone) = st.entries.remove(hex) {
                    st.total = st.total.saturating_sub(gone.len);
                }
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    fn fill_gate(&self, hex: &str) -> Arc<Mutex<()>> {
        lock(&self.state)
            .filling
            .entry(hex.to_string())
            .or_default()
            .clone()
    }

    fn fill_done(&self, hex: &str) {
        lock(&self.state).filling.remove(hex);
    }

    /// Copies the whole object into a temp file, hashing it; renames it
    /// into place only if its SHA-256 is `digest`, then evicts down to the
    /// cap. A mismatch is a remote error: the store's copy is corrupt.
    fn fill(&self, digest: &Digest, mut reader: ObjectReader) -> Result<File, Fill> {
        let hex = digest.hex();
        let temp = self.dir.join(paths::temp_name(hex));
        let mut out = File::create(&temp).map_err(Fill::Local)?;
        let copied = (|| {
            let mut hasher = Sha256Hasher::new();
            let mut buf = vec![0u8; 1024 * 1024];
            let mut len = 0u64;
            loop {
                let n = match reader.reader.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Fill::Remote(e)),
                };
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).map_err(Fill::Local)?;
                len += n as u64;
            }
            if hasher.finish() != *digest || len != reader.len {
                return Err(Fill::Remote(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("the stored blob does not match its digest {digest}"),
                )));
            }
            Ok(len)
        })();
        let placed = copied.and_then(|len| {
            let target = self.dir.join(hex);
            fs::rename(&temp, &target).map_err(Fill::Local)?;
            let file = File::open(&target).map_err(Fill::Local)?;
            Ok((len, file))
        });
        let (len, file) = match placed {
            Ok(placed) => placed,
            Err(e) => {
                let _ = fs::remove_file(&temp);
                return Err(e);
            }
        };
        let evicted = {
            let mut st = lock(&self.state);
            st.clock += 1;
            let last_used = st.clock;
            if let Some(old) = st
                .entries
                .insert(hex.to_string(), CacheEntry { len, last_used })
            {
                st.total = st.total.saturating_sub(old.len);
            }
            st.total = st.total.saturating_add(len);
            let mut evicted = Vec::new();
            while st.total > self.cap {
                let Some(oldest) = st
                    .entries
                    .iter()
                    .filter(|(k, _)| k.as_str() != hex)
                    .min_by_key(|(_, e)| e.last_used)
                    .map(|(k, _)| k.clone())
                else {
                    break;
                };
                if let Some(e) = st.entries.remove(&oldest) {
                    st.total = st.total.saturating_sub(e.len);
                }
                evicted.push(oldest);
            }
            evicted
        };
        // Unlinked files stay readable by pulls that have them open.
        for hex in evicted {
            let _ = fs::remove_file(self.dir.join(hex));
        }
        Ok(file)
    }

    fn forget(&self, hex: &str) {
        let gone = {
            let mut st = lock(&self.state);
            st.entries
                .remove(hex)
                .inspect(|e| st.total = st.total.saturating_sub(e.len))
        };
        if gone.is_some() {
            let _ = fs::remove_file(self.dir.join(hex));
        }
    }
}

impl Backend for CachingBackend {
    fn read_small(&self, path: &StorePath, max: u64) -> StorageResult<Option<Vec<u8>>> {
        self.inner.read_small(path, max)
    }
    fn write_atomic(&self, path: &StorePath, data: &[u8]) -> StorageResult<()> {
        self.inner.write_atomic(path, data)
    }
    fn size(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        self.inner.size(path)
    }
    fn open_read(&self, path: &StorePath, offset: u64) -> StorageResult<Option<ObjectReader>> {
        self.inner.open_read(path, offset)
    }
    fn open_file(&self, path: &StorePath) -> StorageResult<Option<File>> {
        match paths::blob_digest(path) {
            Some(d) => self.cached(path, &d),
            None => self.inner.open_file(path),
        }
    }
    fn open_append(
        &self,
        path: &StorePath,
        truncate_to: u64,
    ) -> StorageResult<Box<dyn AppendWriter>> {
        self.inner.open_append(path, truncate_to)
    }
    fn rename(&self, from: &StorePath, to: &StorePath) -> StorageResult<()> {
        self.forget(from);
        self.forget(to);
        self.inner.rename(from, to)
    }
    fn delete(&self, path: &StorePath) -> StorageResult<bool> {
        self.forget(path);
        self.inner.delete(path)
    }
    fn delete_many(&self, paths: &[StorePath]) -> StorageResult<Vec<bool>> {
        for p in paths {
            self.forget(p);
        }
        self.inner.delete_many(paths)
    }
    fn delete_dir(&self, path: &StorePath) -> StorageResult<()> {
        self.inner.delete_dir(path)
    }
    fn list(&self, path: &StorePath) -> StorageResult<Vec<Entry>> {
        self.inner.list(path)
    }
    fn chunk_min_length(&self) -> Option<u64> {
        self.inner.chunk_min_length()
    }
    fn age_secs(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        self.inner.age_secs(path)
    }
    fn probe_writable(&self) -> StorageResult<()> {
        self.inner.probe_writable()
    }
    fn touch(&self, path: &StorePath) -> StorageResult<bool> {
        self.inner.touch(path)
    }
    fn remove_stale_temps(&self, min_age_secs: u64) -> StorageResult<(u64, u64)> {
        self.inner.remove_stale_temps(min_age_secs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsBackend;

    fn blob(b: &dyn Backend, data: &[u8]) -> (StorePath, Digest) {
        let d = Digest::of(data);
        let p = paths::blob(&d);
        b.write_atomic(&p, data).unwrap();
        (p, d)
    }

    /// A store folder, a cache folder, the store and a cache of `cap`
    /// bytes in front of it.
    fn fixture(
        cap: u64,
    ) -> (
        tempfile::TempDir,
        tempfile::TempDir,
        Arc<dyn Backend>,
        CachingBackend,
    ) {
        let store = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Backend> = Arc::new(FsBackend::open(store.path()).unwrap());
        let c = CachingBackend::open(inner.clone(), cache_dir.path(), cap).unwrap();
        (store, cache_dir, inner, c)
    }

    fn read_all(mut f: File) -> Vec<u8> {
        let mut v = Vec::new();
        f.read_to_end(&mut v).unwrap();
        v
    }

    fn cached_names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".lock")
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_blob_is_filled_once_served_from_the_cache_and_evicted_least_recently_used() {
        let (store, cache_dir, inner, c) = fixture(250);
        let (pa, a) = blob(inner.as_ref(), &[1u8; 100]);
        let (pb, b) = blob(inner.as_ref(), &[2u8; 100]);
        let (pc, cd) = blob(inner.as_ref(), &[3u8; 100]);
        assert_eq!(read_all(c.open_file(&pa).unwrap().unwrap()), vec![1u8; 100]);
        // Served from the cache: the store's copy is gone, the cache's is not.
        fs::remove_file(store.path().join(pa.as_str())).unwrap();
        assert_eq!(read_all(c.open_file(&pa).unwrap().unwrap()), vec![1u8; 100]);
        c.open_file(&pb).unwrap().unwrap();
        c.open_file(&pa).unwrap().unwrap(); // a is now the most recent
        c.open_file(&pc).unwrap().unwrap(); // over 250 bytes: b goes
        let mut want = vec![a.hex().to_string(), cd.hex().to_string()];
        want.sort();
        assert_eq!(cached_names(cache_dir.path()), want);
        // A deletion through the cache drops its entry.
        c.delete(&pc).unwrap();
        assert_eq!(cached_names(cache_dir.path()), vec![a.hex().to_string()]);
        // An evicted blob is filled again; a missing one has no file.
        assert!(c.open_file(&paths::blob(&b)).unwrap().is_some());
        assert!(c
            .open_file(&paths::blob(&Digest::of(b"none")))
            .unwrap()
            .is_none());
    }

    #[test]
    fn a_corrupt_remote_blob_is_refused_and_never_cached() {
        let (_store, cache_dir, inner, c) = fixture(1 << 20);
        let (p, _) = blob(inner.as_ref(), b"the real bytes");
        inner.write_atomic(&p, b"other bytes!!!").unwrap();
        assert!(c.open_file(&p).is_err());
        assert!(cached_names(cache_dir.path()).is_empty());
    }

    #[test]
    fn a_local_disk_failure_streams_the_blob_from_the_store_instead() {
        let (_store, cache_dir, inner, c) = fixture(1 << 20);
        let (p, _) = blob(inner.as_ref(), b"some bytes");
        // The cache's folder is gone (as if its disk failed): no file, and
        // no error either; the caller streams from the store.
        fs::remove_dir_all(cache_dir.path()).unwrap();
        assert!(c.open_file(&p).unwrap().is_none());
    }

    #[test]
    fn a_blob_larger_than_the_cap_is_streamed_not_cached() {
        let (_store, _cache_dir, inner, c) = fixture(10);
        let (p, _) = blob(inner.as_ref(), &[7u8; 11]);
        assert!(c.open_file(&p).unwrap().is_none());
    }

    #[test]
    fn the_folder_is_emptied_at_open_and_held_by_one_process() {
        let store = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        fs::write(cache_dir.path().join("leftover"), b"torn").unwrap();
        let inner: Arc<dyn Backend> = Arc::new(FsBackend::open(store.path()).unwrap());
        let held = CachingBackend::open(inner.clone(), cache_dir.path(), 10).unwrap();
        assert!(cached_names(cache_dir.path()).is_empty());
        let second = CachingBackend::open(inner.clone(), cache_dir.path(), 10);
        assert!(second.is_err(), "a second holder of the folder is refused");
        drop(held);
        assert!(CachingBackend::open(inner, cache_dir.path(), 10).is_ok());
    }
}
