//! A fault-injecting `Backend` wrapper for tests: it forwards to a real
//! backend until a byte budget for writes is spent, then fails every write
//! with a chosen OS error (ENOSPC by default), like a disk that fills up.
//! Small objects (`write_atomic`) fail whole, as the filesystem backend's
//! temp-file guard makes them; appends write up to the budget and then
//! fail, leaving the partial bytes a real full disk leaves. Reads are never
//! affected.

use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::Arc;

use super::{AppendWriter, Backend, Entry, ObjectReader, StorageError, StorageResult, StorePath};

/// `ENOSPC` on Linux.
pub const ENOSPC: i32 = 28;
/// `EIO` on Linux.
pub const EIO: i32 = 5;

const UNLIMITED: u64 = u64::MAX;

#[derive(Default)]
struct Faults {
    /// Bytes that may still be written; `UNLIMITED` when no fault is armed.
    budget: AtomicU64,
    errno: AtomicI32,
}

impl Faults {
    /// Takes up to `want` bytes of the budget; returns how many were given.
    fn take(&self, want: u64) -> u64 {
        let mut cur = self.budget.load(Ordering::SeqCst);
        loop {
            if cur == UNLIMITED {
                return want;
            }
            let give = want.min(cur);
            match self
                .budget
                .compare_exchange(cur, cur - give, Ordering::SeqCst, Ordering::SeqCst)
            {
                Ok(_) => return give,
                Err(now) => cur = now,
            }
        }
    }

    fn exhausted(&self) -> bool {
        self.budget.load(Ordering::SeqCst) == 0
    }

    fn error(&self, path: &StorePath) -> StorageError {
        StorageError::io(
            path,
            std::io::Error::from_raw_os_error(self.errno.load(Ordering::SeqCst)),
        )
    }
}

/// Wraps a backend; cloning shares the fault settings.
#[derive(Clone)]
pub struct FaultyBackend {
    inner: Arc<dyn Backend>,
    faults: Arc<Faults>,
}

impl FaultyBackend {
    /// A wrapper that injects nothing until `fail_after` is called.
    pub fn new(inner: Arc<dyn Backend>) -> Self {
        let faults = Faults::default();
        faults.budget.store(UNLIMITED, Ordering::SeqCst);
        faults.errno.store(ENOSPC, Ordering::SeqCst);
        FaultyBackend {
            inner,
            faults: Arc::new(faults),
        }
    }

    /// Lets `bytes` more bytes be written, then fails writes with `errno`.
    pub fn fail_after(&self, bytes: u64, errno: i32) {
        self.faults.errno.store(errno, Ordering::SeqCst);
        self.faults.budget.store(bytes, Ordering::SeqCst);
    }

    /// Stops injecting faults (the disk was cleaned up).
    pub fn heal(&self) {
        self.faults.budget.store(UNLIMITED, Ordering::SeqCst);
    }
}

struct FaultyAppend {
    inner: Box<dyn AppendWriter>,
    faults: Arc<Faults>,
    path: StorePath,
}

impl AppendWriter for FaultyAppend {
    fn write_all(&mut self, buf: &[u8]) -> StorageResult<()> {
        let given = self.faults.take(buf.len() as u64) as usize;
        if given > 0 {
            self.inner.write_all(buf.get(..given).unwrap_or(buf))?;
        }
        if given < buf.len() {
            return Err(self.faults.error(&self.path));
        }
        Ok(())
    }
    fn sync(&mut self) -> StorageResult<()> {
        self.inner.sync()
    }
    fn start_writeback(&mut self) -> StorageResult<()> {
        self.inner.start_writeback()
    }
    fn announce_len(&mut self, len: u64) {
        self.inner.announce_len(len)
    }
}

