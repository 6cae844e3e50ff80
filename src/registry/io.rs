//! Moving bytes between async streams and the blocking backend: the body
//! pump (hash while writing, in large blocks, on a blocking thread) and the
//! blob reader stream.

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use std::io::Read;
use std::time::{Duration, Instant};

use super::{RegistryError, RegistryResult};
use crate::oci::Sha256Hasher;
use crate::storage::AppendWriter;

/// Block size for hashing, writing and reading: large enough that the
/// per-block overhead (channel hop, syscall) is noise next to the hashing.
pub const BLOCK: usize = 1024 * 1024;

/// Bytes handed to the hashing and writing workers at a time: a quarter
/// block, so the few batches in flight hold little memory while the
/// channel hop per batch stays noise.
const PUMP_BATCH: usize = BLOCK / 4;

/// How many written bytes between writeback kicks: one block, so that
/// while a chunk arrives its bytes already go to disk and the sync that
/// acknowledges it waits only for the last block (and the file's size).
const WRITEBACK_EVERY: usize = BLOCK;

/// A blocking worker that panicked or was cancelled: an internal fault,
/// never the client's.
fn worker_failed(e: tokio::task::JoinError) -> RegistryError {
    RegistryError::Internal(format!("worker failed: {e}"))
}

/// Runs a closure on the blocking pool.
pub async fn blocking<T, F>(f: F) -> RegistryResult<T>
where
    F: FnOnce() -> RegistryResult<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(worker_failed)?
}

pub struct Pumped {
    pub hasher: Sha256Hasher,
    pub written: u64,
    pub times: PumpTimes,
}

/// Where a pump's time went, each from its start (for the upload's debug
/// event: what a chunk's milliseconds are spent on).
#[derive(Debug, Default, Clone, Copy)]
pub struct PumpTimes {
    /// The body's first bytes arrived.
    pub first_byte: Duration,
    /// The body ended.
    pub body: Duration,
    /// The last block was written (not yet synced).
    pub written: Duration,
    /// The sync returned: the bytes are durable.
    pub synced: Duration,
    /// The hash caught up with the last block.
    pub hashed: Duration,
}

impl PumpTimes {
    /// The debug event of one chunk of `upload`: its request `began`, the
    /// session was open after `opened` and the pump started after
    /// `pump_start`; the offset was recorded just now.
    pub fn log_chunk(
        &self,
        upload: &str,
        bytes: u64,
        began: Instant,
        opened: Duration,
        pump_start: Duration,
    ) {
        let pumped = pump_start + self.synced.max(self.hashed);
        tracing::debug!(
            upload,
            bytes,
            open_session_ms = ms(opened),
            open_file_ms = ms(pump_start.saturating_sub(opened)),
            first_byte_ms = ms(self.first_byte),
            body_ms = ms(self.body),
            written_ms = ms(self.written),
            synced_ms = ms(self.synced),
            hashed_ms = ms(self.hashed),
            offset_ms = ms(began.elapsed().saturating_sub(pumped)),
            total_ms = ms(began.elapsed()),
            "chunk appended (pump times from its start)"
        );
    }
}

