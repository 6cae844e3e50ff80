//! The store: a small backend trait (small objects, streaming reads with an
//! offset, append-only writers with an explicit sync, atomic rename into
//! place, listing, deletion) and the filesystem backend that implements it.
//! The trait is synchronous; services call it from blocking threads, which
//! keeps it implementable by any object store client. Two backends: the
//! filesystem ([`fs`]) and S3 ([`s3`]); [`blob_store`] picks one from the
//! configuration; [`blob_cache`] keeps a remote store's large blobs on
//! local disk for a server. `instrumented` wraps any backend to time its calls into
//! the metrics.

pub mod blob_cache;
pub mod blob_store;
/// Only the crate's own tests inject faults.
#[cfg(test)]
pub mod faulty;
pub mod fs;
mod fs_append;
pub mod instrumented;
pub mod lock;
pub mod paths;
pub mod s3;

use std::io::Read;

pub use fs::FsBackend;
pub use paths::{StorePath, UploadId};
pub use s3::S3Backend;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("i/o error on {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("object {0} is larger than the {1}-byte cap")]
    TooLarge(String, u64),
    /// A remote object store refused or failed a request (after its
    /// client's retries).
    #[error("object store error on {path}: {detail}")]
    Remote { path: String, detail: String },
}

impl StorageError {
    pub fn io(path: &StorePath, source: std::io::Error) -> Self {
        StorageError::Io {
            path: path.to_string(),
            source,
        }
    }
    /// ENOSPC or EDQUOT: the client gets 507, not a generic 500.
    pub fn is_storage_full(&self) -> bool {
        match self {
            StorageError::Io { source, .. } => {
                matches!(source.raw_os_error(), Some(28) | Some(122))
            }
            StorageError::TooLarge(..) | StorageError::Remote { .. } => false,
        }
    }
}

pub type StorageResult<T> = Result<T, StorageError>;

/// A readable object: the reader starts at the requested offset; `len` is
/// the object's whole length.
pub struct ObjectReader {
    pub reader: Box<dyn Read + Send>,
    pub len: u64,
}

/// An append-only writer (upload data). Bytes are durable only after
/// `sync`.
pub trait AppendWriter: Send {
    fn write_all(&mut self, buf: &[u8]) -> StorageResult<()>;
    fn sync(&mut self) -> StorageResult<()>;
    /// Hints that written bytes may start going to disk now (so a later
    /// `sync` waits less). A no-op where the backend has no such notion.
    fn start_writeback(&mut self) -> StorageResult<()> {
        Ok(())
    }
    /// Says that exactly `len` more bytes follow before the next `sync` (a
    /// request body's `Content-Length`), so a backend may start storing
    /// them as they arrive (S3: the part's PUT starts now). Writing more,
    /// or syncing fewer, is then an error that stores nothing.
    fn announce_len(&mut self, len: u64);
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub name: String,
    pub is_dir: bool,
}

/// The bytes of one object of [`Backend::write_objects`].
pub enum ObjectSource {
    Bytes(bytes::Bytes),
    /// An open file, read from its current position to its end (`len`
    /// bytes: a shorter file is an error).
    File {
        file: std::fs::File,
        len: u64,
    },
}

impl ObjectSource {
    /// Copies the whole source into `w` in 1 MiB blocks.
    fn copy_to(self, w: &mut dyn AppendWriter) -> StorageResult<()> {
        match self {
            ObjectSource::Bytes(b) => w.write_all(&b),
            ObjectSource::File { file, len } => {
                let mut r = file.take(len);
                let mut buf = vec![0u8; 1024 * 1024];
                let mut left = len;
                while left > 0 {
                    let n = r
                        .read(&mut buf)
                        .map_err(|e| StorageError::io(&StorePath::probe(), e))?;
                    if n == 0 {
                        return Err(StorageError::io(
                            &StorePath::probe(),
                            std::io::Error::new(
                                std::io::ErrorKind::UnexpectedEof,
                                "source file shorter than stated",
                            ),
                        ));
                    }
                    w.write_all(buf.get(..n).unwrap_or_default())?;
                    left -= n as u64;
                }
                Ok(())
            }
        }
    }
}

