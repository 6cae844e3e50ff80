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
//!
//! A push fills it too ([`tee`]): the server that took a blob's upload
//! keeps the copy it made while the bytes passed, once its SHA-256 is the
//! blob's digest, so the first pull after a push does not wait for the
//! bucket.

mod tee;

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
    tees: Arc<tee::Tees>,
    /// Blobs up to this size are read whole by their readers, never with
    /// `open_file`: a push of one is not kept.
    min_len: u64,
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
    /// cache of at most `cap` bytes in front of `inner`, kept from pushes
    /// of blobs over `min_len` bytes (and up to `cap` more bytes of copies
    /// of uploads in progress).
    pub fn open(
        inner: Arc<dyn Backend>,
        dir: &Path,
        cap: u64,
        min_len: u64,
    ) -> io::Result<CachingBackend> {
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
            tees: tee::Tees::new(dir, cap),
            min_len,
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
        self.tees.forget(path);
    }

    /// After `from` became the blob `to`: the copy a push made of `from`
    /// becomes `to`'s entry if its SHA-256 is the blob's digest.
    fn keep_pushed(&self, from: &StorePath, to: &StorePath) {
        let Some(tee) = self.tees.take(from) else {
            return;
        };
        let (got, temp, len) = tee.digest();
        let keep = paths::blob_digest(to)
            .filter(|want| *want == got && len > self.min_len && len <= self.cache.cap);
        match keep {
            Some(digest) => {
                if let Err(e) = self.cache.place(digest.hex(), &temp, len) {
                    tracing::warn!(blob = %digest, error = %e, "keeping a pushed blob in the cache failed");
                    let _ = fs::remove_file(&temp);
                }
            }
            None => {
                let _ = fs::remove_file(&temp);
            }
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
            self.place(hex, &temp, len).map_err(Fill::Local)?;
            File::open(self.dir.join(hex)).map_err(Fill::Local)
        });
        match placed {
            Ok(file) => Ok(file),
            Err(e) => {
                let _ = fs::remove_file(&temp);
                Err(e)
            }
        }
    }

    /// Renames the complete, checked copy `temp` (`len` bytes) into place as
    /// the entry of `hex`, then evicts down to the cap.
    fn place(&self, hex: &str, temp: &Path, len: u64) -> io::Result<()> {
        fs::rename(temp, self.dir.join(hex))?;
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
        Ok(())
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
        let inner = self.inner.open_append(path, truncate_to)?;
        Ok(tee::TeeWriter::wrap(&self.tees, path, truncate_to, inner))
    }
    fn rename(&self, from: &StorePath, to: &StorePath) -> StorageResult<()> {
        if let Some(d) = paths::blob_digest(from) {
            self.cache.forget(d.hex());
        }
        self.forget(to);
        self.inner.rename(from, to)?;
        self.keep_pushed(from, to);
        Ok(())
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
        self.tees.forget(path);
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
        let c = CachingBackend::open(inner.clone(), cache_dir.path(), cap, 0).unwrap();
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
            .filter(|n| n != ".lock" && !n.starts_with(".tmp-"))
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

    /// Copies of uploads in the cache's folder.
    fn copies(dir: &Path) -> usize {
        fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                let e = e.as_ref().unwrap();
                e.file_name().to_string_lossy().starts_with(".tmp-")
            })
            .count()
    }

    /// Appends `chunks` to `path`, one writer (synced) per chunk, each
    /// keeping what the previous ones wrote.
    fn push(c: &CachingBackend, path: &StorePath, chunks: &[&[u8]]) {
        let mut at = 0u64;
        for chunk in chunks {
            let mut w = c.open_append(path, at).unwrap();
            w.write_all(chunk).unwrap();
            w.sync().unwrap();
            at += chunk.len() as u64;
        }
    }

    fn upload_id(n: u8) -> crate::storage::UploadId {
        crate::storage::UploadId::parse(&format!("00000000-0000-0000-0000-{n:012}")).unwrap()
    }

    /// The data path of upload number `n`.
    fn upload(n: u8) -> StorePath {
        paths::upload_data(&upload_id(n))
    }

    #[test]
    fn a_pushed_blob_is_kept_from_its_upload_and_served_without_the_store() {
        let (store, cache_dir, _inner, c) = fixture(1 << 20);
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        let up = upload(1);
        push(&c, &up, &[&data[..1000], &data[1000..2500], &data[2500..]]);
        c.rename(&up, &paths::blob(&d)).unwrap();
        assert_eq!(cached_names(cache_dir.path()), vec![d.hex().to_string()]);
        assert_eq!(c.tees.held(), 0);
        // The store's copy is gone: the pull can only be the kept copy.
        fs::remove_file(store.path().join(paths::blob(&d).as_str())).unwrap();
        assert_eq!(
            read_all(c.open_file(&paths::blob(&d)).unwrap().unwrap()),
            data
        );
    }

    #[test]
    fn a_copy_that_is_not_the_whole_object_is_never_kept() {
        let (_store, cache_dir, _inner, c) = fixture(1 << 20);
        let good = [5u8; 100];
        let d = Digest::of(&good);
        // A writer that keeps fewer bytes than the copy holds (a PATCH
        // retried over a part that was not acknowledged) ends the copy.
        let up = upload(2);
        push(&c, &up, &[&good[..60]]);
        assert_eq!(c.tees.held(), 60);
        let mut w = c.open_append(&up, 50).unwrap();
        assert_eq!(c.tees.held(), 0);
        w.write_all(&good[50..]).unwrap();
        w.sync().unwrap();
        drop(w);
        c.rename(&up, &paths::blob(&d)).unwrap();
        assert!(cached_names(cache_dir.path()).is_empty());
        // A writer dropped before its sync ends it too.
        let up = upload(3);
        let mut w = c.open_append(&up, 0).unwrap();
        w.write_all(&good).unwrap();
        assert_eq!(c.tees.held(), 100);
        drop(w);
        assert_eq!(c.tees.held(), 0);
        // ... and the next writer from the start makes a new one, which
        // a writer starting exactly at its end goes on.
        let mut w = c.open_append(&up, 0).unwrap();
        w.write_all(&good[..40]).unwrap();
        w.sync().unwrap();
        drop(w);
        push_from(&c, &up, 40, &good[40..]);
        c.rename(&up, &paths::blob(&d)).unwrap();
        assert_eq!(cached_names(cache_dir.path()), vec![d.hex().to_string()]);
        c.delete(&paths::blob(&d)).unwrap();
        // Two writers of one object at once: neither keeps a copy.
        let up = upload(4);
        let mut a = c.open_append(&up, 0).unwrap();
        let mut b = c.open_append(&up, 0).unwrap();
        a.write_all(&good).unwrap();
        b.write_all(&good).unwrap();
        a.sync().unwrap();
        b.sync().unwrap();
        drop((a, b));
        c.rename(&up, &paths::blob(&d)).unwrap();
        assert!(cached_names(cache_dir.path()).is_empty());
        // A copy whose bytes are not the blob's (renamed to another
        // digest) is dropped, not kept under that name.
        let up = upload(5);
        push(&c, &up, &[b"not the blob"]);
        c.rename(&up, &paths::blob(&d)).unwrap();
        assert!(cached_names(cache_dir.path()).is_empty());
        assert_eq!(c.tees.held(), 0);
        assert_eq!(copies(cache_dir.path()), 0);
    }

    fn push_from(c: &CachingBackend, path: &StorePath, at: u64, bytes: &[u8]) {
        let mut w = c.open_append(path, at).unwrap();
        w.write_all(bytes).unwrap();
        w.sync().unwrap();
    }

    #[test]
    fn copies_are_bounded_dropped_with_their_upload_and_small_blobs_are_not_kept() {
        let store = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        let inner: Arc<dyn Backend> = Arc::new(FsBackend::open(store.path()).unwrap());
        let c = CachingBackend::open(inner, cache_dir.path(), 100, 10).unwrap();
        // Two idle copies of 60 bytes do not fit in 100: the older goes.
        let (one, two) = (upload(6), upload(7));
        push(&c, &one, &[&[1u8; 60]]);
        // An idle copy holds no open file (sessions cannot use up the
        // process's descriptors).
        assert_eq!(c.tees.open_files(), 0);
        push(&c, &two, &[&[2u8; 60]]);
        assert_eq!(c.tees.held(), 60);
        c.rename(&one, &paths::blob(&Digest::of(&[1u8; 60])))
            .unwrap();
        assert!(cached_names(cache_dir.path()).is_empty());
        // An abandoned upload's folder takes its copy with it.
        assert_eq!(copies(cache_dir.path()), 1);
        c.delete_dir(&paths::upload_dir(&upload_id(7))).unwrap();
        assert_eq!(c.tees.held(), 0);
        assert_eq!(copies(cache_dir.path()), 0);
        assert!(cached_names(cache_dir.path()).is_empty());
        // A blob of up to `min_len` bytes is read whole, never kept.
        let small = upload(8);
        push(&c, &small, &[&[3u8; 10]]);
        c.rename(&small, &paths::blob(&Digest::of(&[3u8; 10])))
            .unwrap();
        assert!(cached_names(cache_dir.path()).is_empty());
        let big = upload(9);
        push(&c, &big, &[&[4u8; 11]]);
        c.rename(&big, &paths::blob(&Digest::of(&[4u8; 11])))
            .unwrap();
        assert_eq!(cached_names(cache_dir.path()).len(), 1);
    }

    #[test]
    fn the_folder_is_emptied_at_open_and_held_by_one_process() {
        let store = tempfile::tempdir().unwrap();
        let cache_dir = tempfile::tempdir().unwrap();
        fs::write(cache_dir.path().join("leftover"), b"torn").unwrap();
        let inner: Arc<dyn Backend> = Arc::new(FsBackend::open(store.path()).unwrap());
        let held = CachingBackend::open(inner.clone(), cache_dir.path(), 10, 0).unwrap();
        assert!(cached_names(cache_dir.path()).is_empty());
        let second = CachingBackend::open(inner.clone(), cache_dir.path(), 10, 0);
        assert!(second.is_err(), "a second holder of the folder is refused");
        drop(held);
        assert!(CachingBackend::open(inner, cache_dir.path(), 10, 0).is_ok());
    }
}