/// Milliseconds, for debug events.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Copies a body stream into `writer`, feeding `hasher` with the same
/// bytes, and syncs. `body_len` is the body's length when the transport
/// knows it (`Content-Length`), told to the writer first. Fails with
/// `BodyTooLarge` past `max` bytes.
pub async fn pump<S>(
    mut body: S,
    body_len: Option<u64>,
    mut writer: Box<dyn AppendWriter>,
    hasher: Sha256Hasher,
    max: u64,
) -> RegistryResult<Pumped>
where
    S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
{
    let t0 = Instant::now();
    if let Some(len) = body_len.filter(|len| *len <= max) {
        writer.announce_len(len);
    }
    // Hashing and writing run on two blocking threads fed the same blocks
    // (a `Bytes` clone is a reference count), so a push costs the slower of
    // the two, not their sum.
    // A batch is the body's own chunks, unchanged (no copy), about
    // PUMP_BATCH bytes in all; two queued per worker keep both busy (more,
    // or larger batches, only raise the peak memory of a push).
    type Batch = std::sync::Arc<Vec<Bytes>>;
    let (hash_tx, mut hash_rx) = tokio::sync::mpsc::channel::<Batch>(2);
    let (write_tx, mut write_rx) = tokio::sync::mpsc::channel::<Batch>(2);
    let hash_worker = tokio::task::spawn_blocking(move || {
        let mut hasher = hasher;
        while let Some(batch) = hash_rx.blocking_recv() {
            for chunk in batch.iter() {
                hasher.update(chunk);
            }
        }
        (hasher, t0.elapsed())
    });
    let write_worker =
        tokio::task::spawn_blocking(move || -> RegistryResult<(Duration, Duration)> {
            let mut writer = writer;
            let mut unsynced = 0usize;
            while let Some(batch) = write_rx.blocking_recv() {
                for chunk in batch.iter() {
                    writer.write_all(chunk)?;
                    unsynced += chunk.len();
                }
                // Writeback of what is written starts now, while the rest
                // arrives, so the final sync has little left to wait for.
                if unsynced >= WRITEBACK_EVERY {
                    writer.start_writeback()?;
                    unsynced = 0;
                }
            }
            let written = t0.elapsed();
            writer.sync()?;
            Ok((written, t0.elapsed()))
        });
    let mut times = PumpTimes::default();
    let mut written: u64 = 0;
    let mut batch: Vec<Bytes> = Vec::new();
    let mut batch_len = 0usize;
    let mut failure: Option<RegistryError> = None;
    while let Some(chunk) = body.next().await {
        let chunk = match chunk {
            Ok(c) => c,
            Err(e) => {
                failure = Some(RegistryError::Body(e.to_string()));
                break;
            }
        };
        if written == 0 {
            times.first_byte = t0.elapsed();
        }
        written = written.saturating_add(chunk.len() as u64);
        if written > max {
            failure = Some(RegistryError::BodyTooLarge { max });
            break;
        }
        batch_len += chunk.len();
        batch.push(chunk);
        if batch_len < PUMP_BATCH {
            continue;
        }
        let full: Batch = std::sync::Arc::new(std::mem::take(&mut batch));
        batch_len = 0;
        if hash_tx.send(full.clone()).await.is_err() || write_tx.send(full).await.is_err() {
            break; // a worker failed; its error is reported below
        }
    }
    times.body = t0.elapsed();
    if failure.is_none() && !batch.is_empty() {
        let last: Batch = std::sync::Arc::new(batch);
        let _ = hash_tx.send(last.clone()).await;
        let _ = write_tx.send(last).await;
    }
    drop(hash_tx);
    drop(write_tx);
    let write_result = write_worker.await.map_err(worker_failed)?;
    let (hasher, hashed) = hash_worker.await.map_err(worker_failed)?;
    if let Some(f) = failure {
        return Err(f);
    }
    (times.written, times.synced) = write_result?;
    times.hashed = hashed;
    Ok(Pumped {
        hasher,
        written,
        times,
    })
}

/// A stream of byte blocks made on a blocking thread by `produce`, which
/// sends them into the channel it is given, at most `ahead` ahead of the
/// socket; it stops when the receiver goes away (the client left).
fn blocking_stream<F>(ahead: usize, produce: F) -> impl Stream<Item = std::io::Result<Bytes>> + Send
where
    F: FnOnce(tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(ahead);
    tokio::task::spawn_blocking(move || produce(tx));
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
}

fn shorter_than_recorded() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        "blob shorter than its recorded length",
    )
}

