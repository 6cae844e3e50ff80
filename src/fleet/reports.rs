//! Group commit of deployment reports: the reports of concurrent requests
//! are written in one transaction (one fsync for all of them), and each
//! request is answered only after that commit, so an acknowledged report
//! is durable. One writer task per process; a report waits at most for
//! the batch before it.

use tokio::sync::{mpsc, oneshot};

use crate::metadata::{DeploymentRow, Metadata};

/// Reports written in one transaction at most.
const MAX_BATCH: usize = 256;

/// Why a batch was not written: the store's failure (with whether its
/// disk is full, for the 507).
#[derive(Debug, Clone)]
pub struct WriteFailed {
    pub storage_full: bool,
    pub message: String,
}

type Pending = (DeploymentRow, oneshot::Sender<Result<(), WriteFailed>>);

pub struct ReportWriter {
    tx: mpsc::Sender<Pending>,
}

impl ReportWriter {
    /// Starts the writer task (on the current runtime).
    pub fn start(meta: Metadata) -> Self {
        let (tx, mut rx) = mpsc::channel::<Pending>(4 * MAX_BATCH);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(p) => batch.push(p),
                        Err(_) => break,
                    }
                }
                let rows: Vec<DeploymentRow> = batch.iter().map(|(r, _)| r.clone()).collect();
                let result = meta.put_deployments(&rows).await.map_err(|e| WriteFailed {
                    storage_full: e.is_storage_full(),
                    message: e.to_string(),
                });
                for (_, reply) in batch {
                    // A request that went away needs no answer.
                    let _ = reply.send(result.clone());
                }
            }
        });
        ReportWriter { tx }
    }

    /// Writes one report; returns once it is committed.
    pub async fn write(&self, row: DeploymentRow) -> Result<(), WriteFailed> {
        let stopped = || WriteFailed {
            storage_full: false,
            message: "the report writer stopped".into(),
        };
        let (reply, done) = oneshot::channel();
        self.tx.send((row, reply)).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }
}