impl Backend for FaultyBackend {
    fn read_small(&self, path: &StorePath, max: u64) -> StorageResult<Option<Vec<u8>>> {
        self.inner.read_small(path, max)
    }
    fn write_atomic(&self, path: &StorePath, data: &[u8]) -> StorageResult<()> {
        // All or nothing: a failed atomic write leaves no trace.
        let want = data.len() as u64;
        let given = self.faults.take(want);
        if given < want || (want == 0 && self.faults.exhausted()) {
            return Err(self.faults.error(path));
        }
        self.inner.write_atomic(path, data)
    }
    fn size(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        self.inner.size(path)
    }
    fn open_read(&self, path: &StorePath, offset: u64) -> StorageResult<Option<ObjectReader>> {
        self.inner.open_read(path, offset)
    }
    fn open_append(
        &self,
        path: &StorePath,
        truncate_to: u64,
    ) -> StorageResult<Box<dyn AppendWriter>> {
        let inner = self.inner.open_append(path, truncate_to)?;
        Ok(Box::new(FaultyAppend {
            inner,
            faults: self.faults.clone(),
            path: path.clone(),
        }))
    }
    fn rename(&self, from: &StorePath, to: &StorePath) -> StorageResult<()> {
        self.inner.rename(from, to)
    }
    fn delete(&self, path: &StorePath) -> StorageResult<bool> {
        self.inner.delete(path)
    }
    fn delete_dir(&self, path: &StorePath) -> StorageResult<()> {
        self.inner.delete_dir(path)
    }
    fn list(&self, path: &StorePath) -> StorageResult<Vec<Entry>> {
        self.inner.list(path)
    }
    fn age_secs(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        self.inner.age_secs(path)
    }
    fn probe_writable(&self) -> StorageResult<()> {
        if self.faults.exhausted() {
            return Err(self.faults.error(&StorePath::probe()));
        }
        self.inner.probe_writable()
    }
    fn touch(&self, path: &StorePath) -> StorageResult<bool> {
        self.inner.touch(path)
    }
    fn remove_stale_temps(&self, min_age_secs: u64) -> StorageResult<(u64, u64)> {
        self.inner.remove_stale_temps(min_age_secs)
    }
    fn chunk_min_length(&self) -> Option<u64> {
        self.inner.chunk_min_length()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::OciError;
    use crate::oci::{Digest, Reference, RepoName};
    use crate::registry::{Limits, Registry, RegistryError};
    use crate::storage::{paths, FsBackend};
    use axum::http::StatusCode;
    use bytes::Bytes;

    fn body(data: Vec<u8>) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> + Unpin {
        let chunks: Vec<std::io::Result<Bytes>> = data
            .chunks(64 * 1024)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures_util::stream::iter(chunks)
    }

    async fn setup() -> (tempfile::TempDir, FaultyBackend, Registry) {
        let dir = tempfile::tempdir().unwrap();
        let fs: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
        let faulty = FaultyBackend::new(fs);
        let reg = Registry::new(
            Arc::new(faulty.clone()),
            crate::metadata::Metadata::open_in_dir(dir.path())
                .await
                .unwrap(),
            Limits::default(),
        );
        (dir, faulty, reg)
    }

    fn status(e: RegistryError) -> StatusCode {
        OciError::from(e).code.status()
    }

    fn files_under(root: &std::path::Path) -> Vec<String> {
        let mut out = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    out.push(e.path().strip_prefix(root).unwrap().display().to_string());
                }
            }
        }
        out.sort();
        out
    }

    fn manifest_for(config: &[u8], layer: &[u8]) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.empty.v1+json",
                       "digest": Digest::of(config), "size": config.len()},
            "layers": [{"mediaType": "application/octet-stream",
                        "digest": Digest::of(layer), "size": layer.len()}],
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn enospc_in_monolithic_upload_is_507_and_leaves_nothing() {
        let (dir, faulty, reg) = setup().await;
        let repo = RepoName::parse("full/disk").unwrap();
        let kept = b"already stored".to_vec();
        let kept_d = Digest::of(&kept);
        reg.upload_monolithic(&repo, &kept_d, None, body(kept.clone()))
            .await
            .unwrap();
        let before = files_under(dir.path());

        faulty.fail_after(100_000, ENOSPC);
        let big = vec![7u8; 3 * 1024 * 1024];
        let d = Digest::of(&big);
        let err = reg
            .upload_monolithic(&repo, &d, None, body(big))
            .await
            .unwrap_err();
        assert_eq!(status(err), StatusCode::INSUFFICIENT_STORAGE);
        assert_eq!(reg.blob_size(&repo, &d).await.unwrap(), None);
        // No temp file, no upload folder, nothing new at all.
        assert_eq!(files_under(dir.path()), before);

        // Reads keep working on a full disk.
        let r = reg.read_blob(&repo, &kept_d, None).await.unwrap();
        assert_eq!(r.len, kept.len() as u64);
        assert!(reg.probe_writable().await.is_err());
    }

    #[tokio::test]
    async fn enospc_mid_chunk_keeps_the_session_resumable() {
        let (_dir, faulty, reg) = setup().await;
        let repo = RepoName::parse("full/chunks").unwrap();
        let data: Vec<u8> = (0..600_000u32).map(|i| (i % 251) as u8).collect();
        let d = Digest::of(&data);
        let owner = crate::registry::Principal::user("full");
        let s = reg.start_upload(&repo, &owner).await.unwrap();
        let st = reg
            .append_chunk(
                &repo,
                &s.id,
                Some(0),
                None,
                None,
                body(data[..200_000].to_vec()),
            )
            .await
            .unwrap();
        assert_eq!(st.offset, 200_000);

        faulty.fail_after(50_000, ENOSPC);
        let err = reg
            .append_chunk(
                &repo,
                &s.id,
                Some(200_000),
                None,
                None,
                body(data[200_000..400_000].to_vec()),
            )
            .await
            .unwrap_err();
        assert_eq!(status(err), StatusCode::INSUFFICIENT_STORAGE);
        // The failed chunk is not acknowledged.
        assert_eq!(
            reg.upload_status(&repo, &s.id).await.unwrap().offset,
            200_000
        );

        faulty.heal();
        reg.append_chunk(
            &repo,
            &s.id,
            Some(200_000),
            None,
            None,
            body(data[200_000..].to_vec()),
        )
        .await
        .unwrap();
        let got = reg
            .finish_upload(&repo, &s.id, &d, None, None, body(Vec::new()))
            .await
            .unwrap();
        assert_eq!(got, d);
        let mut r = reg
            .backend()
            .open_read(&paths::blob(&d), 0)
            .unwrap()
            .unwrap();
        let mut stored = Vec::new();
        std::io::Read::read_to_end(&mut r.reader, &mut stored).unwrap();
        assert_eq!(stored, data);
    }

    #[tokio::test]
    async fn enospc_on_manifest_put_is_507_and_invisible() {
        let (dir, faulty, reg) = setup().await;
        let repo = RepoName::parse("full/manifests").unwrap();
        let (config, layer) = (b"{}".to_vec(), b"layer bytes".to_vec());
        for x in [&config, &layer] {
            reg.upload_monolithic(&repo, &Digest::of(x), None, body(x.clone()))
                .await
                .unwrap();
        }
        let v1 = manifest_for(&config, &layer);
        let tag1 = Reference::parse("v1").unwrap();
        reg.put_manifest(&repo, &tag1, None, Bytes::from(v1.clone()))
            .await
            .unwrap();
        let before = files_under(dir.path());

        let mut v2: serde_json::Value = serde_json::from_slice(&v1).unwrap();
        v2["annotations"] = serde_json::json!({"x": "y"});
        let v2 = serde_json::to_vec(&v2).unwrap();
        let tag2 = Reference::parse("v2").unwrap();
        let by_digest = Reference::Digest(Digest::of(&v2));
        // Fails on the blob (the rows are written only after it).
        for budget in [0, v2.len() as u64 / 2] {
            faulty.fail_after(budget, ENOSPC);
            let err = reg
                .put_manifest(&repo, &tag2, None, Bytes::from(v2.clone()))
                .await
                .unwrap_err();
            assert_eq!(
                status(err),
                StatusCode::INSUFFICIENT_STORAGE,
                "budget {budget}"
            );
            assert!(reg.get_manifest(&repo, &tag2, &[]).await.is_err());
            // By digest it is either unknown or whole and valid.
            if let Ok(m) = reg.get_manifest(&repo, &by_digest, &[]).await {
                assert_eq!(m.bytes.as_ref(), v2.as_slice());
            }
            assert!(files_under(dir.path()).iter().all(|f| !f.contains(".tmp-")));
        }
        assert!(!files_under(dir.path())
            .iter()
            .any(|f| f.ends_with("_tags/v2")));
        assert!(before.iter().all(|f| files_under(dir.path()).contains(f)));
        // Reads of what was stored before keep working.
        let m = reg.get_manifest(&repo, &tag1, &[]).await.unwrap();
        assert_eq!(m.bytes.as_ref(), v1.as_slice());
        faulty.heal();
        reg.put_manifest(&repo, &tag2, None, Bytes::from(v2))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn other_io_errors_are_500() {
        let (_dir, faulty, reg) = setup().await;
        let repo = RepoName::parse("broken/disk").unwrap();
        faulty.fail_after(10, EIO);
        let data = vec![1u8; 1000];
        let err = reg
            .upload_monolithic(&repo, &Digest::of(&data), None, body(data))
            .await
            .unwrap_err();
        assert_eq!(status(err), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
