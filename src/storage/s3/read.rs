//! A blocking `Read` over ranged GETs: a task on the runtime fetches the
//! segments in order and hands their bytes through a small bounded
//! channel, so a reader holds at most a few hundred KiB whatever the
//! object's size, and the network keeps flowing while the consumer works.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::remote::{ranged, Remote, Segment};
use super::runtime::IoRuntime;

/// Blocks handed over at a time; each up to `COALESCE` bytes.
const QUEUE: usize = 4;
/// Small network chunks are joined up to this size before the hand-over
/// (one wake-up of the reading thread per block, not per TCP read).
const COALESCE: usize = 256 * 1024;

/// A byte stream already opened (the first GET, whose answer told the
/// object's existence and length) or a segment still to fetch.
pub enum Source {
    Open(BoxStream<'static, object_store::Result<Bytes>>, u64),
    Fetch(Segment),
}

pub struct StreamReader {
    io: Arc<IoRuntime>,
    rx: mpsc::Receiver<io::Result<Bytes>>,
    current: Bytes,
    /// Bytes still owed; a channel that closes early is a short read.
    remaining: u64,
}

impl StreamReader {
    /// Starts fetching `sources` in order; they deliver `total` bytes.
    pub fn start(remote: &Remote, sources: Vec<Source>, total: u64) -> Self {
        let (tx, rx) = mpsc::channel(QUEUE);
        if total > 0 {
            remote.io.handle().spawn(feed(remote.clone(), sources, tx));
        }
        StreamReader {
            io: remote.io.clone(),
            rx,
            current: Bytes::new(),
            remaining: total,
        }
    }

    pub fn empty(remote: &Remote) -> Self {
        let (_, rx) = mpsc::channel(1);
        StreamReader {
            io: remote.io.clone(),
            rx,
            current: Bytes::new(),
            remaining: 0,
        }
    }
}

impl Read for StreamReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        while self.current.is_empty() {
            if self.remaining == 0 {
                return Ok(0);
            }
            let next = self.io.wait(self.rx.recv());
            match next {
                Some(Ok(block)) => self.current = block,
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "object store read ended early",
                    ))
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        self.remaining = self.remaining.saturating_sub(n as u64);
        Ok(n)
    }
}

async fn feed(remote: Remote, sources: Vec<Source>, tx: mpsc::Sender<io::Result<Bytes>>) {
    let mut pending = BytesMut::new();
    for source in sources {
        let (mut stream, want) = match source {
            Source::Open(stream, want) => (stream, want),
            Source::Fetch(seg) => {
                let want = seg.range.end - seg.range.start;
                match remote.store.get_opts(&seg.key, ranged(&seg)).await {
                    Ok(r) => (r.into_stream(), want),
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::other(e))).await;
                        return;
                    }
                }
            }
        };
        let mut got = 0u64;
        while let Some(chunk) = stream.next().await {
            let chunk = match chunk {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx.send(Err(io::Error::other(e))).await;
                    return;
                }
            };
            got = got.saturating_add(chunk.len() as u64);
            let block = if pending.is_empty() && chunk.len() >= COALESCE {
                chunk
            } else {
                pending.extend_from_slice(&chunk);
                if pending.len() < COALESCE {
                    continue;
                }
                pending.split().freeze()
            };
            if tx.send(Ok(block)).await.is_err() {
                return; // the reader was dropped
            }
        }
        if got != want {
            let _ = tx
                .send(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("object store delivered {got} of {want} bytes"),
                )))
                .await;
            return;
        }
    }
    if !pending.is_empty() {
        let _ = tx.send(Ok(pending.freeze())).await;
    }
}
