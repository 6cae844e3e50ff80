//! The object store as the backend sees it: store paths mapped to keys
//! under the configured prefix, the async client waited for from
//! synchronous calls, errors mapped to `StorageError`, and the few multi-request
//! operations the backend builds on (the parts of a parted object, copying
//! a sequence of byte ranges into one new object).

use std::future::Future;
use std::io;
use std::ops::Range;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    GetOptions, GetRange, ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart,
};

use super::runtime::IoRuntime;
use crate::storage::{paths, StorageError, StorageResult, StorePath};

/// Objects up to this size are written with one PUT (buffered in memory);
/// larger ones stream as a multipart upload of parts this size (S3 wants
/// at least 5 MiB for every part but the last).
pub const CHUNK: usize = 8 * 1024 * 1024;
/// Multipart parts in flight per writer: memory per writer stays under
/// `CHUNK * (IN_FLIGHT + 1)`.
pub const IN_FLIGHT: usize = 2;
/// The largest object S3 copies server-side in one request (5 GiB).
pub const MAX_COPY: u64 = 5 * 1024 * 1024 * 1024;

/// One part of a parted object.
#[derive(Debug, Clone)]
pub struct Part {
    pub start: u64,
    pub key: Path,
    pub meta: ObjectMeta,
}

impl Part {
    pub fn end(&self) -> u64 {
        self.start.saturating_add(self.meta.size)
    }
}

/// A byte range of one object, a piece of what a reader delivers or a
/// concatenation copies.
#[derive(Debug, Clone)]
pub struct Segment {
    pub key: Path,
    pub range: Range<u64>,
}

#[derive(Clone)]
pub struct Remote {
    pub store: Arc<dyn ObjectStore>,
    /// The runtime the client's I/O runs on (kept alive by every holder:
    /// the backend, its writers and readers).
    pub io: Arc<IoRuntime>,
    /// Key prefix without leading or trailing `/`; empty for none.
    pub prefix: String,
}

impl Remote {
    /// The object key of a store path.
    pub fn key(&self, p: &StorePath) -> Path {
        if self.prefix.is_empty() {
            Path::from(p.as_str())
        } else {
            Path::from(format!("{}/{}", self.prefix, p.as_str()))
        }
    }

    /// Runs an object store call to completion from the calling thread.
    pub fn wait<F: Future>(&self, f: F) -> F::Output {
        self.io.wait(f)
    }

