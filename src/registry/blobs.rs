//! Blob reads, ranged reads, deletion (unlinking from a repository) and
//! cross-repository mounts.

use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;

use super::io::{blocking, reader_stream};
use super::{Registry, RegistryError, RegistryResult};
use crate::oci::{Digest, RepoName};
use crate::storage::paths;

/// A `Range: bytes=` request, before the blob's length is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteRange {
    /// `bytes=a-b` (inclusive)
    FromTo(u64, u64),
    /// `bytes=a-`
    From(u64),
    /// `bytes=-n`: the last n bytes
    Suffix(u64),
}

impl ByteRange {
    /// Parses a single-range `Range` header value; `None` if malformed.
    pub fn parse(h: &str) -> Option<ByteRange> {
        let spec = h.trim().strip_prefix("bytes=")?;
        if spec.contains(',') {
            return None;
        }
        let (a, b) = spec.split_once('-')?;
        let (a, b) = (a.trim(), b.trim());
        match (a.is_empty(), b.is_empty()) {
            (false, false) => Some(ByteRange::FromTo(a.parse().ok()?, b.parse().ok()?)),
            (false, true) => Some(ByteRange::From(a.parse().ok()?)),
            (true, false) => Some(ByteRange::Suffix(b.parse().ok()?)),
            (true, true) => None,
        }
    }

    /// Resolves against a length to `(start, len)`; `None` if unsatisfiable.
    pub fn resolve(self, total: u64) -> Option<(u64, u64)> {
        match self {
            ByteRange::FromTo(a, b) if a <= b && a < total => Some((a, b.min(total - 1) - a + 1)),
            ByteRange::From(a) if a < total => Some((a, total - a)),
            ByteRange::Suffix(n) if n > 0 && total > 0 => {
                let n = n.min(total);
                Some((total - n, n))
            }
            _ => None,
        }
    }
}

pub type ByteStream = Pin<Box<dyn Stream<Item = std::io::Result<Bytes>> + Send>>;

/// An open blob: its whole length, the served slice, and its bytes.
pub struct BlobRead {
    pub total: u64,
    pub start: u64,
    pub len: u64,
    pub partial: bool,
    pub body: ByteStream,
}

impl Registry {
    /// Whether `digest` is reachable from `repo` (as a layer/config blob or
    /// as a manifest), and its size if so.
    pub async fn blob_size(&self, repo: &RepoName, digest: &Digest) -> RegistryResult<Option<u64>> {
        let b = self.backend.clone();
        let (layer, manifest, blob) = (
            paths::layer_link(repo, digest),
            paths::manifest_link(repo, digest),
            paths::blob(digest),
        );
        blocking(move || {
            if b.size(&layer)?.is_none() && b.size(&manifest)?.is_none() {
                return Ok(None);
            }
            Ok(b.size(&blob)?)
        })
        .await
    }

    /// Opens a blob of `repo` for reading, optionally a range of it.
    pub async fn read_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> RegistryResult<BlobRead> {
        if self.blob_size(repo, digest).await?.is_none() {
            return Err(RegistryError::BlobUnknown(digest.clone()));
        }
        self.read_blob_unchecked(digest, range).await
    }

