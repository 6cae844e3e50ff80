//! Fills the blob cache from a push: the bytes appended to an object (an
//! upload's data) are copied into a local file and hashed as they pass, so
//! when the object is renamed to its blob the server that took the push
//! has the blob on local disk without reading it back from the bucket.
//!
//! A copy is kept only while it is provably the object's prefix: it grows
//! only by appends that start exactly at its end, a writer that fails or is
//! dropped unsynced ends it, and two writers of one object at once end it.
//! It becomes a cache entry only if its SHA-256 is the blob's digest, so a
//! copy that went wrong in some way not foreseen here is dropped, never
//! served. Copies are bounded in bytes (least recently used go first) and
//! dropped with their object.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::oci::{Digest, Sha256Hasher};
use crate::storage::{paths, AppendWriter, StorageResult, StorePath};

/// The copies being made, by object path.
pub(super) struct Tees {
    dir: PathBuf,
    /// Bytes all copies may hold together.
    cap: u64,
    state: Mutex<TeeState>,
}

#[derive(Default)]
struct TeeState {
    by_path: HashMap<String, Slot>,
    /// Bytes held by all copies, idle and in use.
    bytes: u64,
    clock: u64,
}

enum Slot {
    /// Between two writers of the object (a chunked upload between PATCHes).
    Idle(Tee, u64),
    /// A writer has the copy; the number tells that writer from a later one.
    Busy(u64),
}

/// A local copy of an object's first `len` bytes and their running hash.
/// Its file is open only while a writer has it: an idle copy (an upload
/// between PATCHes) holds no descriptor, so open sessions cannot use up
/// the process's files.
pub(super) struct Tee {
    file: Option<File>,
    pub(super) temp: PathBuf,
    hasher: Sha256Hasher,
    pub(super) len: u64,
}

impl Tee {
    /// The copy's digest (ending it).
    pub(super) fn digest(self) -> (Digest, PathBuf, u64) {
        (self.hasher.finish(), self.temp, self.len)
    }
}

fn lock(m: &Mutex<TeeState>) -> MutexGuard<'_, TeeState> {
    // A map and counters, consistent after every statement.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Tees {
    pub(super) fn new(dir: &Path, cap: u64) -> Arc<Tees> {
        Arc::new(Tees {
            dir: dir.to_path_buf(),
            cap,
            state: Mutex::new(TeeState::default()),
        })
    }

    /// The copy for a writer of `path` that keeps its first `truncate_to`
    /// bytes: the object's copy if it is exactly that long, a new one for
    /// an object written from its start, else none (the copy is dropped).
    fn open(&self, path: &StorePath, truncate_to: u64) -> Option<(Tee, u64)> {
        let mut st = lock(&self.state);
        st.clock += 1;
        let ticket = st.clock;
        let kept = match st.by_path.remove(path.as_str()) {
            Some(Slot::Idle(mut tee, _)) if tee.len == truncate_to => {
                match OpenOptions::new().append(true).open(&tee.temp) {
                    Ok(f) => {
                        tee.file = Some(f);
                        Some(tee)
                    }
                    Err(_) => {
                        self.end(&mut st, tee);
                        return None;
                    }
                }
            }
            Some(Slot::Idle(tee, _)) => {
                self.end(&mut st, tee);
                None
            }
            // Two writers at once: neither keeps a copy (the one in use
            // finds its slot gone when it comes back).
            Some(Slot::Busy(_)) => return None,
            None => None,
        };
        let tee = match kept {
            Some(tee) => tee,
            None if truncate_to == 0 => {
                let temp = self.dir.join(paths::temp_name("push"));
                let file = File::create(&temp).ok()?;
                Tee {
                    file: Some(file),
                    temp,
                    hasher: Sha256Hasher::new(),
                    len: 0,
                }
            }
            None => return None,
        };
        st.by_path
            .insert(path.as_str().to_string(), Slot::Busy(ticket));
        Some((tee, ticket))
    }

    /// Makes room for `n` more bytes of copies, dropping idle copies least
    /// recently used first; false if there is none to be had.
    fn reserve(&self, n: u64) -> bool {
        let mut st = lock(&self.state);
        while st.bytes.saturating_add(n) > self.cap {
            let oldest = st
                .by_path
                .iter()
                .filter_map(|(k, s)| match s {
                    Slot::Idle(_, used) => Some((k.clone(), *used)),
                    Slot::Busy(_) => None,
                })
                .min_by_key(|(_, used)| *used)
                .map(|(k, _)| k);
            let Some(Slot::Idle(tee, _)) = oldest.and_then(|k| st.by_path.remove(&k)) else {
                return false;
            };
            self.end(&mut st, tee);
        }
        st.bytes = st.bytes.saturating_add(n);
        true
    }

    /// A writer gives its copy back: kept for the next writer if the slot
    /// is still this writer's, else dropped.
    fn give_back(&self, path: &str, ticket: u64, mut tee: Tee) {
        tee.file = None;
        let mut st = lock(&self.state);
        st.clock += 1;
        let used = st.clock;
        match st.by_path.get(path) {
            Some(Slot::Busy(t)) if *t == ticket => {
                st.by_path.insert(path.to_string(), Slot::Idle(tee, used));
            }
            _ => self.end(&mut st, tee),
        }
    }

    /// A writer's copy went wrong: it and its slot go.
    fn abandon(&self, path: &str, ticket: u64, tee: Tee) {
        let mut st = lock(&self.state);
        if matches!(st.by_path.get(path), Some(Slot::Busy(t)) if *t == ticket) {
            st.by_path.remove(path);
        }
        self.end(&mut st, tee);
    }

    /// The finished copy of `path` (renamed to its blob), if one is idle.
    /// Its bytes no longer count here: the caller places or removes it.
    pub(super) fn take(&self, path: &StorePath) -> Option<Tee> {
        let mut st = lock(&self.state);
        match st.by_path.remove(path.as_str()) {
            Some(Slot::Idle(tee, _)) => {
                st.bytes = st.bytes.saturating_sub(tee.len);
                Some(tee)
            }
            Some(Slot::Busy(_)) | None => None,
        }
    }

    /// Drops the copies of `path` and of every object under it.
    pub(super) fn forget(&self, path: &StorePath) {
        let p = path.as_str();
        let under = format!("{p}/");
        let mut st = lock(&self.state);
        let gone: Vec<String> = st
            .by_path
            .keys()
            .filter(|k| k.as_str() == p || k.starts_with(&under))
            .cloned()
            .collect();
        for k in gone {
            if let Some(Slot::Idle(tee, _)) = st.by_path.remove(&k) {
                self.end(&mut st, tee);
            }
        }
    }

    fn end(&self, st: &mut TeeState, tee: Tee) {
        st.bytes = st.bytes.saturating_sub(tee.len);
        drop(tee.file);
        let _ = fs::remove_file(&tee.temp);
    }

    /// Bytes the copies hold (for tests).
    #[cfg(test)]
    pub(super) fn held(&self) -> u64 {
        lock(&self.state).bytes
    }

    /// Idle copies with an open file (for tests: there should be none).
    #[cfg(test)]
    pub(super) fn open_files(&self) -> usize {
        lock(&self.state)
            .by_path
            .values()
            .filter(|s| matches!(s, Slot::Idle(t, _) if t.file.is_some()))
            .count()
    }
}

