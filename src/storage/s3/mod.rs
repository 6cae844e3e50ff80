//! The S3 backend: the store's objects in an S3 bucket (tested on Garage),
//! through the `object_store` crate, behind the same synchronous
//! [`Backend`] trait as the filesystem.
//!
//! **Keys.** A store path `p` is the key `<prefix>/p` (or `p` without a
//! prefix); folders are key prefixes, listed with the `/` delimiter.
//!
//! **How each operation keeps the filesystem's meaning on S3:**
//! - `write_atomic` is one PutObject, atomic per object on S3: readers see
//!   the old or the new object, never a mix. S3 acknowledges a write once it
//!   is durable (Garage: on a write quorum of nodes), so there is no fsync.
//! - Appending (upload data) writes parts, one object per writer session,
//!   in the internal folder `paths::parts_dir` beside the object (see
//!   [`append`]). `size`, `open_read` and `read_small` of such a path see
//!   its parts concatenated; `open_append(path, truncate_to)` first deletes
//!   the parts that start at or beyond `truncate_to` (unacknowledged bytes
//!   of a crashed or refused request) and rewrites one that crosses it
//!   (the registry never makes one: every request ends in a `sync`, so the
//!   acknowledged offset is always at a part boundary). A `truncate_to`
//!   beyond the stored bytes is an error (the filesystem would pad with
//!   zeros, which can only end in a digest mismatch), and so is a gap
//!   between parts: neither is ever read as zeros.
//! - `rename` of a parted object writes `to` from its parts (one part:
//!   server-side copy; several: one streaming multipart upload) and then
//!   deletes the parts; of a plain object, copy and delete. `to` appears
//!   only complete. After a crash between the two steps both exist; every
//!   caller tolerates that (the source is an upload purged later, or a blob
//!   quarantined again by the next scrub). No conditional write is used:
//!   Garage does not honour `If-None-Match` on PutObject.
//! - `touch` restarts an object's age with a server-side copy of the object
//!   onto itself, which gives it a new Last-Modified. Garage accepts that
//!   copy as is (verified on 2.5.0: a CopyObject of a key onto itself
//!   without `x-amz-metadata-directive` succeeds and the object's
//!   Last-Modified becomes the copy's time). AWS S3 refuses such a copy;
//!   there the backend copies the object to a temp key beside it and back.
//!   A parted object's age is its newest part's, so its last part is the
//!   one copied.
//! - `age_secs` is now minus Last-Modified (second resolution; the
//!   replicas' clocks and the store's must be NTP-synced, which GC grace
//!   periods of hours tolerate by a wide margin). A folder has no object
//!   of its own: its age is its youngest object's (what an upload folder
//!   without state is purged by).
//! - `delete` reports existence with a HEAD first (S3's DeleteObject
//!   answers the same either way); `delete_many` HEADs concurrently and
//!   deletes with batched DeleteObjects; `delete_dir` deletes every key
//!   under the prefix.
//! - `remove_stale_temps` walks the prefix for temp objects (the touch
//!   fallback's, the part rewrite's, the writability probe's) that a crash
//!   left, by the same `paths::is_temp_leftover` rule as the filesystem.
//!   An interrupted PutObject leaves nothing; an interrupted multipart
//!   upload leaves parts that no listing shows and that only the store can
//!   expire (Garage: `garage bucket cleanup-incomplete-uploads`, or an
//!   `AbortIncompleteMultipartUpload` lifecycle rule).
//!
//! **Requests.** Path-style URLs (`<endpoint>/<bucket>/<key>`), SigV4 with
//! the access key; the body's SHA-256 is signed only over plain http to
//! another host (`S3Location::sign_payload`). No whole-request timeout (a
//! blob GET lasts as long as its client reads), a 60 s read timeout, and
//! `object_store`'s retries (10, with backoff, within 3 minutes).
//!
//! The trait is synchronous; each call waits for the async client, whose
//! I/O runs on the backend's own small runtime ([`runtime`]), so it may be
//! called from any thread.

mod append;
mod client;
mod join;
mod put_stream;
mod read;
mod remote;
mod runtime;
mod signed;

