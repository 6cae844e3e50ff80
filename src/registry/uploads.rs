//! Blob upload sessions: monolithic, POST+PUT and chunked PATCH uploads.
//! A session's row in the metadata store records its repository, owner and
//! acknowledged offset, its bytes are in the blob store under
//! `_uploads/<id>/`, so a chunked upload survives a restart and any replica
//! can serve any of its requests. Bytes past the offset (a chunk cut short
//! by a crash) are dropped when the session is next written; the offset
//! moves only by compare-and-set, so of two replicas racing on one session
//! one chunk is acknowledged and the other is refused. A blob becomes visible only after its
//! digest was verified. A PUT ends the session's row before it moves the
//! bytes into the blob, so no crash leaves a session whose offset names
//! bytes that are gone. Every operation on a session holds its slot (see
//! `upload_table`) from the first look to the last write, so racing
//! requests on one upload run one after the other, and a session that
//! ended is refused to whoever was waiting for it.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;

use super::io::{blocking, hash_reader, ms, pump};
use super::upload_table::{Principal, Session, Slot, SlotGuard, SlotRef, UploadCap};
use super::{Limits, Registry, RegistryError, RegistryResult};
use crate::metadata::{unix_now, SessionCaps, UploadCapHit, UploadRow};
use crate::oci::{Digest, RepoName, Sha256Hasher};
use crate::storage::{paths, UploadId};

pub use super::upload_table::Sessions;

/// The row of a session.
fn row_of(id: &UploadId, session: &Session) -> RegistryResult<UploadRow> {
    let owner = match &session.owner {
        Some(o) => Some(
            serde_json::to_string(o)
                .map_err(|e| RegistryError::Internal(format!("upload owner: {e}")))?,
        ),
        None => None,
    };
    Ok(UploadRow {
        id: id.as_str().to_string(),
        repo: session.repo.clone(),
        owner,
        committed: session.offset,
        started_at: session.started_at as i64,
        updated_at: unix_now(),
    })
}

fn owner_of(row: &UploadRow) -> Option<Principal> {
    row.owner
        .as_deref()
        .and_then(|o| serde_json::from_str(o).ok())
}

/// Where an upload stands.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    pub id: UploadId,
    pub offset: u64,
}

