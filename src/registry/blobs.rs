//! Blob reads, ranged reads (and the `Range` header's grammar), deletion
//! (unlinking from a repository) and cross-repository mounts, with the
//! lookup of a mount's source when the client names none.

use bytes::Bytes;
use futures_util::Stream;
use std::pin::Pin;

use super::io::{blocking, mapped_stream, reader_stream};
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

/// A `Range` header this registry cannot read (416, as before: RFC 9110
/// lets a server reject an invalid ranges-specifier).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeMalformed;

/// `1*DIGIT` as a u64 (no sign, no spaces).
fn range_pos(s: &str) -> Result<u64, RangeMalformed> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RangeMalformed);
    }
    s.parse().map_err(|_| RangeMalformed)
}

impl ByteRange {
    /// Reads a `Range` header value (RFC 9110 §14.2): `Ok(Some)` is the one
    /// range to serve; `Ok(None)` means serve the whole blob, for what the
    /// RFC says to (or lets us) ignore: another range unit, a range whose
    /// last position is before its first (`bytes=5-3`), several ranges
    /// (no multipart answers here); `Err` for a header that is not a
    /// ranges-specifier at all (`bytes=abc`).
    pub fn parse(h: &str) -> Result<Option<ByteRange>, RangeMalformed> {
        let (unit, spec) = h.trim().split_once('=').ok_or(RangeMalformed)?;
        if !unit.trim().eq_ignore_ascii_case("bytes") {
            // "An origin server MUST ignore a Range header field that
            // contains a range unit it does not understand."
            return Ok(None);
        }
        let mut ranges = Vec::new();
        for one in spec.split(',') {
            let (a, b) = one.trim().split_once('-').ok_or(RangeMalformed)?;
            ranges.push(match (a.is_empty(), b.is_empty()) {
                (false, false) => {
                    let (a, b) = (range_pos(a)?, range_pos(b)?);
                    if a > b {
                        None
                    } else {
                        Some(ByteRange::FromTo(a, b))
                    }
                }
                (false, true) => Some(ByteRange::From(range_pos(a)?)),
                (true, false) => Some(ByteRange::Suffix(range_pos(b)?)),
                (true, true) => return Err(RangeMalformed),
            });
        }
        match ranges.as_slice() {
            [one] => Ok(*one),
            _ => Ok(None),
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
        if !self.meta.reachable(repo, digest).await? {
            return Ok(None);
        }
        let b = self.backend.clone();
        let blob = paths::blob(digest);
        blocking(move || Ok(b.size(&blob)?)).await
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
        let file = blocking({
            let (b, path) = (b.clone(), path.clone());
            move || Ok(b.open_file(&path)?)
        })
        .await?;
        if let Some(file) = file {
            return Ok(BlobRead {
                total,
                start,
                len,
                partial,
                body: Box::pin(mapped_stream(file, start, len)),
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
        if self.meta.unlink_blob(repo, digest).await? {
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

    /// The first repository, in name order, that `may_pull` admits and that
    /// can serve `digest`: the source of a mount without `from`. Only the
    /// admitted repositories are answered, so the answer never depends on
    /// what the caller may not see.
    pub async fn find_blob_holder(
        &self,
        digest: &Digest,
        may_pull: impl Fn(&RepoName) -> bool,
    ) -> RegistryResult<Option<RepoName>> {
        Ok(self
            .meta
            .blob_holders(digest)
            .await?
            .into_iter()
            .find(|r| may_pull(r)))
    }

    /// Records that `repo` may serve `digest`; `BlobUnknown` if the blob
    /// is not stored. The blob's grace period restarts (see `gc`).
    pub async fn link_blob(&self, repo: &RepoName, digest: &Digest) -> RegistryResult<()> {
        let guard = self.gc_write_guard().await;
        guard.note(digest);
        let linked = self.link_stored(repo, digest).await?;
        drop(guard);
        if linked {
            Ok(())
        } else {
            Err(RegistryError::BlobUnknown(digest.clone()))
        }
    }

    /// Links stored bytes into `repo`, touching them inside the link's
    /// transaction; `false` if they are gone.
    pub(super) async fn link_stored(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> RegistryResult<bool> {
        let b = self.backend.clone();
        let blob = paths::blob(digest);
        self.meta
            .link_blob(repo, digest, async move || {
                blocking(move || Ok(b.touch(&blob)?)).await
            })
            .await
    }

    /// Makes blobs durable in the store without linking them anywhere (a
    /// REST create's layer, config and manifest, written before its
    /// repository's hold and linked by [`Registry::put_manifest_linking`]).
    /// A blob already stored is touched instead (its grace period
    /// restarts). The caller pins them (`pin_for_gc`) until they are
    /// linked; the digests are the caller's own (not re-hashed here).
    pub async fn store_unlinked(
        &self,
        blobs: Vec<(Digest, crate::storage::ObjectSource)>,
    ) -> RegistryResult<()> {
        let guard = self.gc_write_guard().await;
        for (d, _) in &blobs {
            guard.note(d);
        }
        let b = self.backend.clone();
        blocking(move || {
            let mut todo = Vec::with_capacity(blobs.len());
            for (d, source) in blobs {
                let path = paths::blob(&d);
                if !b.touch(&path)? {
                    todo.push((path, source));
                }
            }
            if !todo.is_empty() {
                b.write_objects(todo)?;
            }
            Ok(())
        })
        .await?;
        drop(guard);
        Ok(())
    }

    /// Stores a small blob given whole (configs, REST-built layers) and
    /// links it into `repo`. Identical content is stored once (and its
    /// grace period restarts).
    pub async fn put_small_blob(&self, repo: &RepoName, bytes: Bytes) -> RegistryResult<Digest> {
        let digest = Digest::of(&bytes);
        let b = self.backend.clone();
        let path = paths::blob(&digest);
        let guard = self.gc_write_guard().await;
        guard.note(&digest);
        // Bytes durable before the row that makes them visible.
        blocking(move || {
            if !b.touch(&path)? {
                b.write_atomic(&path, &bytes)?;
            }
            Ok(())
        })
        .await?;
        if !self.link_stored(repo, &digest).await? {
            return Err(RegistryError::Internal(format!(
                "blob {digest} vanished while it was linked"
            )));
        }
        drop(guard);
        Ok(digest)
    }
}

#[cfg(test)]
mod tests {
    use super::ByteRange;

    #[test]
    fn ranges() {
        let p = ByteRange::parse;
        assert_eq!(p("bytes=0-9"), Ok(Some(ByteRange::FromTo(0, 9))));
        assert_eq!(p("Bytes = 3-3"), Ok(Some(ByteRange::FromTo(3, 3))));
        assert_eq!(p("bytes=5-"), Ok(Some(ByteRange::From(5))));
        assert_eq!(p("bytes=-5"), Ok(Some(ByteRange::Suffix(5))));
        // Ignored: the whole blob is served.
        assert_eq!(p("bytes=5-3"), Ok(None));
        assert_eq!(p("bytes=0-1,3-4"), Ok(None));
        assert_eq!(p("bytes=0-1, 5-3"), Ok(None));
        assert_eq!(p("items=0-1"), Ok(None));
        assert_eq!(p("items=whatever"), Ok(None));
        // Not a ranges-specifier.
        for bad in [
            "bytes=-",
            "bytes=abc",
            "bytes=1-x",
            "bytes=+1-2",
            "bytes= -",
            "bytes=0-1,abc",
            "bytes",
            "",
            "bytes=99999999999999999999-",
        ] {
            assert_eq!(p(bad), Err(super::RangeMalformed), "{bad}");
        }
        assert_eq!(ByteRange::FromTo(0, 9).resolve(5), Some((0, 5)));
        assert_eq!(ByteRange::FromTo(5, 9).resolve(5), None);
        assert_eq!(ByteRange::FromTo(3, 2).resolve(5), None);
        assert_eq!(ByteRange::Suffix(10).resolve(5), Some((0, 5)));
        assert_eq!(ByteRange::From(4).resolve(5), Some((4, 1)));
        assert_eq!(ByteRange::Suffix(0).resolve(5), None);
    }
}