use std::collections::HashSet;
use std::io;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore, ObjectStoreExt, PutPayload};

pub use self::client::{S3Credentials, S3Location};

use self::append::S3Append;
use self::read::{Source, StreamReader};
use self::remote::{remote_err, Remote, Segment, MAX_COPY};
use self::runtime::IoRuntime;
use super::{
    paths, AppendWriter, Backend, Entry, ObjectReader, StorageError, StorageResult, StorePath,
};

pub struct S3Backend {
    remote: Remote,
    /// Joins a chunked upload's parts inside the store; `None` if its
    /// HTTP client could not be built (they are joined by reading them).
    joiner: Option<join::Joiner>,
    /// Sends this backend's own signed requests (`None` if its HTTP client
    /// could not be built: parts are then joined by reading them and
    /// buffered before their PUT).
    signed: Option<Arc<signed::SignedClient>>,
    /// Renames whose parts were joined inside the store (see `joined_in_store`).
    joined: std::sync::atomic::AtomicU64,
}

impl S3Backend {
    /// Builds the client and starts its I/O runtime (no request is made;
    /// `probe_writable` checks the bucket).
    pub fn open(location: &S3Location, credentials: &S3Credentials) -> StorageResult<Self> {
        let io = IoRuntime::start().map_err(|e| StorageError::Remote {
            path: String::new(),
            detail: format!("cannot start the S3 client's runtime: {e}"),
        })?;
        let store = Arc::new(client::build(location, credentials)?);
        let signed = signed::SignedClient::new(location, credentials)
            .inspect_err(|e| tracing::warn!(error = %e, "parts of chunked uploads will be joined by reading them"))
            .ok()
            .map(Arc::new);
        let joiner = signed
            .clone()
            .map(|signed| join::Joiner::new(store.clone(), signed));
        Ok(S3Backend {
            remote: Remote {
                store,
                io: Arc::new(io),
                prefix: location.prefix.clone(),
            },
            joiner,
            signed,
            joined: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn key(&self, p: &StorePath) -> Path {
        self.remote.key(p)
    }

    /// How many renames of parted objects joined their parts inside the
    /// store (`UploadPartCopy`) rather than by reading them back.
    pub fn joined_in_store(&self) -> u64 {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// The store path relative to the prefix of a listed key, split in
    /// components.
    fn relative<'a>(&self, key: &'a Path) -> Vec<&'a str> {
        let s = key.as_ref();
        let rest = if self.remote.prefix.is_empty() {
            s
        } else {
            s.strip_prefix(self.remote.prefix.as_str())
                .and_then(|r| r.strip_prefix('/'))
                .unwrap_or(s)
        };
        rest.split('/').collect()
    }

    /// Every object under a folder, at any depth.
    async fn list_all(&self, p: &StorePath, dir: &Path) -> StorageResult<Vec<ObjectMeta>> {
        self.remote
            .store
            .list(Some(dir))
            .try_collect()
            .await
            .map_err(|e| remote_err(p, e))
    }

    /// Restarts one object's age (see the module doc); `false` if it does
    /// not exist.
    async fn touch_key(&self, p: &StorePath, key: &Path) -> StorageResult<bool> {
        let store = &self.remote.store;
        match store.copy(key, key).await {
            Ok(()) => return Ok(true),
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(_) => {}
        }
        // A store that refuses a copy onto itself: through a temp key.
        let temp = self.key(&paths::temp_beside(p));
        match store.copy(key, &temp).await {
            Ok(()) => {}
            Err(object_store::Error::NotFound { .. }) => return Ok(false),
            Err(e) => return Err(remote_err(p, e)),
        }
        let back = store.copy(&temp, key).await;
        let _ = store.delete(&temp).await;
        back.map_err(|e| remote_err(p, e))?;
        Ok(true)
    }

    /// Cuts the part `part` to its first `keep` bytes (through a temp
    /// object: a part is never read and rewritten under one key at once).
    async fn cut_part(&self, p: &StorePath, part: &remote::Part, keep: u64) -> StorageResult<()> {
        let temp = self.key(&paths::part_temp(p));
        let seg = Segment {
            key: part.key.clone(),
            range: 0..keep,
        };
        self.remote.concat(p, &[seg], &temp).await?;
        let store = &self.remote.store;
        let copied = store.copy(&temp, &part.key).await;
        let _ = store.delete(&temp).await;
        copied.map_err(|e| remote_err(p, e))
    }
}

fn age_of(meta: &ObjectMeta) -> u64 {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let modified = u64::try_from(meta.last_modified.timestamp()).unwrap_or(0);
    now.saturating_sub(modified)
}

fn not_found(p: &StorePath) -> StorageError {
    StorageError::io(p, io::Error::new(io::ErrorKind::NotFound, "no such object"))
}

/// Each PATCH of an upload is one object (a part) until the PUT joins them:
/// S3's multipart minimum keeps the number of parts, and requests, sane.
pub const CHUNK_MIN_LENGTH: u64 = 5 * 1024 * 1024;

impl Backend for S3Backend {
    fn chunk_min_length(&self) -> Option<u64> {
        Some(CHUNK_MIN_LENGTH)
    }

    fn read_small(&self, path: &StorePath, max: u64) -> StorageResult<Option<Vec<u8>>> {
        let key = self.key(path);
        self.remote.wait(async {
            match self.remote.store.get(&key).await {
                Ok(r) => {
                    // The length is known before the body is read.
                    if r.meta.size > max {
                        return Err(StorageError::TooLarge(path.to_string(), max));
                    }
                    let bytes = r.bytes().await.map_err(|e| remote_err(path, e))?;
                    if bytes.len() as u64 > max {
                        return Err(StorageError::TooLarge(path.to_string(), max));
                    }
                    return Ok(Some(bytes.to_vec()));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote_err(path, e)),
            }
            let parts = self.remote.parts(path).await?;
            if parts.is_empty() {
                return Ok(None);
            }
            let total = Remote::check_contiguous(path, &parts)?;
            if total > max {
                return Err(StorageError::TooLarge(path.to_string(), max));
            }
            let segments = Remote::segments_from(&parts, 0);
            Ok(Some(self.remote.read_all(path, &segments).await?))
        })
    }

    fn write_atomic(&self, path: &StorePath, data: &[u8]) -> StorageResult<()> {
        let key = self.key(path);
        let payload = PutPayload::from(bytes::Bytes::copy_from_slice(data));
        self.remote
            .wait(self.remote.store.put(&key, payload))
            .map(|_| ())
            .map_err(|e| remote_err(path, e))
    }

    fn size(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        let key = self.key(path);
        self.remote.wait(async {
            if let Some(meta) = self.remote.head(path, &key).await? {
                return Ok(Some(meta.size));
            }
            let parts = self.remote.parts(path).await?;
            if parts.is_empty() {
                return Ok(None);
            }
            Remote::check_contiguous(path, &parts).map(Some)
        })
    }

    fn open_read(&self, path: &StorePath, offset: u64) -> StorageResult<Option<ObjectReader>> {
        let key = self.key(path);
        let remote = &self.remote;
        remote.wait(async {
            if offset == 0 {
                // One GET: its answer gives the length and the body.
                match remote.store.get(&key).await {
                    Ok(r) => {
                        let len = r.meta.size;
                        let source = Source::Open(r.into_stream(), len);
                        return Ok(Some(ObjectReader {
                            reader: Box::new(StreamReader::start(remote, vec![source], len)),
                            len,
                        }));
                    }
                    Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(remote_err(path, e)),
                }
            } else if let Some(meta) = remote.head(path, &key).await? {
                let len = meta.size;
                if offset >= len {
                    return Ok(Some(ObjectReader {
                        reader: Box::new(StreamReader::empty(remote)),
                        len,
                    }));
                }
                let seg = Segment {
                    key,
                    range: offset..len,
                };
                let reader = StreamReader::start(remote, vec![Source::Fetch(seg)], len - offset);
                return Ok(Some(ObjectReader {
                    reader: Box::new(reader),
                    len,
                }));
            }
            let parts = remote.parts(path).await?;
            if parts.is_empty() {
                return Ok(None);
            }
            let len = Remote::check_contiguous(path, &parts)?;
            let sources = Remote::segments_from(&parts, offset)
                .into_iter()
                .map(Source::Fetch)
                .collect();
            let reader = StreamReader::start(remote, sources, len.saturating_sub(offset));
            Ok(Some(ObjectReader {
                reader: Box::new(reader),
                len,
            }))
        })
    }

    fn open_append(
        &self,
        path: &StorePath,
        truncate_to: u64,
    ) -> StorageResult<Box<dyn AppendWriter>> {
        self.remote.wait(async {
            let parts = self.remote.parts(path).await?;
            let (kept, dropped): (Vec<_>, Vec<_>) =
                parts.into_iter().partition(|part| part.start < truncate_to);
            let end = Remote::check_contiguous(path, &kept)?;
            if end < truncate_to {
                return Err(StorageError::Remote {
                    path: path.to_string(),
                    detail: format!("holds {end} bytes, fewer than the {truncate_to} to keep"),
                });
            }
            if let Some(last) = kept.last().filter(|last| last.end() > truncate_to) {
                self.cut_part(path, last, truncate_to - last.start).await?;
            }
            let keys = dropped.into_iter().map(|part| part.key).collect();
            self.remote.delete_keys(path, keys).await
        })?;
        Ok(Box::new(S3Append::new(
            self.remote.clone(),
            self.signed.clone(),
            path.clone(),
            truncate_to,
        )))
    }

    fn rename(&self, from: &StorePath, to: &StorePath) -> StorageResult<()> {
        let (from_key, to_key) = (self.key(from), self.key(to));
        let store = &self.remote.store;
        self.remote.wait(async {
            match store.copy(&from_key, &to_key).await {
                Ok(()) => {
                    return store
                        .delete(&from_key)
                        .await
                        .map_err(|e| remote_err(from, e));
                }
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(remote_err(from, e)),
            }
            let parts = self.remote.parts(from).await?;
            if parts.is_empty() {
                return Err(not_found(from));
            }
            Remote::check_contiguous(from, &parts)?;
            // An empty session (a PUT without body after the PATCHes) adds
            // an empty part; it is no reason to re-upload the bytes.
            let filled: Vec<&remote::Part> = parts.iter().filter(|p| p.meta.size > 0).collect();
            match filled.as_slice() {
                [only] if only.meta.size <= MAX_COPY => store
                    .copy(&only.key, &to_key)
                    .await
                    .map_err(|e| remote_err(from, e))?,
                filled => {
                    let joined = match &self.joiner {
                        Some(j) if join::Joiner::fits(filled) => j
                            .join(filled, &to_key)
                            .await
                            .inspect_err(|e| tracing::warn!(object = %from, error = %e, "joining parts inside the store failed; joining them by reading"))
                            .is_ok(),
                        _ => false,
                    };
                    if joined {
                        self.joined
                            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else {
                        let segments = Remote::segments_from(&parts, 0);
                        self.remote.concat(from, &segments, &to_key).await?
                    }
                }
            }
            let keys = parts.into_iter().map(|part| part.key).collect();
            self.remote.delete_keys(from, keys).await
        })
    }

    fn delete(&self, path: &StorePath) -> StorageResult<bool> {
        self.delete_many(std::slice::from_ref(path))
            .map(|existed| existed.first().copied().unwrap_or(false))
    }

    fn delete_many(&self, paths: &[StorePath]) -> StorageResult<Vec<bool>> {
        let Some(first) = paths.first() else {
            return Ok(Vec::new());
        };
        self.remote.wait(async {
            let heads: Vec<Option<ObjectMeta>> = futures_util::stream::iter(paths)
                .map(|p| async move { self.remote.head(p, &self.key(p)).await })
                .buffered(16)
                .try_collect()
                .await?;
            let mut keys = Vec::new();
            let mut existed = Vec::with_capacity(paths.len());
            for (p, head) in paths.iter().zip(heads) {
                if let Some(meta) = head {
                    keys.push(meta.location);
                    existed.push(true);
                    continue;
                }
                // Not a plain object: maybe a parted one.
                let parts = self.remote.parts(p).await?;
                existed.push(!parts.is_empty());
                keys.extend(parts.into_iter().map(|part| part.key));
            }
            self.remote.delete_keys(first, keys).await?;
            Ok(existed)
        })
    }

    fn delete_dir(&self, path: &StorePath) -> StorageResult<()> {
        let dir = self.key(path);
        self.remote.wait(async {
            let objects = self.list_all(path, &dir).await?;
            let keys = objects.into_iter().map(|m| m.location).collect();
            self.remote.delete_keys(path, keys).await
        })
    }

    fn list(&self, path: &StorePath) -> StorageResult<Vec<Entry>> {
        let dir = self.key(path);
        let listed = self
            .remote
            .wait(self.remote.store.list_with_delimiter(Some(&dir)))
            .map_err(|e| remote_err(path, e))?;
        let mut files = HashSet::new();
        let mut out = Vec::new();
        for meta in &listed.objects {
            if let Some(name) = meta.location.filename() {
                if !paths::is_internal(name) && files.insert(name.to_string()) {
                    out.push(Entry {
                        name: name.to_string(),
                        is_dir: false,
                    });
                }
            }
        }
        for prefix in &listed.common_prefixes {
            let Some(name) = prefix.filename() else {
                continue;
            };
            if let Some(object) = paths::parted_object_name(name) {
                // A parted object lists as the one file it stands for.
                if files.insert(object.to_string()) {
                    out.push(Entry {
                        name: object.to_string(),
                        is_dir: false,
                    });
                }
            } else if !paths::is_internal(name) {
                out.push(Entry {
                    name: name.to_string(),
                    is_dir: true,
                });
            }
        }
        Ok(out)
    }

    fn age_secs(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        let key = self.key(path);
        self.remote.wait(async {
            if let Some(meta) = self.remote.head(path, &key).await? {
                return Ok(Some(age_of(&meta)));
            }
            let parts = self.remote.parts(path).await?;
            if let Some(age) = parts.iter().map(|part| age_of(&part.meta)).min() {
                return Ok(Some(age));
            }
            // A folder: its youngest object's age.
            let objects = self.list_all(path, &key).await?;
            Ok(objects.iter().map(age_of).min())
        })
    }

    fn probe_writable(&self) -> StorageResult<()> {
        let probe = paths::probe_object();
        let key = self.key(&probe);
        let report = StorePath::probe();
        self.remote.wait(async {
            let store = &self.remote.store;
            store
                .put(&key, PutPayload::from_static(b"ok"))
                .await
                .map_err(|e| remote_err(&report, e))?;
            store.delete(&key).await.map_err(|e| remote_err(&report, e))
        })
    }

    fn touch(&self, path: &StorePath) -> StorageResult<bool> {
        let key = self.key(path);
        self.remote.wait(async {
            if self.touch_key(path, &key).await? {
                return Ok(true);
            }
            let parts = self.remote.parts(path).await?;
            match parts.last() {
                Some(last) => self.touch_key(path, &last.key).await,
                None => Ok(false),
            }
        })
    }

    fn remove_stale_temps(&self, min_age_secs: u64) -> StorageResult<(u64, u64)> {
        let root = StorePath::probe();
        self.remote.wait(async {
            let prefix =
                (!self.remote.prefix.is_empty()).then(|| Path::from(self.remote.prefix.as_str()));
            let mut listing = self.remote.store.list(prefix.as_ref());
            let mut stale = Vec::new();
            let mut bytes = 0u64;
            while let Some(meta) = listing.next().await {
                let meta = meta.map_err(|e| remote_err(&root, e))?;
                let comps = self.relative(&meta.location);
                let Some((name, dir)) = comps.split_last() else {
                    continue;
                };
                if paths::is_temp_leftover(dir, name) && age_of(&meta) >= min_age_secs {
                    bytes = bytes.saturating_add(meta.size);
                    stale.push(meta.location.clone());
                }
            }
            let count = stale.len() as u64;
            self.remote.delete_keys(&root, stale).await?;
            Ok((count, bytes))
        })
    }
}
