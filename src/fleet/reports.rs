//! Group commit of deployment reports: the reports of concurrent requests
//! are written in one transaction (one fsync for all of them), and each
//! request is answered only after that commit, so an acknowledged report
//! is durable. The batch's transaction also checks that each report's
//! host is registered (one query per batch, not one per request): a
//! report whose host is not is answered [`Written::HostNotFound`] and not
//! written, the others of its batch are. One writer task per process; a
//! report waits at most for the batch before it.

use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

use crate::metadata::{DeploymentRow, Metadata};

/// Reports written in one transaction at most.
const MAX_BATCH: usize = 256;

/// How long a batch waits at most for the reports it expects (see
/// [`Gather`]).
const MAX_GATHER: Duration = Duration::from_millis(1);

/// Why a batch was not written: the store's failure (with whether its
/// disk is full, for the 507).
#[derive(Debug, Clone)]
pub struct WriteFailed {
    pub storage_full: bool,
    pub message: String,
}

/// What became of a report that did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    /// Committed.
    Stored,
    /// Its host is not registered (at the batch's commit): not written.
    HostNotFound,
}

type Pending = (DeploymentRow, oneshot::Sender<Result<Written, WriteFailed>>);

/// Takes what is queued, up to [`MAX_BATCH`].
fn drain(rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
    while batch.len() < MAX_BATCH {
        match rx.try_recv() {
            Ok(p) => batch.push(p),
            Err(_) => break,
        }
    }
}

/// Waiting for a fuller batch. Left alone, concurrent reporters split
/// into groups that take turns (the ones answered come back while the
/// others' batch commits), so each commit carries only part of them. The
/// reporters of the last cycle (those its batch answered and those that
/// queued meanwhile) are likely back soon: a batch waits for as many,
/// but never longer than the last batch took to write (waiting is worth
/// it only while it is shorter than a commit) nor [`MAX_GATHER`]. A lone
/// reporter never waits.
#[derive(Default)]
struct Gather {
    /// The reports the last cycle saw.
    expect: usize,
    /// How long the last batch took to write.
    took: Duration,
}

impl Gather {
    async fn more(&self, rx: &mut mpsc::Receiver<Pending>, batch: &mut Vec<Pending>) {
        let want = self.expect.min(MAX_BATCH);
        if batch.len() >= want {
            return;
        }
        let deadline = tokio::time::Instant::now() + self.took.min(MAX_GATHER);
        while batch.len() < want {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(p)) => {
                    batch.push(p);
                    drain(rx, batch);
                }
                _ => break,
            }
        }
    }
}

pub struct ReportWriter {
    tx: mpsc::Sender<Pending>,
}

impl ReportWriter {
    /// Starts the writer task (on the current runtime).
    pub fn start(meta: Metadata) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(4 * MAX_BATCH);
        tokio::spawn(async move {
            let mut writer = meta.deployment_writer();
            let mut gather = Gather::default();
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                drain(&mut rx, &mut batch);
                gather.more(&mut rx, &mut batch).await;
                let rows: Vec<DeploymentRow> = batch.iter().map(|(r, _)| r.clone()).collect();
                let started = Instant::now();
                let result = writer.put(&rows).await.map_err(|e| WriteFailed {
                    storage_full: e.is_storage_full(),
                    message: e.to_string(),
                });
                gather.took = started.elapsed();
                gather.expect = batch.len() + rx.len();
                for (i, (_, reply)) in batch.into_iter().enumerate() {
                    let answer = match &result {
                        Ok(written) if written.get(i).copied().unwrap_or(false) => {
                            Ok(Written::Stored)
                        }
                        Ok(_) => Ok(Written::HostNotFound),
                        Err(e) => Err(e.clone()),
                    };
                    // A request that went away needs no answer.
                    let _ = reply.send(answer);
                }
            }
        });
        ReportWriter { tx }
    }

    /// Writes one report if its host is registered; returns once it is
    /// committed (or known not to be written).
    pub async fn write(&self, row: DeploymentRow) -> Result<Written, WriteFailed> {
        let stopped = || WriteFailed {
            storage_full: false,
            message: "the report writer stopped".into(),
        };
        let (reply, done) = oneshot::channel();
        self.tx.send((row, reply)).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}
