//! One PUT of an object whose length is known before its bytes (a chunk's
//! `Content-Length`), sent while they still arrive: the store receives a
//! chunk as the client sends it instead of after it, so acknowledging the
//! chunk waits for the store's answer only, not for a second transfer.
//!
//! The store must never keep an object the writer did not finish: the
//! last block handed over is held back until [`StreamedPut::finish`], so a
//! writer dropped before it (the client went away, the hash or the
//! metadata failed) leaves the store a body short of its `Content-Length`,
//! which it refuses; dropping also fails the body and cancels the request.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::remote::Remote;
use super::signed::{read_answer, SignedClient};

/// Blocks queued between the writer and the request: the memory of one
/// streamed PUT stays under this many body chunks.
const QUEUED_BLOCKS: usize = 8;
/// Longest the store may take to accept the next block, or to answer once
/// the body is complete, before the PUT fails (as the client's reads of
/// the store time out, `client::build`).
const STALLED: Duration = Duration::from_secs(60);

type BodyItem = Result<Bytes, io::Error>;

pub struct StreamedPut {
    body: Option<mpsc::Sender<BodyItem>>,
    /// The last block given, sent when the next one comes or at `finish`.
    held: Option<Bytes>,
    answer: JoinHandle<Result<(), String>>,
    len: u64,
    given: u64,
}

impl StreamedPut {
    /// Starts `PUT key` with `Content-Length: len` on the backend's I/O
    /// runtime; its body is what `give` hands over.
    pub fn start(
        remote: &Remote,
        signed: &Arc<SignedClient>,
        key: &Path,
        len: u64,
    ) -> Result<StreamedPut, String> {
        let url = signed.url(key, None);
        let request = signed.request(
            http::Method::PUT,
            &url,
            &[("content-length", len.to_string())],
        )?;
        let (tx, rx) = mpsc::channel::<BodyItem>(QUEUED_BLOCKS);
        let body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let answer = remote.io.handle().spawn(async move {
            let answer = request
                .body(vault_http::Body::wrap_stream(body))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let (status, text) = read_answer(answer).await?;
            if status.is_success() {
                Ok(())
            } else {
                Err(format!("PUT answered {status}: {text}"))
            }
        });
        Ok(StreamedPut {
            body: Some(tx),
            held: None,
            answer,
            len,
            given: 0,
        })
    }

    /// Hands `block` to the request; waits while the store is behind. More
    /// than the announced length is an error. A failed request cannot be
    /// retried (its body is gone): the caller keeps what it gave.
    pub fn give(&mut self, remote: &Remote, block: Bytes) -> Result<(), String> {
        let given = self.given.saturating_add(block.len() as u64);
        if given > self.len {
            return Err(format!(
                "{given} bytes written where {} were announced",
                self.len
            ));
        }
        self.given = given;
        match self.held.replace(block) {
            Some(previous) => self.send(remote, previous),
            None => Ok(()),
        }
    }

    fn send(&mut self, remote: &Remote, block: Bytes) -> Result<(), String> {
        let Some(tx) = &self.body else {
            return Err("the PUT already ended".into());
        };
        // The timer is made inside `wait`, in the I/O runtime's context.
        let sent = remote.wait(async { tokio::time::timeout(STALLED, tx.send(Ok(block))).await });
        match sent {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(_closed)) => {}
            Err(_elapsed) => {
                return Err(format!(
                    "the store took no body bytes for {} s",
                    STALLED.as_secs()
                ))
            }
        }
        // The request ended before its body: its answer says why.
        self.body = None;
        Err(match remote.wait(&mut self.answer) {
            Ok(Err(e)) => e,
            Ok(Ok(())) => "the store answered before the whole body".into(),
            Err(e) => format!("the PUT task failed: {e}"),
        })
    }

    /// Sends the held block and waits for the store's answer. Fewer bytes
    /// than announced are an error and store nothing.
    pub fn finish(mut self, remote: &Remote) -> Result<(), String> {
        if self.given != self.len {
            return Err(format!(
                "{} bytes written where {} were announced",
                self.given, self.len
            ));
        }
        if let Some(last) = self.held.take() {
            self.send(remote, last)?;
        }
        // The end of the body.
        self.body = None;
        let answer = &mut self.answer;
        match remote.wait(async { tokio::time::timeout(STALLED, answer).await }) {
            Ok(Ok(answer)) => answer,
            Ok(Err(e)) => Err(format!("the PUT task failed: {e}")),
            Err(_elapsed) => Err(format!(
                "the store did not answer within {} s of the whole body",
                STALLED.as_secs()
            )),
        }
    }
}

impl Drop for StreamedPut {
    fn drop(&mut self) {
        // Unfinished (or finished: then this changes nothing): fail the body
        // so the request ends now rather than when its connection times out.
        if let Some(tx) = self.body.take() {
            let _ = tx.try_send(Err(io::Error::other("the writer was dropped unsynced")));
        }
        self.answer.abort();
    }
}
