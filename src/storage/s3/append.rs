//! Appending on an object store: each writer session becomes one new part
//! `paths::part(path, start)`. Bytes are buffered up to one chunk and
//! written with one PUT at `sync`; a session that outgrows the chunk
//! streams the part as a multipart upload instead (bounded memory), which
//! `sync` completes. Nothing of a session is visible before `sync`, and a
//! writer dropped unsynced aborts its multipart upload.

use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use super::remote::{remote_err, Remote, CHUNK, IN_FLIGHT};
use crate::storage::{paths, AppendWriter, StorageError, StorageResult, StorePath};

enum Pending {
    Buffered(Vec<u8>),
    Streaming {
        upload: WriteMultipart,
        /// Bytes handed to `upload` since the last wait for capacity.
        since_wait: usize,
    },
}

pub struct S3Append {
    remote: Remote,
    path: StorePath,
    /// Where the part being written starts.
    start: u64,
    /// Bytes written to the current part so far.
    len: u64,
    pending: Option<Pending>,
    /// Whether the object has a part (if not, an empty first `sync` still
    /// creates one, as the file would exist on a filesystem).
    wrote_part: bool,
}

impl S3Append {
    pub fn new(remote: Remote, path: StorePath, start: u64) -> Self {
        S3Append {
            remote,
            path,
            start,
            len: 0,
            pending: Some(Pending::Buffered(Vec::new())),
            // Kept parts before `start` already make the object exist.
            wrote_part: start > 0,
        }
    }

    fn part_key(&self) -> object_store::path::Path {
        self.remote.key(&paths::part(&self.path, self.start))
    }
}

impl AppendWriter for S3Append {
    fn write_all(&mut self, buf: &[u8]) -> StorageResult<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let pending = match self.pending.take() {
            Some(Pending::Buffered(mut held)) if held.len() + buf.len() <= CHUNK => {
                held.extend_from_slice(buf);
                Pending::Buffered(held)
            }
            Some(Pending::Buffered(held)) => {
                // Outgrew one PUT: stream this part as a multipart upload.
                let key = self.part_key();
                let upload = self
                    .remote
                    .wait(self.remote.store.put_multipart(&key))
                    .map_err(|e| remote_err(&self.path, e))?;
                let mut upload = WriteMultipart::new_with_chunk_size(upload, CHUNK);
                let _entered = self.remote.io.handle().enter();
                upload.write(&held);
                upload.write(buf);
                Pending::Streaming {
                    upload,
                    since_wait: held.len() + buf.len(),
                }
            }
            Some(Pending::Streaming {
                mut upload,
                mut since_wait,
            }) => {
                {
                    // Filling a chunk spawns its upload on the runtime.
                    let _entered = self.remote.io.handle().enter();
                    upload.write(buf);
                }
                since_wait += buf.len();
                if since_wait >= CHUNK {
                    // Back-pressure: at most IN_FLIGHT parts in flight.
                    let waited = self.remote.wait(upload.wait_for_capacity(IN_FLIGHT));
                    if let Err(e) = waited {
                        self.remote.io.handle().spawn(upload.abort());
                        return Err(remote_err(&self.path, e));
                    }
                    since_wait = 0;
                }
                Pending::Streaming { upload, since_wait }
            }
            None => return Err(failed_before(&self.path)),
        };
        self.len += buf.len() as u64;
        self.pending = Some(pending);
        Ok(())
    }

    fn sync(&mut self) -> StorageResult<()> {
        let key = self.part_key();
        match self.pending.take() {
            Some(Pending::Buffered(held)) => {
                if held.is_empty() && self.wrote_part {
                    self.pending = Some(Pending::Buffered(held));
                    return Ok(());
                }
                self.remote
                    .wait(self.remote.store.put(&key, PutPayload::from(held)))
                    .map_err(|e| remote_err(&self.path, e))?;
            }
            Some(Pending::Streaming { upload, .. }) => {
                // `finish` aborts the upload itself when it fails.
                self.remote
                    .wait(upload.finish())
                    .map_err(|e| remote_err(&self.path, e))?;
            }
            None => return Err(failed_before(&self.path)),
        }
        self.wrote_part = true;
        self.start += self.len;
        self.len = 0;
        self.pending = Some(Pending::Buffered(Vec::new()));
        Ok(())
    }
}

/// A writer whose upload failed is not used again.
fn failed_before(p: &StorePath) -> StorageError {
    StorageError::Remote {
        path: p.to_string(),
        detail: "an earlier write of this session failed".into(),
    }
}

impl Drop for S3Append {
    fn drop(&mut self) {
        if let Some(Pending::Streaming { upload, .. }) = self.pending.take() {
            // Unsynced bytes are not kept; free the uploaded parts.
            self.remote.io.handle().spawn(upload.abort());
        }
    }
}