    /// Opens a blob by digest without a repository check (the REST facade
    /// resolved the repository already).
    pub async fn read_blob_unchecked(
        &self,
        digest: &Digest,
        range: Option<ByteRange>,
    ) -> RegistryResult<BlobRead> {
        let b = self.backend.clone();
        let path = paths::blob(digest);
        let total = blocking({
            let (b, path) = (b.clone(), path.clone());
            move || Ok(b.size(&path)?)
        })
        .await?
        .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))?;
        let (start, len, partial) = match range {
            None => (0, total, false),
            Some(r) => {
                let (s, l) = r
                    .resolve(total)
                    .ok_or(RegistryError::RangeNotSatisfiable { total })?;
                (s, l, true)
            }
        };
        if total <= super::scrub::VERIFY_ON_READ_MAX {
            // Small blobs are read whole and verified before any byte is
            // sent: a corrupt one is a 500, never served as valid.
            let max = super::scrub::VERIFY_ON_READ_MAX;
            let bytes = blocking(move || Ok(b.read_small(&path, max)?))
                .await?
                .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))?;
            super::scrub::verify_read(digest, &bytes)?;
            let bytes = Bytes::from(bytes);
            let end = usize::try_from(start.saturating_add(len))
                .unwrap_or(usize::MAX)
                .min(bytes.len());
            let slice = bytes.slice(usize::try_from(start).unwrap_or(end).min(end)..end);
            return Ok(BlobRead {
                total: bytes.len() as u64,
                start,
                len: slice.len() as u64,
                partial,
                body: Box::pin(futures_util::stream::once(async move { Ok(slice) })),
            });
        }
        let reader = blocking(move || Ok(b.open_read(&path, start)?))
            .await?
            .ok_or_else(|| RegistryError::BlobUnknown(digest.clone()))?;
        Ok(BlobRead {
            total,
            start,
            len,
            partial,
            body: Box::pin(reader_stream(reader.reader, len)),
        })
    }

    /// Unlinks a blob from a repository (`DELETE /v2/<name>/blobs/<digest>`).
    /// The bytes stay until garbage collection finds nothing else uses them.
    pub async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> RegistryResult<()> {
        let b = self.backend.clone();
        let link = paths::layer_link(repo, digest);
        let existed = blocking(move || Ok(b.delete(&link)?)).await?;
        if existed {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown(digest.clone()))
        }
    }

    /// Links a blob of `from` into `repo`; `false` if `from` does not have it.
    pub async fn mount_blob(
        &self,
        repo: &RepoName,
        from: &RepoName,
        digest: &Digest,
    ) -> RegistryResult<bool> {
        if self.blob_size(from, digest).await?.is_none() {
            return Ok(false);
        }
        match self.link_blob(repo, digest).await {
            Ok(()) => Ok(true),
            // Collected since the check: the client uploads it instead.
            Err(RegistryError::BlobUnknown(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Records that `repo` may serve `digest`; `BlobUnknown` if the blob
    /// is not stored. The blob's grace period restarts (see `gc`).
    pub async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> RegistryResult<()> {
        let b = self.backend.clone();
        let link = paths::layer_link(repo, digest);
        let blob = paths::blob(digest);
        let body = digest.to_string().into_bytes();
        let guard = self.gc_write_guard().await;
        guard.note(digest);
        let d = digest.clone();
        let r = blocking(move || {
            if !b.touch(&blob)? {
                return Err(RegistryError::BlobUnknown(d));
            }
            if b.size(&link)?.is_none() {
                b.write_atomic(&link, &body)?;
            }
            Ok(())
        })
        .await;
        drop(guard);
        r
    }

    /// Stores a small blob given whole (configs, REST-built layers) and
    /// links it into `repo`. Identical content is stored once (and its
    /// grace period restarts).
    pub async fn put_small_blob(&self, repo: &RepoName, bytes: Bytes) -> RegistryResult<Digest> {
        let digest = Digest::of(&bytes);
        let b = self.backend.clone();
        let path = paths::blob(&digest);
        let link = paths::layer_link(repo, &digest);
        let body = digest.to_string().into_bytes();
        let guard = self.gc_write_guard().await;
        guard.note(&digest);
        blocking(move || {
            if !b.touch(&path)? {
                b.write_atomic(&path, &bytes)?;
            }
            if b.size(&link)?.is_none() {
                b.write_atomic(&link, &body)?;
            }
            Ok(())
        })
        .await?;
        drop(guard);
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn ranges() {
        assert_eq!(ByteRange::parse("bytes=0-9"), Some(ByteRange::FromTo(0, 9)));
        assert_eq!(ByteRange::parse("bytes=5-"), Some(ByteRange::From(5)));
        assert_eq!(ByteRange::parse("bytes=-5"), Some(ByteRange::Suffix(5)));
        assert_eq!(ByteRange::parse("bytes=-"), None);
        assert_eq!(ByteRange::parse("bytes=0-1,3-4"), None);
        assert_eq!(ByteRange::parse("items=0-1"), None);
        assert_eq!(ByteRange::FromTo(0, 9).resolve(5), Some((0, 5)));
        assert_eq!(ByteRange::FromTo(5, 9).resolve(5), None);
        assert_eq!(ByteRange::FromTo(3, 2).resolve(5), None);
        assert_eq!(ByteRange::Suffix(10).resolve(5), Some((0, 5)));
        assert_eq!(ByteRange::From(4).resolve(5), Some((4, 1)));
        assert_eq!(ByteRange::Suffix(0).resolve(5), None);
    }
}
