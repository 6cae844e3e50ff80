//! Copies every blob of one blob store into another: streamed in blocks,
//! hashed on the way, durable under its final name only when the bytes
//! match their digest. A blob the target already holds with the same size
//! is skipped (content-addressed: same name, same bytes). The bytes go to
//! a fresh upload folder of the target first and are renamed into place
//! (atomic on both backends), so a `kill -9` leaves at most a folder
//! without a session, which garbage collection purges.

use std::io::Read;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;

use super::super::io::{blocking, BLOCK};
use super::super::{RegistryError, RegistryResult};
use crate::oci::{Digest, Sha256Hasher};
use crate::storage::{paths, Backend, StorageError, UploadId};

/// Blobs copied at once (object stores answer each request in
/// milliseconds; a few in flight hide that).
const IN_FLIGHT: usize = 4;

/// A blob whose stored bytes do not hash to its name.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CorruptBlob {
    pub digest: String,
    pub actual: String,
    pub size: u64,
}

/// What the blob copy did.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct BlobCopyReport {
    pub copied: u64,
    pub skipped: u64,
    pub bytes_copied: u64,
    /// Source blobs whose bytes do not match their digest: not copied.
    pub corrupt: Vec<CorruptBlob>,
}

enum Outcome {
    Copied(u64),
    Skipped,
    Corrupt(CorruptBlob),
}

/// Every blob name of a store (sorted, so runs proceed alike).
fn list_blobs(b: &dyn Backend) -> RegistryResult<Vec<Digest>> {
    let mut out: Vec<Digest> = b
        .list(&paths::blobs_dir())?
        .into_iter()
        .filter(|e| !e.is_dir)
        .filter_map(|e| Digest::from_hex(&e.name))
        .collect();
    out.sort();
    Ok(out)
}

/// Copies one blob (blocking).
fn copy_one(source: &dyn Backend, target: &dyn Backend, d: &Digest) -> RegistryResult<Outcome> {
    let path = paths::blob(d);
    let Some(mut reader) = source.open_read(&path, 0)? else {
        // Listed a moment ago, and the source is locked: damage.
        return Err(RegistryError::Internal(format!(
            "blob {d} was listed but cannot be opened"
        )));
    };
    if target.size(&path)? == Some(reader.len) {
        return Ok(Outcome::Skipped);
    }
    let id = UploadId::new_random();
    let staging = paths::upload_data(&id);
    let result = (|| -> RegistryResult<Outcome> {
        let mut writer = target.open_append(&staging, 0)?;
        let mut hasher = Sha256Hasher::new();
        let mut buf = vec![0u8; BLOCK];
        let mut written = 0u64;
        loop {
            let n = match reader.reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(StorageError::io(&path, e).into()),
            };
            let block = buf.get(..n).unwrap_or_default();
            hasher.update(block);
            writer.write_all(block)?;
            written += n as u64;
        }
        writer.sync()?;
        drop(writer);
        let actual = hasher.finish();
        if &actual != d || written != reader.len {
            return Ok(Outcome::Corrupt(CorruptBlob {
                digest: d.to_string(),
                actual: actual.to_string(),
                size: written,
            }));
        }
        if written == 0 {
            // An empty object may have no data (or parts) to rename.
            target.write_atomic(&path, b"")?;
        } else {
            target.rename(&staging, &path)?;
        }
        Ok(Outcome::Copied(written))
    })();
    if let Err(e) = target.delete_dir(&paths::upload_dir(&id)) {
        tracing::warn!(error = %e, upload = %id, "staging folder left for garbage collection");
    }
    result
}

/// Copies every blob of `source` into `target`; every copied blob is
/// durable when this returns. Corrupt source blobs are reported, not
/// copied; any other failure stops the copy.
pub(super) async fn copy_blobs(
    source: Arc<dyn Backend>,
    target: Arc<dyn Backend>,
) -> RegistryResult<BlobCopyReport> {
    let listed = source.clone();
    let digests = blocking(move || list_blobs(&*listed)).await?;
    let total = digests.len();
    tracing::info!(blobs = total, "copying blobs");
    let mut outcomes = futures_util::stream::iter(digests)
        .map(|d| {
            let (s, t) = (source.clone(), target.clone());
            blocking(move || copy_one(&*s, &*t, &d))
        })
        .buffer_unordered(IN_FLIGHT);
    let mut report = BlobCopyReport::default();
    let mut done = 0usize;
    while let Some(outcome) = outcomes.next().await {
        match outcome? {
            Outcome::Copied(n) => {
                report.copied += 1;
                report.bytes_copied += n;
            }
            Outcome::Skipped => report.skipped += 1,
            Outcome::Corrupt(c) => {
                tracing::error!(digest = %c.digest, actual = %c.actual, "blob does not match its digest: not copied");
                report.corrupt.push(c);
            }
        }
        done += 1;
        if done.is_multiple_of(1000) {
            tracing::info!(done, total, "blobs");
        }
    }
    report.corrupt.sort_by(|a, b| a.digest.cmp(&b.digest));
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::FsBackend;

    fn fs(dir: &std::path::Path) -> Arc<dyn Backend> {
        Arc::new(FsBackend::open(dir).unwrap())
    }

    #[tokio::test]
    async fn blobs_are_copied_once_and_bad_bytes_never_land() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (source, target) = (fs(a.path()), fs(b.path()));
        let good = b"good bytes".to_vec();
        let big: Vec<u8> = (0..3 * BLOCK + 17).map(|i| (i % 251) as u8).collect();
        for data in [&good, &big, &Vec::new()] {
            source
                .write_atomic(&paths::blob(&Digest::of(data)), data)
                .unwrap();
        }
        let liar = Digest::of(b"what the name says");
        source
            .write_atomic(&paths::blob(&liar), b"other bytes")
            .unwrap();
        let first = copy_blobs(source.clone(), target.clone()).await.unwrap();
        assert_eq!((first.copied, first.skipped), (3, 0));
        assert_eq!(first.bytes_copied, (good.len() + big.len()) as u64);
        assert_eq!(first.corrupt.len(), 1);
        assert_eq!(first.corrupt[0].digest, liar.to_string());
        assert_eq!(target.size(&paths::blob(&liar)).unwrap(), None);
        let copied = target
            .read_small(&paths::blob(&Digest::of(&big)), u64::MAX)
            .unwrap();
        assert_eq!(copied.as_deref(), Some(&big[..]));
        assert!(target.list(&paths::uploads_dir()).unwrap().is_empty());
        let second = copy_blobs(source, target).await.unwrap();
        assert_eq!((second.copied, second.skipped), (0, 3));
    }
}