/// Streams `len` bytes from a blocking reader in `BLOCK`-sized chunks.
pub fn reader_stream(
    mut reader: Box<dyn Read + Send>,
    len: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    // Reads may stall (a remote store): a few blocks ahead absorb it.
    blocking_stream(4, move |tx| {
        let mut left = len;
        while left > 0 {
            let want = left.min(BLOCK as u64) as usize;
            let mut buf = Vec::with_capacity(want);
            // `take` + `read_to_end` fills the spare capacity without
            // zeroing it first.
            let filled = match (&mut reader).take(want as u64).read_to_end(&mut buf) {
                Ok(0) => Err(shorter_than_recorded()),
                Ok(n) => Ok(n),
                Err(e) => Err(e),
            };
            let filled = match filled {
                Ok(n) => n,
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            };
            left -= filled as u64;
            if tx.blocking_send(Ok(Bytes::from(buf))).is_err() {
                return; // the client went away
            }
        }
    })
}

/// Bytes per mapping of [`mapped_stream`]: a pull holds up to three (the
/// one being sent, one queued, one being mapped), all resident.
const MAP_WINDOW: u64 = BLOCK as u64 / 2;

/// Streams bytes `start..start + len` of an immutable blob file as
/// read-only mappings of `MAP_WINDOW` bytes each, populated on the blocking
/// thread: the socket write copies straight from the page cache, with no
/// `read` into a user buffer first (hyper writes each block with `writev`).
pub fn mapped_stream(
    file: std::fs::File,
    start: u64,
    len: u64,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send {
    // Mapping a window of cached pages takes a fraction of the time its
    // send does, so one window ahead keeps the socket busy; each one more
    // would be another window of the process's resident pages.
    // Pages not in the cache (a blob written by direct I/O, or evicted)
    // need no read-ahead advice: populating a window reads around it in
    // the device's read-ahead size already, and `POSIX_FADV_WILLNEED` 8 MiB
    // ahead measured slower here (cold: 707-992 against 1,230-1,946 MB/s).
    blocking_stream(1, move |tx| {
        let end = start.saturating_add(len);
        let mut at = start;
        while at < end {
            let n = (end - at).min(MAP_WINDOW);
            let window = map_window(&file, at, n);
            let failed = window.is_err();
            if tx.blocking_send(window).is_err() || failed {
                return;
            }
            at += n;
        }
    })
}

fn map_window(file: &std::fs::File, at: u64, n: u64) -> std::io::Result<Bytes> {
    // A mapping's pages past the file's end fault (SIGBUS) when touched, so
    // a file shorter than the window (a corrupt blob) is refused first.
    if file.metadata()?.len() < at.saturating_add(n) {
        return Err(shorter_than_recorded());
    }
    let n = usize::try_from(n).map_err(|_| shorter_than_recorded())?;
    // SAFETY: the mapping is read-only. A blob file is written under a temp
    // name, synced and renamed into place, and never written or truncated
    // after that; it is removed only by unlink, which keeps mapped pages
    // valid until the mapping is dropped (when the socket has sent them).
    let map = unsafe {
        memmap2::MmapOptions::new()
            .offset(at)
            .len(n)
            .populate()
            .map(file)?
    };
    Ok(Bytes::from_owner(map))
}

/// Hashes an object from a blocking reader (upload resumed after restart,
/// scrub).
pub fn hash_reader(reader: &mut dyn Read) -> std::io::Result<(crate::oci::Digest, u64)> {
    let mut hasher = Sha256Hasher::new();
    let mut buf = vec![0u8; BLOCK];
    let mut total = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(buf.get(..n).unwrap_or_default());
        total += n as u64;
    }
    Ok((hasher.finish(), total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::OciError;

    #[tokio::test]
    async fn a_worker_that_dies_is_an_internal_error_not_the_clients() {
        let e = blocking(|| -> RegistryResult<()> { panic!("worker died") })
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::Internal(_)), "{e}");
        let oci = OciError::from(e);
        assert_eq!(oci.code.status().as_u16(), 500);
        assert_eq!(oci.code.as_str(), "UNKNOWN");
        assert!(
            !oci.message.contains("worker died"),
            "detail is not returned"
        );
    }
}