/// A chunk whose body did not carry the bytes its `Content-Range` named.
fn chunk_size_invalid(announced: u64, carried: u64) -> RegistryError {
    RegistryError::SizeInvalid(format!(
        "chunk announced {announced} bytes but carried {carried}"
    ))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A body with no size cap beyond what fits in a u64.
const NO_CAP: u64 = u64::MAX;

/// An open session: the slot and its held lock (the right to write in
/// this process) and the session's lease (across replicas).
struct Open {
    slot: SlotRef,
    guard: SlotGuard,
    _lease: Option<crate::metadata::Lease>,
}

impl Open {
    fn session(&mut self) -> RegistryResult<&mut Session> {
        match &mut *self.guard {
            Slot::Live(s) => Ok(s),
            _ => Err(RegistryError::UploadUnknown),
        }
    }
}

impl Registry {
    /// Counts the sessions on disk once per process, before any session is
    /// started, opened or purged, so the caps hold across a restart.
    async fn sessions_counted(&self) -> RegistryResult<()> {
        self.uploads
            .ensure_counted(|| async {
                let mut found = Vec::new();
                for row in self.meta.uploads().await? {
                    if let Some(id) = UploadId::parse(&row.id) {
                        let owner = owner_of(&row);
                        found.push((id, owner));
                    }
                }
                self.uploads.count_found(found);
                Ok(())
            })
            .await
    }

    /// Starts an upload session (`POST /v2/<name>/blobs/uploads/`) owned by
    /// `owner`. Refused with `TooManyUploads` when the registry-wide cap or
    /// the owner's cap is reached.
    pub async fn start_upload(
        &self,
        repo: &RepoName,
        owner: &Principal,
    ) -> RegistryResult<UploadStatus> {
        self.sessions_counted().await?;
        let id = UploadId::new_random();
        let session = Session {
            repo: repo.clone(),
            owner: Some(owner.clone()),
            offset: 0,
            started_at: now_secs(),
            hasher: Some(Sha256Hasher::new()),
            row_current: true,
        };
        let row = row_of(&id, &session)?;
        // With a shared metadata store the rows are the only count: this
        // process's table cannot see sessions other replicas end.
        let local_caps = if self.meta.engine() == crate::metadata::Engine::Postgres {
            Limits {
                max_upload_sessions: usize::MAX,
                max_upload_sessions_per_principal: usize::MAX,
                ..self.limits.clone()
            }
        } else {
            self.limits.clone()
        };
        let (slot, guard) = self.uploads.reserve(&id, session, &local_caps)?;
        let mut open = Open {
            slot,
            guard,
            _lease: None,
        };
        // The in-memory table caps this process; the rows cap every
        // replica together.
        let caps = SessionCaps {
            total: self.limits.max_upload_sessions as u64,
            per_owner: self.limits.max_upload_sessions_per_principal as u64,
        };
        let refused = match self.meta.insert_upload_capped(&row, caps).await {
            Ok(Ok(())) => None,
            Ok(Err(hit)) => Some(RegistryError::TooManyUploads {
                cap: match (hit, owner) {
                    (UploadCapHit::Total, _) => UploadCap::RegistryWide,
                    (UploadCapHit::Owner, Principal::User(_)) => UploadCap::PerUser,
                    (UploadCapHit::Owner, Principal::Address(_)) => UploadCap::PerAddress,
                },
                limit: match hit {
                    UploadCapHit::Total => self.limits.max_upload_sessions,
                    UploadCapHit::Owner => self.limits.max_upload_sessions_per_principal,
                },
            }),
            Err(e) => Some(RegistryError::from(e)),
        };
        if let Some(e) = refused {
            let _ = self.end_session(&id, &mut open).await;
            return Err(e);
        }
        Ok(UploadStatus { id, offset: 0 })
    }

    /// Opens a session of `repo` for one operation, loading it from disk
    /// after a restart. The returned lock is held until the operation ends.
    async fn open_session(&self, repo: &RepoName, id: &UploadId) -> RegistryResult<Open> {
        self.sessions_counted().await?;
        let slot = self.uploads.slot(id);
        let mut guard = slot.clone().lock_owned().await;
        if matches!(*guard, Slot::Ended) {
            return Err(RegistryError::UploadUnknown);
        }
        let shared = self.meta.engine() == crate::metadata::Engine::Postgres;
        if !shared && matches!(&*guard, Slot::Live(s) if s.row_current) {
            // SQLite: this process alone serves the data directory (its
            // lock) and changes the row only under this slot's lock, so
            // the live session is the row; no read needed.
            return self.opened(repo, slot, guard, None);
        }
        let lease = self.meta.lease_upload(id.as_str()).await?;
        // The row decides, on every request: another replica may have
        // moved the offset or ended the session. On an error the slot is
        // left as it was and the next request tries again.
        let row = self.meta.upload(id.as_str()).await?;
        let loaded = row.map(|row| Session {
            owner: owner_of(&row),
            repo: row.repo,
            offset: row.committed,
            started_at: u64::try_from(row.started_at).unwrap_or(0),
            hasher: None,
            row_current: true,
        });
        match (loaded, &mut *guard) {
            (Some(fresh), Slot::Live(s)) => {
                s.row_current = true;
                if s.offset != fresh.offset {
                    // Bytes written elsewhere: the running hash is stale.
                    s.offset = fresh.offset;
                    s.hasher = None;
                }
            }
            (Some(fresh), slot_state) => {
                self.uploads.loaded(id, &fresh.owner);
                *slot_state = Slot::Live(fresh);
            }
            (None, slot_state) => {
                *slot_state = Slot::Ended;
                self.uploads.ended(id, &slot);
            }
        }
        self.opened(repo, slot, guard, Some(lease))
    }

    /// The open session, if it is one of `repo`.
    fn opened(
        &self,
        repo: &RepoName,
        slot: SlotRef,
        guard: SlotGuard,
        lease: Option<crate::metadata::Lease>,
    ) -> RegistryResult<Open> {
        let mut open = Open {
            slot,
            guard,
            _lease: lease,
        };
        if &open.session()?.repo != repo {
            return Err(RegistryError::UploadUnknown);
        }
        Ok(open)
    }

    /// Ends an open session: its state file first (durably: from then on
    /// no reload can find it), then the rest of its folder; the slot is
    /// marked ended for whoever waits on it and leaves the table. When the
    /// state cannot be removed, the slot stays as a tombstone.
    async fn end_session(&self, id: &UploadId, open: &mut Open) -> RegistryResult<()> {
        self.end_session_row(id, open).await?;
        self.remove_upload_dir(id).await;
        Ok(())
    }

    /// The first half of `end_session`: the row goes (no replica can find
    /// the session any more), the bytes stay.
    async fn end_session_row(&self, id: &UploadId, open: &mut Open) -> RegistryResult<()> {
        let removed = self.meta.delete_upload(id.as_str()).await;
        *open.guard = Slot::Ended;
        if let Err(e) = removed {
            self.uploads.ended_in_memory(id);
            return Err(e.into());
        }
        self.uploads.ended(id, &open.slot);
        Ok(())
    }

    /// The second half of `end_session`: the folder of a session whose row
    /// is gone.
    async fn remove_upload_dir(&self, id: &UploadId) {
        let b = self.backend.clone();
        let dir = paths::upload_dir(id);
        // What is left is garbage without a state: purged later if this fails.
        if let Err(e) = blocking(move || b.delete_dir(&dir).map_err(Into::into)).await {
            tracing::warn!(error = %e, upload = %id, "upload folder left for garbage collection");
        }
    }

    /// Upload progress (`GET /v2/<name>/blobs/uploads/<id>`).
    pub async fn upload_status(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> RegistryResult<UploadStatus> {
        let mut open = self.open_session(repo, id).await?;
        let offset = open.session()?.offset;
        Ok(UploadStatus {
            id: id.clone(),
            offset,
        })
    }

    /// Appends a chunk (`PATCH`). `start` is the Content-Range start when the
    /// client sent one; `expected_len` the length it announced there;
    /// `body_len` the body's own length (`Content-Length`), which the
    /// transport enforces. A chunk that does not start at the current
    /// offset, or whose two lengths differ, changes nothing.
    pub async fn append_chunk<S>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        expected_len: Option<u64>,
        body_len: Option<u64>,
        body: S,
    ) -> RegistryResult<UploadStatus>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        let began = Instant::now();
        let mut open = self.open_session(repo, id).await?;
        let session = open.session()?;
        if let Some(start) = start {
            if start != session.offset {
                return Err(RegistryError::RangeInvalid {
                    offset: session.offset,
                    got: start,
                });
            }
        }
        self.append_locked(id, session, expected_len, body_len, body, began)
            .await?;
        Ok(UploadStatus {
            id: id.clone(),
            offset: session.offset,
        })
    }

    /// Appends a chunk to a session opened at `began` and acknowledges
    /// it: its bytes durable first, then the offset moved past them.
    async fn append_locked<S>(
        &self,
        id: &UploadId,
        session: &mut Session,
        expected_len: Option<u64>,
        body_len: Option<u64>,
        body: S,
        began: Instant,
    ) -> RegistryResult<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        if let (Some(want), Some(carried)) = (expected_len, body_len) {
            if want != carried {
                return Err(chunk_size_invalid(want, carried));
            }
        }
        let opened = began.elapsed();
        let b = self.backend.clone();
        let data = paths::upload_data(id);
        let offset = session.offset;
        // Until the offset is recorded, whether the row moved is unknown.
        session.row_current = false;
        let writer = blocking(move || b.open_append(&data, offset).map_err(Into::into)).await?;
        let pump_start = began.elapsed();
        // Without a running hash the bytes are re-hashed from disk at the end.
        let had_hasher = session.hasher.is_some();
        let hasher = session.hasher.take().unwrap_or_default();
        let pumped = pump(body, body_len, writer, hasher, NO_CAP).await?;
        if let Some(want) = expected_len {
            if want != pumped.written {
                return Err(chunk_size_invalid(want, pumped.written));
            }
        }
        let new_offset = offset.saturating_add(pumped.written);
        let advanced = self
            .meta
            .advance_upload(id.as_str(), offset, new_offset)
            .await?;
        pumped
            .times
            .log_chunk(id.as_str(), pumped.written, began, opened, pump_start);
        if !advanced {
            // Another replica acknowledged a chunk (or ended the session)
            // first: this chunk is not acknowledged.
            session.hasher = None;
            return match self.meta.upload(id.as_str()).await? {
                Some(row) => Err(RegistryError::RangeInvalid {
                    offset: row.committed,
                    got: offset,
                }),
                None => Err(RegistryError::UploadUnknown),
            };
        }
        session.offset = new_offset;
        session.row_current = true;
        session.hasher = had_hasher.then_some(pumped.hasher);
        Ok(())
    }

    /// Completes an upload (`PUT ...?digest=`), with an optional last chunk.
    /// The blob becomes visible only if the content hashes to `digest`;
    /// either way the session ends (a chunk that is refused or cut short
    /// leaves it open).
    pub async fn finish_upload<S>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body_len: Option<u64>,
        body: S,
    ) -> RegistryResult<Digest>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        let began = Instant::now();
        let mut open = self.open_session(repo, id).await?;
        let session = open.session()?;
        if let Some((start, _)) = range {
            if start != session.offset {
                return Err(RegistryError::RangeInvalid {
                    offset: session.offset,
                    got: start,
                });
            }
        }
        let expected_len = range.and_then(|(a, b)| b.checked_sub(a).and_then(|d| d.checked_add(1)));
        self.append_locked(id, session, expected_len, body_len, body, began)
            .await?;
        let appended = began.elapsed();
        let actual = self.uploaded_digest(id, session).await;
        let hashed = began.elapsed();
        // The session ends (its row goes) before its bytes move into the
        // blob: a crash in between must not leave a session whose
        // acknowledged offset names bytes that are gone (its next chunk
        // would fail on S3, or land after zeros on the filesystem). A crash
        // after this point leaves no session: the PUT was not acknowledged,
        // the client starts over; the folder is garbage without a row.
        if let Err(e) = self.end_session_row(id, &mut open).await {
            // The row stays, and with it the bytes it names: another
            // replica may still finish the session.
            tracing::error!(error = %e, upload = %id, "cannot end a finished upload session");
            return Err(e);
        }
        let result = match actual {
            Err(e) => Err(e),
            Ok(actual) if &actual != digest => Err(RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            }),
            Ok(_) => self.store_uploaded(repo, id, digest).await,
        };
        let stored = began.elapsed();
        self.remove_upload_dir(id).await;
        tracing::debug!(
            upload = %id,
            appended_ms = ms(appended),
            digest_ms = ms(hashed.saturating_sub(appended)),
            stored_ms = ms(stored.saturating_sub(hashed)),
            total_ms = ms(began.elapsed()),
            "upload finished"
        );
        result
    }

    /// Checks an upload's bytes against `digest` and stores them as its
    /// blob (a monolithic upload, whose session has no row).
    async fn commit_session(
        &self,
        repo: &RepoName,
        id: &UploadId,
        session: &mut Session,
        digest: &Digest,
    ) -> RegistryResult<Digest> {
        let actual = self.uploaded_digest(id, session).await?;
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        self.store_uploaded(repo, id, digest).await
    }

    /// The digest of an upload's bytes: the running hash, or (when other
    /// replicas or an earlier process wrote some of them) the bytes re-read.
    async fn uploaded_digest(
        &self,
        id: &UploadId,
        session: &mut Session,
    ) -> RegistryResult<Digest> {
        Ok(match session.hasher.take() {
            Some(h) => h.finish(),
            None => {
                let b = self.backend.clone();
                let data = paths::upload_data(id);
                blocking(move || {
                    let Some(mut r) = b.open_read(&data, 0)? else {
                        return Ok(Digest::of(b""));
                    };
                    hash_reader(&mut r.reader).map(|(d, _)| d).map_err(|e| {
                        RegistryError::Storage(crate::storage::StorageError::io(&data, e))
                    })
                })
                .await?
            }
        })
    }

    /// Moves an upload's verified bytes to their blob (or touches the blob
    /// already stored) and links it into `repo`.
    async fn store_uploaded(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
    ) -> RegistryResult<Digest> {
        let b = self.backend.clone();
        let data = paths::upload_data(id);
        let blob = paths::blob(digest);
        // Ordered against garbage collection; a blob already stored is
        // touched so its grace period restarts (see `gc`). The bytes are
        // durable before the row that makes them visible.
        let guard = self.gc_write_guard().await;
        guard.note(digest);
        blocking(move || {
            if !b.touch(&blob)? {
                if b.size(&data)?.is_none() {
                    // An empty upload never created its data file.
                    b.write_atomic(&blob, b"")?;
                } else {
                    b.rename(&data, &blob)?;
                }
            }
            Ok(())
        })
        .await?;
        let linked = self.link_stored(repo, digest).await?;
        drop(guard);
        if !linked {
            return Err(RegistryError::Internal(format!(
                "blob {digest} vanished while it was linked"
            )));
        }
        Ok(digest.clone())
    }

    /// Monolithic upload (`POST ...?digest=` with the whole blob as body,
    /// `body_len` its `Content-Length` if sent). No session is recorded:
    /// its folder has no state file.
    pub async fn upload_monolithic<S>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body_len: Option<u64>,
        body: S,
    ) -> RegistryResult<Digest>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        let id = UploadId::new_random();
        let mut session = Session {
            repo: repo.clone(),
            owner: None,
            offset: 0,
            started_at: now_secs(),
            hasher: Some(Sha256Hasher::new()),
            row_current: true,
        };
        let b = self.backend.clone();
        let data = paths::upload_data(&id);
        let result = async {
            let writer = blocking(move || b.open_append(&data, 0).map_err(Into::into)).await?;
            let pumped = pump(body, body_len, writer, Sha256Hasher::new(), NO_CAP).await?;
            session.offset = pumped.written;
            session.hasher = Some(pumped.hasher);
            self.commit_session(repo, &id, &mut session, digest).await
        }
        .await;
        let b = self.backend.clone();
        let dir = paths::upload_dir(&id);
        if let Err(e) = blocking(move || b.delete_dir(&dir).map_err(Into::into)).await {
            tracing::warn!(error = %e, upload = %id, "upload folder left for garbage collection");
        }
        result
    }

    /// Cancels an upload (`DELETE /v2/<name>/blobs/uploads/<id>`).
    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> RegistryResult<()> {
        let mut open = self.open_session(repo, id).await?;
        self.end_session(id, &mut open).await
    }

    /// Removes sessions older than `ttl_secs` (and folders without state).
    /// Returns how many were purged.
    pub async fn purge_uploads(&self, ttl_secs: u64) -> RegistryResult<usize> {
        self.sessions_counted().await?;
        let now = unix_now();
        let ttl = i64::try_from(ttl_secs).unwrap_or(i64::MAX);
        let rows = self.meta.uploads().await?;
        let stale: Vec<UploadId> = rows
            .iter()
            .filter(|r| now.saturating_sub(r.updated_at) >= ttl)
            .filter_map(|r| UploadId::parse(&r.id))
            .collect();
        // Folders without a row (a crash between the row's deletion and
        // the folder's, or a monolithic upload cut short) go too.
        let live_ids: std::collections::HashSet<String> =
            rows.iter().map(|r| r.id.clone()).collect();
        let b = self.backend.clone();
        blocking(move || {
            for e in b.list(&paths::uploads_dir())? {
                let Some(id) = UploadId::parse(&e.name) else {
                    continue;
                };
                if live_ids.contains(id.as_str()) {
                    continue;
                }
                let dir = paths::upload_dir(&id);
                if b.age_secs(&dir)?.unwrap_or(0) >= ttl_secs {
                    b.delete_dir(&dir)?;
                }
            }
            Ok(())
        })
        .await?;
        let mut purged = 0;
        for id in stale {
            let slot = self.uploads.slot(&id);
            let guard = slot.clone().lock_owned().await;
            // Written to while this waited: not stale any more.
            match self.meta.upload(id.as_str()).await? {
                Some(r) if now.saturating_sub(r.updated_at) >= ttl => {}
                _ => continue,
            }
            let lease = self.meta.lease_upload(id.as_str()).await?;
            let mut open = Open {
                slot,
                guard,
                _lease: Some(lease),
            };
            self.end_session(&id, &mut open).await?;
            purged += 1;
        }
        Ok(purged)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{Limits, UploadCap};
    use crate::storage::{AppendWriter, Entry, FsBackend, ObjectReader, StorageResult, StorePath};
    use std::sync::Arc;

    async fn registry(dir: &std::path::Path, total: usize, per: usize) -> Registry {
        let b: Arc<dyn crate::storage::Backend> = Arc::new(FsBackend::open(dir).unwrap());
        Registry::new(
            b,
            crate::metadata::Metadata::open_in_dir(dir).await.unwrap(),
            Limits {
                max_upload_sessions: total,
                max_upload_sessions_per_principal: per,
                ..Limits::default()
            },
        )
    }

    fn body(data: &[u8]) -> impl Stream<Item = std::io::Result<Bytes>> + Unpin + Send {
        futures_util::stream::iter(vec![Ok(Bytes::copy_from_slice(data))])
    }

    fn cap_of(e: RegistryError) -> UploadCap {
        match e {
            RegistryError::TooManyUploads { cap, .. } => cap,
            other => panic!("expected TooManyUploads, got {other}"),
        }
    }

    #[tokio::test]
    async fn purged_sessions_free_their_owners_slots() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path(), 10, 2).await;
        let repo = RepoName::parse("t/purge").unwrap();
        let p = Principal::user("p");
        reg.start_upload(&repo, &p).await.unwrap();
        reg.start_upload(&repo, &p).await.unwrap();
        let e = reg.start_upload(&repo, &p).await.unwrap_err();
        assert_eq!(cap_of(e), UploadCap::PerUser);
        assert_eq!(reg.purge_uploads(0).await.unwrap(), 2);
        assert_eq!(reg.uploads.open_count(), 0);
        reg.start_upload(&repo, &p).await.unwrap();
    }

    #[tokio::test]
    async fn sessions_on_disk_count_after_a_restart_and_ended_ones_stay_ended() {
        let dir = tempfile::tempdir().unwrap();
        let repo = RepoName::parse("t/restart").unwrap();
        let p = Principal::address("10.0.0.1".parse().unwrap());
        let (kept, done) = {
            let reg = registry(dir.path(), 4, 2).await;
            let kept = reg.start_upload(&repo, &p).await.unwrap();
            let done = reg.start_upload(&repo, &p).await.unwrap();
            let d = Digest::of(b"x");
            reg.finish_upload(&repo, &done.id, &d, None, None, body(b"x"))
                .await
                .unwrap();
            (kept, done)
        };
        // A session without an owner (imported from an older version).
        let legacy = UploadId::new_random();
        let reg = registry(dir.path(), 4, 2).await;
        reg.meta
            .insert_upload(&UploadRow {
                id: legacy.as_str().to_string(),
                repo: repo.clone(),
                owner: None,
                committed: 0,
                started_at: 0,
                updated_at: unix_now(),
            })
            .await
            .unwrap();
        let e = reg.upload_status(&repo, &done.id).await.unwrap_err();
        assert!(matches!(e, RegistryError::UploadUnknown), "{e}");
        assert_eq!(reg.upload_status(&repo, &kept.id).await.unwrap().offset, 0);
        // `kept` and the legacy session count: one more for `p`...
        reg.start_upload(&repo, &p).await.unwrap();
        let e = reg.start_upload(&repo, &p).await.unwrap_err();
        assert_eq!(cap_of(e), UploadCap::PerAddress);
        // ...and for the registry-wide cap of 4.
        let other = Principal::user("other");
        reg.start_upload(&repo, &other).await.unwrap();
        let e = reg.start_upload(&repo, &other).await.unwrap_err();
        assert_eq!(cap_of(e), UploadCap::RegistryWide);
        reg.cancel_upload(&repo, &legacy).await.unwrap();
        reg.start_upload(&repo, &other).await.unwrap();
    }

    #[tokio::test]
    async fn a_chunk_waiting_behind_the_final_put_finds_the_session_ended() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Arc::new(registry(dir.path(), 10, 10).await);
        let repo = RepoName::parse("t/race").unwrap();
        let s = reg
            .start_upload(&repo, &Principal::user("p"))
            .await
            .unwrap();
        // The PUT's body arrives only once the PATCH is waiting for the slot.
        let (tx, rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(1);
        let put_body = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        let d = Digest::of(b"final");
        let put = {
            let (reg, repo, id, d) = (reg.clone(), repo.clone(), s.id.clone(), d.clone());
            tokio::spawn(async move {
                reg.finish_upload(&repo, &id, &d, None, None, Box::pin(put_body))
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        let patch = {
            let (reg, repo, id) = (reg.clone(), repo.clone(), s.id.clone());
            tokio::spawn(async move {
                reg.append_chunk(&repo, &id, None, None, None, body(b"late"))
                    .await
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        tx.send(Ok(Bytes::from_static(b"final"))).await.unwrap();
        drop(tx);
        assert_eq!(put.await.unwrap().unwrap(), d);
        let e = patch.await.unwrap().unwrap_err();
        assert!(matches!(e, RegistryError::UploadUnknown), "{e}");
        assert!(!dir.path().join("_uploads").join(s.id.as_str()).exists());
        assert_eq!(reg.uploads.open_count(), 0);
    }

    #[tokio::test]
    async fn a_chunk_refused_for_its_length_moves_nothing_and_the_upload_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let reg = registry(dir.path(), 10, 10).await;
        let repo = RepoName::parse("t/len").unwrap();
        let s = reg
            .start_upload(&repo, &Principal::user("p"))
            .await
            .unwrap();
        reg.append_chunk(&repo, &s.id, Some(0), None, None, body(b"abc"))
            .await
            .unwrap();
        let e = reg
            .append_chunk(&repo, &s.id, Some(3), Some(10), None, body(b"XYZW"))
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::SizeInvalid(_)), "{e}");
        assert_eq!(reg.upload_status(&repo, &s.id).await.unwrap().offset, 3);
        // A Content-Length that differs from the Content-Range is refused
        // before a byte is written (and whatever the body then holds).
        let e = reg
            .append_chunk(&repo, &s.id, Some(3), Some(3), Some(4), body(b"XYZW"))
            .await
            .unwrap_err();
        assert!(matches!(e, RegistryError::SizeInvalid(_)), "{e}");
        assert_eq!(reg.upload_status(&repo, &s.id).await.unwrap().offset, 3);
        reg.append_chunk(&repo, &s.id, Some(3), Some(3), Some(3), body(b"def"))
            .await
            .unwrap();
        let d = Digest::of(b"abcdef");
        let got = reg
            .finish_upload(&repo, &s.id, &d, None, None, body(b""))
            .await;
        assert_eq!(got.unwrap(), d);
    }

    /// A filesystem backend whose `rename` moves the bytes and then stops
    /// (the process "dies" there): the test aborts the request meanwhile.
    struct StopAfterRename {
        inner: FsBackend,
        moved: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
        resume: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl crate::storage::Backend for StopAfterRename {
        fn read_small(&self, p: &StorePath, max: u64) -> StorageResult<Option<Vec<u8>>> {
            self.inner.read_small(p, max)
        }
        fn write_atomic(&self, p: &StorePath, data: &[u8]) -> StorageResult<()> {
            self.inner.write_atomic(p, data)
        }
        fn size(&self, p: &StorePath) -> StorageResult<Option<u64>> {
            self.inner.size(p)
        }
        fn open_read(&self, p: &StorePath, offset: u64) -> StorageResult<Option<ObjectReader>> {
            self.inner.open_read(p, offset)
        }
        fn open_append(&self, p: &StorePath, to: u64) -> StorageResult<Box<dyn AppendWriter>> {
            self.inner.open_append(p, to)
        }
        fn rename(&self, from: &StorePath, to: &StorePath) -> StorageResult<()> {
            self.inner.rename(from, to)?;
            if let Some(tx) = self.moved.lock().unwrap().take() {
                let _ = tx.send(());
                // Until the test is done: nothing after the move runs.
                let _ = self.resume.lock().unwrap().recv();
            }
            Ok(())
        }
        fn delete(&self, p: &StorePath) -> StorageResult<bool> {
            self.inner.delete(p)
        }
        fn delete_dir(&self, p: &StorePath) -> StorageResult<()> {
            self.inner.delete_dir(p)
        }
        fn list(&self, p: &StorePath) -> StorageResult<Vec<Entry>> {
            self.inner.list(p)
        }
        fn age_secs(&self, p: &StorePath) -> StorageResult<Option<u64>> {
            self.inner.age_secs(p)
        }
        fn probe_writable(&self) -> StorageResult<()> {
            self.inner.probe_writable()
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_put_cut_off_once_its_bytes_moved_leaves_no_session_naming_them() {
        let dir = tempfile::tempdir().unwrap();
        let (moved_tx, moved_rx) = tokio::sync::oneshot::channel();
        let (resume_tx, resume_rx) = std::sync::mpsc::channel();
        let b: Arc<dyn crate::storage::Backend> = Arc::new(StopAfterRename {
            inner: FsBackend::open(dir.path()).unwrap(),
            moved: std::sync::Mutex::new(Some(moved_tx)),
            resume: std::sync::Mutex::new(resume_rx),
        });
        let meta = crate::metadata::Metadata::open_in_dir(dir.path())
            .await
            .unwrap();
        let reg = Arc::new(Registry::new(b, meta, Limits::default()));
        let repo = RepoName::parse("t/cut").unwrap();
        let s = reg
            .start_upload(&repo, &Principal::user("p"))
            .await
            .unwrap();
        reg.append_chunk(&repo, &s.id, Some(0), None, None, body(b"first"))
            .await
            .unwrap();
        let d = Digest::of(b"first");
        let put = {
            let (reg, repo, id, d) = (reg.clone(), repo.clone(), s.id.clone(), d.clone());
            tokio::spawn(async move {
                reg.finish_upload(&repo, &id, &d, None, None, body(b""))
                    .await
            })
        };
        // The bytes moved to the blob; the replica serving the PUT dies.
        moved_rx.await.unwrap();
        put.abort();
        let _ = put.await;
        // Whoever serves the session next (another replica, or this one
        // restarted) must not find it at the acknowledged offset 5 with
        // its bytes gone: the filesystem would write the next chunk after
        // five zero bytes, S3 would answer 500.
        let next = reg
            .append_chunk(&repo, &s.id, Some(5), None, None, body(b"more"))
            .await;
        let status = reg.upload_status(&repo, &s.id).await;
        resume_tx.send(()).unwrap();
        assert!(
            matches!(next, Err(RegistryError::UploadUnknown)),
            "a chunk after the cut-off PUT: {:?}",
            next.map(|s| s.offset)
        );
        assert!(
            matches!(status, Err(RegistryError::UploadUnknown)),
            "status: {:?}",
            status.map(|s| s.offset)
        );
    }
}