pub trait Backend: Send + Sync + 'static {
    /// Reads a whole small object; `None` if it does not exist.
    fn read_small(&self, path: &StorePath, max: u64) -> StorageResult<Option<Vec<u8>>>;
    /// Writes a small object atomically and durably (temp, fsync, rename,
    /// fsync dir). Readers see the old or the new content, never a mix.
    fn write_atomic(&self, path: &StorePath, data: &[u8]) -> StorageResult<()>;
    /// Writes several objects, each atomically and durably as
    /// [`write_atomic`](Self::write_atomic) does (an existing object is
    /// replaced). All are durable when this returns; none is ordered
    /// against another. The filesystem writes and syncs the files side by
    /// side and syncs each folder once; this default writes them one by
    /// one (a file source through a temp object beside its target).
    fn write_objects(&self, items: Vec<(StorePath, ObjectSource)>) -> StorageResult<()> {
        for (path, source) in items {
            match source {
                ObjectSource::Bytes(b) => self.write_atomic(&path, &b)?,
                source @ ObjectSource::File { .. } => {
                    let tmp = paths::temp_beside(&path);
                    let written = self.open_append(&tmp, 0).and_then(|mut w| {
                        source.copy_to(w.as_mut())?;
                        w.sync()
                    });
                    match written.and_then(|()| self.rename(&tmp, &path)) {
                        Ok(()) => {}
                        Err(e) => {
                            let _ = self.delete(&tmp);
                            return Err(e);
                        }
                    }
                }
            }
        }
        Ok(())
    }
    /// The object's length, `None` if it does not exist.
    fn size(&self, path: &StorePath) -> StorageResult<Option<u64>>;
    /// Opens an object for reading at `offset`.
    fn open_read(&self, path: &StorePath, offset: u64) -> StorageResult<Option<ObjectReader>>;
    /// The object as a local, immutable file, when this backend keeps it in
    /// one (the filesystem backend): blob pulls then map it and hand its
    /// pages to the socket with no copy through a read buffer. `None`
    /// (the default) means "stream it with `open_read`".
    fn open_file(&self, _path: &StorePath) -> StorageResult<Option<std::fs::File>> {
        Ok(None)
    }
    /// Opens (creating) an object for appending, first cutting it to
    /// `truncate_to` bytes so unacknowledged bytes from a crash are dropped.
    fn open_append(
        &self,
        path: &StorePath,
        truncate_to: u64,
    ) -> StorageResult<Box<dyn AppendWriter>>;
    /// Durably moves `from` to `to` (creating `to`'s folder). If `to`
    /// already exists it is replaced atomically.
    fn rename(&self, from: &StorePath, to: &StorePath) -> StorageResult<()>;
    /// Deletes an object; `false` if it did not exist.
    fn delete(&self, path: &StorePath) -> StorageResult<bool>;
    /// Deletes several objects; for each, `false` if it did not exist.
    /// Every deletion is durable when this returns (the filesystem syncs
    /// each distinct folder once, not once per object). No order among
    /// them survives a crash: a caller whose deletions must land in an
    /// order makes one call per step.
    fn delete_many(&self, paths: &[StorePath]) -> StorageResult<Vec<bool>> {
        paths.iter().map(|p| self.delete(p)).collect()
    }
    /// Deletes a folder and everything below it.
    fn delete_dir(&self, path: &StorePath) -> StorageResult<()>;
    /// Lists a folder's children (empty if it does not exist), unsorted.
    /// Internal names (`paths::is_internal`: temp files, the lock) are
    /// never listed.
    fn list(&self, path: &StorePath) -> StorageResult<Vec<Entry>>;
    /// The smallest upload chunk this store handles efficiently, advertised
    /// to clients as `OCI-Chunk-Min-Length` (smaller chunks still work).
    /// `None`: any size.
    fn chunk_min_length(&self) -> Option<u64> {
        None
    }
    /// Seconds since the object was last modified (for GC grace periods).
    fn age_secs(&self, path: &StorePath) -> StorageResult<Option<u64>>;
    /// Checks that the store accepts writes.
    fn probe_writable(&self) -> StorageResult<()>;
    /// Marks an object as just used (its age restarts at 0), so garbage
    /// collection's grace period counts from the last upload of a blob
    /// that was already stored; `false` if it does not exist. Backends
    /// without modification times may only report existence.
    fn touch(&self, path: &StorePath) -> StorageResult<bool> {
        Ok(self.size(path)?.is_some())
    }
    /// Removes temporary files of interrupted writes that are at least
    /// `min_age_secs` old (a crash leaves them behind; listings never show
    /// them), this version's and the previous one's, by the rule of
    /// `paths::is_temp_leftover`. Returns how many files and bytes went.
    fn remove_stale_temps(&self, min_age_secs: u64) -> StorageResult<(u64, u64)> {
        let _ = min_age_secs;
        Ok((0, 0))
    }
}
