//! Appending on an object store: each writer session becomes one new part
//! `paths::part(path, start)`. A session told its length up front (a
//! chunk's `Content-Length`, at most one chunk) sends the part with one PUT
//! while the bytes arrive ([`super::put_stream`]), and keeps them until
//! `sync`: that PUT cannot be retried once its body is consumed, so when it
//! fails (a store node went away mid-request) the kept bytes are sent again
//! by one retried PUT at `sync`, as a buffered part. Otherwise bytes are
//! buffered up to one chunk and written with one PUT at `sync`, and a
//! session that outgrows the chunk streams the part as a multipart upload
//! instead (bounded memory), which `sync` completes. Nothing of a session
//! is visible before `sync`, and a writer dropped unsynced stores nothing.

use std::sync::Arc;

use bytes::Bytes;
use object_store::{ObjectStoreExt, PutPayload, WriteMultipart};

use super::put_stream::StreamedPut;
use super::remote::{remote_err, Remote, CHUNK, IN_FLIGHT};
use super::signed::SignedClient;
use crate::storage::{paths, AppendWriter, StorageError, StorageResult, StorePath};

enum Pending {
    Buffered(Vec<u8>),
    /// The part's PUT, under way since its length was announced (`None`
    /// once it failed), and the session's bytes (the blocks given to it,
    /// shared, not copied), to send again at `sync` if it failed.
    Put {
        put: Option<StreamedPut>,
        kept: Vec<Bytes>,
    },
    Streaming {
        upload: WriteMultipart,
        /// Bytes handed to `upload` since the last wait for capacity.
        since_wait: usize,
    },
}

pub struct S3Append {
    remote: Remote,
    /// Sends a part's PUT while its bytes arrive; `None` when requests sign
    /// their payload (or the client could not be built): then parts are
    /// buffered.
    streamer: Option<Arc<SignedClient>>,
    path: StorePath,
    /// Where the part being written starts.
    start: u64,
    /// Bytes written to the current part so far.
    len: u64,
    pending: Option<Pending>,
    /// The announced length of the current part (`announce_len`).
    announced: Option<u64>,
    /// Whether the object has a part (if not, an empty first `sync` still
    /// creates one, as the file would exist on a filesystem).
    wrote_part: bool,
}

impl S3Append {
    pub fn new(
        remote: Remote,
        streamer: Option<Arc<SignedClient>>,
        path: StorePath,
        start: u64,
    ) -> Self {
        S3Append {
            remote,
            streamer: streamer.filter(|s| !s.signs_payload()),
            path,
            start,
            len: 0,
            announced: None,
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
        let len = self.len.saturating_add(buf.len() as u64);
        if let Some(announced) = self.announced.filter(|a| len > *a) {
            self.discard();
            return Err(self.failed(format!(
                "{len} bytes written where {announced} were announced"
            )));
        }
        let pending = match self.pending.take() {
            Some(Pending::Put { mut put, mut kept }) => {
                let block = Bytes::copy_from_slice(buf);
                kept.push(block.clone());
                if let Some(Err(detail)) = put.as_mut().map(|p| p.give(&self.remote, block)) {
                    // Cancelled by its drop; the part is PUT at `sync`.
                    tracing::warn!(path = %self.path, error = %detail, "streamed part PUT failed; its bytes are sent again at sync");
                    put = None;
                }
                Pending::Put { put, kept }
            }
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
        if let Some(announced) = self.announced.take().filter(|a| *a != self.len) {
            self.discard();
            return Err(self.failed(format!(
                "{} bytes written where {announced} were announced",
                self.len
            )));
        }
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
            Some(Pending::Put { put, kept }) => {
                // A PUT that failed before `sync` was warned of then.
                let sent = put.is_some_and(|p| {
                    p.finish(&self.remote)
                        .inspect_err(|detail| tracing::warn!(path = %self.path, error = %detail, "streamed part PUT failed; sending its bytes again"))
                        .is_ok()
                });
                if !sent {
                    let payload: PutPayload = kept.into_iter().collect();
                    self.remote
                        .wait(self.remote.store.put(&key, payload))
                        .map_err(|e| remote_err(&self.path, e))?;
                }
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

    fn announce_len(&mut self, len: u64) {
        self.announced = Some(self.len.saturating_add(len));
        let fresh = matches!(&self.pending, Some(Pending::Buffered(held)) if held.is_empty());
        let Some(streamer) = self.streamer.as_ref().filter(|_| fresh) else {
            return;
        };
        if len == 0 || len > CHUNK as u64 {
            return; // nothing to overlap, or a multipart upload
        }
        match StreamedPut::start(&self.remote, streamer, &self.part_key(), len) {
            Ok(put) => {
                self.pending = Some(Pending::Put {
                    put: Some(put),
                    kept: Vec::new(),
                })
            }
            // Buffered, as without the announcement.
            Err(e) => tracing::debug!(path = %self.path, error = %e, "part PUT not streamed"),
        }
    }
}

impl S3Append {
    /// Drops the session's unsynced bytes: a streamed PUT is cancelled
    /// (its `Drop`), a multipart upload aborted. The writer is unusable
    /// after this.
    fn discard(&mut self) {
        if let Some(Pending::Streaming { upload, .. }) = self.pending.take() {
            self.remote.io.handle().spawn(upload.abort());
        }
    }

    fn failed(&self, detail: String) -> StorageError {
        StorageError::Remote {
            path: self.path.to_string(),
            detail,
        }
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
        // Unsynced bytes are not kept; free the uploaded parts.
        self.discard();
    }
}