/// An append writer that copies what it writes into the object's [`Tee`].
pub(super) struct TeeWriter {
    inner: Box<dyn AppendWriter>,
    tees: Arc<Tees>,
    path: String,
    ticket: u64,
    tee: Option<Tee>,
    /// Whether every byte written so far is synced: only then does the
    /// copy outlive this writer.
    synced: bool,
}

impl TeeWriter {
    /// Wraps `inner`, the writer of `path` keeping `truncate_to` bytes.
    pub(super) fn wrap(
        tees: &Arc<Tees>,
        path: &StorePath,
        truncate_to: u64,
        inner: Box<dyn AppendWriter>,
    ) -> Box<dyn AppendWriter> {
        match tees.open(path, truncate_to) {
            Some((tee, ticket)) => Box::new(TeeWriter {
                inner,
                tees: tees.clone(),
                path: path.as_str().to_string(),
                ticket,
                tee: Some(tee),
                synced: true,
            }),
            None => inner,
        }
    }

    fn copy(&mut self, buf: &[u8]) {
        let Some(tee) = self.tee.as_mut() else {
            return;
        };
        let copied = self.tees.reserve(buf.len() as u64) && {
            let ok = tee.file.as_mut().is_some_and(|f| f.write_all(buf).is_ok());
            // Counted as reserved whether or not the write went through.
            tee.len = tee.len.saturating_add(buf.len() as u64);
            ok
        };
        if copied {
            tee.hasher.update(buf);
        } else {
            self.drop_copy();
        }
    }

    fn drop_copy(&mut self) {
        if let Some(tee) = self.tee.take() {
            self.tees.abandon(&self.path, self.ticket, tee);
        }
    }
}

impl AppendWriter for TeeWriter {
    fn write_all(&mut self, buf: &[u8]) -> StorageResult<()> {
        self.synced = false;
        match self.inner.write_all(buf) {
            Ok(()) => {
                self.copy(buf);
                Ok(())
            }
            Err(e) => {
                self.drop_copy();
                Err(e)
            }
        }
    }

    fn sync(&mut self) -> StorageResult<()> {
        match self.inner.sync() {
            Ok(()) => {
                self.synced = true;
                Ok(())
            }
            Err(e) => {
                self.drop_copy();
                Err(e)
            }
        }
    }

    fn start_writeback(&mut self) -> StorageResult<()> {
        self.inner.start_writeback()
    }

    fn announce_len(&mut self, len: u64) {
        self.inner.announce_len(len)
    }
}

impl Drop for TeeWriter {
    fn drop(&mut self) {
        if let Some(tee) = self.tee.take() {
            if self.synced {
                self.tees.give_back(&self.path, self.ticket, tee);
            } else {
                self.tees.abandon(&self.path, self.ticket, tee);
            }
        }
    }
}