    /// HEAD: the object's metadata, `None` if it does not exist.
    pub async fn head(&self, p: &StorePath, key: &Path) -> StorageResult<Option<ObjectMeta>> {
        match self.store.head(key).await {
            Ok(m) => Ok(Some(m)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(remote_err(p, e)),
        }
    }

    /// The parts of the parted object `p`, in order; empty if it has none.
    /// They must be contiguous from 0 (every writer session starts where
    /// the kept bytes end): a gap is reported, never read as zeros.
    pub async fn parts(&self, p: &StorePath) -> StorageResult<Vec<Part>> {
        let dir = self.key(&paths::parts_dir(p));
        let metas: Vec<ObjectMeta> = self
            .store
            .list(Some(&dir))
            .try_collect()
            .await
            .map_err(|e| remote_err(p, e))?;
        let mut parts: Vec<Part> = metas
            .into_iter()
            .filter_map(|meta| {
                let start = paths::part_start(meta.location.filename()?)?;
                Some(Part {
                    start,
                    key: meta.location.clone(),
                    meta,
                })
            })
            .collect();
        parts.sort_by_key(|part| part.start);
        Ok(parts)
    }

    /// Checks that `parts` (sorted) cover `0..end` without gap or overlap.
    pub fn check_contiguous(p: &StorePath, parts: &[Part]) -> StorageResult<u64> {
        let mut end = 0u64;
        for part in parts {
            if part.start != end {
                return Err(StorageError::Remote {
                    path: p.to_string(),
                    detail: format!(
                        "parts are not contiguous: a part starts at {} where {end} bytes end",
                        part.start
                    ),
                });
            }
            end = part.end();
        }
        Ok(end)
    }

    /// The segments that deliver `offset..` of a parted object.
    pub fn segments_from(parts: &[Part], offset: u64) -> Vec<Segment> {
        parts
            .iter()
            .filter(|part| part.end() > offset && part.meta.size > 0)
            .map(|part| Segment {
                key: part.key.clone(),
                range: offset.saturating_sub(part.start)..part.meta.size,
            })
            .collect()
    }

    /// Deletes objects by key, in batches (DeleteObjects).
    pub async fn delete_keys(&self, p: &StorePath, keys: Vec<Path>) -> StorageResult<()> {
        if keys.is_empty() {
            return Ok(());
        }
        let locations = futures_util::stream::iter(keys.into_iter().map(Ok)).boxed();
        self.store
            .delete_stream(locations)
            .try_collect::<Vec<Path>>()
            .await
            .map_err(|e| remote_err(p, e))?;
        Ok(())
    }

    /// Writes the bytes of `segments`, in order, as the one object `to`:
    /// a single PUT when they fit in one chunk, else a streaming multipart
    /// upload (memory bounded by `CHUNK * (IN_FLIGHT + 1)`). `to` appears
    /// only complete.
    pub async fn concat(
        &self,
        p: &StorePath,
        segments: &[Segment],
        to: &Path,
    ) -> StorageResult<()> {
        let total: u64 = segments.iter().map(|s| s.range.end - s.range.start).sum();
        if total <= CHUNK as u64 {
            let buf = self.read_all(p, segments).await?;
            self.store
                .put(to, PutPayload::from(buf))
                .await
                .map_err(|e| remote_err(p, e))?;
            return Ok(());
        }
        let upload = self
            .store
            .put_multipart(to)
            .await
            .map_err(|e| remote_err(p, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, CHUNK);
        match self.copy_into(p, segments, &mut writer).await {
            Ok(()) => {
                writer.finish().await.map_err(|e| remote_err(p, e))?;
                Ok(())
            }
            Err(e) => {
                let _ = writer.abort().await;
                Err(e)
            }
        }
    }

    async fn copy_into(
        &self,
        p: &StorePath,
        segments: &[Segment],
        writer: &mut WriteMultipart,
    ) -> StorageResult<()> {
        for seg in segments {
            let want = seg.range.end - seg.range.start;
            if want == 0 {
                continue;
            }
            let mut stream = self
                .store
                .get_opts(&seg.key, ranged(seg))
                .await
                .map_err(|e| remote_err(p, e))?
                .into_stream();
            let mut got = 0u64;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| remote_err(p, e))?;
                got = got.saturating_add(chunk.len() as u64);
                writer
                    .wait_for_capacity(IN_FLIGHT)
                    .await
                    .map_err(|e| remote_err(p, e))?;
                writer.put(chunk);
            }
            if got != want {
                return Err(short_read(p, &seg.key, want, got));
            }
        }
        Ok(())
    }

    /// The bytes of `segments`, in order, in memory (only for small ones).
    pub async fn read_all(&self, p: &StorePath, segments: &[Segment]) -> StorageResult<Vec<u8>> {
        let total: u64 = segments.iter().map(|s| s.range.end - s.range.start).sum();
        let mut buf = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
        for seg in segments {
            buf.extend_from_slice(&self.get_range(p, seg).await?);
        }
        Ok(buf)
    }

    /// One segment's bytes, whole (only for segments known to be small).
    async fn get_range(&self, p: &StorePath, seg: &Segment) -> StorageResult<Bytes> {
        let want = seg.range.end - seg.range.start;
        if want == 0 {
            return Ok(Bytes::new());
        }
        let bytes = self
            .store
            .get_opts(&seg.key, ranged(seg))
            .await
            .map_err(|e| remote_err(p, e))?
            .bytes()
            .await
            .map_err(|e| remote_err(p, e))?;
        if bytes.len() as u64 != want {
            return Err(short_read(p, &seg.key, want, bytes.len() as u64));
        }
        Ok(bytes)
    }
}

/// GET options for exactly a segment's range.
pub fn ranged(seg: &Segment) -> GetOptions {
    GetOptions {
        range: Some(GetRange::Bounded(seg.range.clone())),
        ..GetOptions::default()
    }
}

pub fn short_read(p: &StorePath, key: &Path, want: u64, got: u64) -> StorageError {
    StorageError::Remote {
        path: p.to_string(),
        detail: format!("{key} delivered {got} of {want} bytes (changed while read?)"),
    }
}

/// Maps a client error: not-found keeps its meaning (an `Io` error of kind
/// `NotFound`, as the filesystem reports it); everything else is `Remote`.
pub fn remote_err(p: &StorePath, e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { .. } => {
            StorageError::io(p, io::Error::new(io::ErrorKind::NotFound, "no such object"))
        }
        e => StorageError::Remote {
            path: p.to_string(),
            detail: e.to_string(),
        },
    }
}
