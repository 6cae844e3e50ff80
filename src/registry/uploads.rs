//! Blob upload sessions: monolithic, POST+PUT and chunked PATCH uploads,
//! persisted under `_uploads/<id>/` so a chunked upload survives a restart.
//! The `state` file records the acknowledged offset; bytes past it (a chunk
//! cut short by a crash) are dropped when the session is next opened. A
//! blob becomes visible only after its digest was verified.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::Stream;
use serde::{Deserialize, Serialize};

use super::io::{blocking, hash_reader, pump};
use super::{Registry, RegistryError, RegistryResult};
use crate::oci::{Digest, RepoName, Sha256Hasher};
use crate::storage::{paths, UploadId};

const STATE_MAX: u64 = 64 * 1024;

#[derive(Serialize, Deserialize)]
struct UploadState {
    repository: String,
    offset: u64,
    started_at: u64,
}

struct Session {
    repo: RepoName,
    offset: u64,
    started_at: u64,
    /// The hash of bytes `0..offset`; `None` after a restart or a failed
    /// chunk, in which case the data is re-hashed from disk at the end.
    hasher: Option<Sha256Hasher>,
}

/// In-memory view of the sessions: one async lock per session serializes
/// its chunks; the state file on disk is the truth.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<UploadId, Arc<tokio::sync::Mutex<Session>>>>,
}

/// Where an upload stands.
#[derive(Debug, Clone)]
pub struct UploadStatus {
    pub id: UploadId,
    pub offset: u64,
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A body with no size cap beyond what fits in a u64.
const NO_CAP: u64 = u64::MAX;

impl Registry {
    fn sessions_map(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<UploadId, Arc<tokio::sync::Mutex<Session>>>> {
        self.uploads.open.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts an upload session (`POST /v2/<name>/blobs/uploads/`).
    pub async fn start_upload(&self, repo: &RepoName) -> RegistryResult<UploadStatus> {
        if self.sessions_map().len() >= self.limits.max_upload_sessions {
            return Err(RegistryError::TooManyUploads);
        }
        let id = UploadId::new_random();
        let state = UploadState {
            repository: repo.to_string(),
            offset: 0,
            started_at: now_secs(),
        };
        self.save_state(&id, &state).await?;
        let session = Session {
            repo: repo.clone(),
            offset: 0,
            started_at: state.started_at,
            hasher: Some(Sha256Hasher::new()),
        };
        self.sessions_map()
            .insert(id.clone(), Arc::new(tokio::sync::Mutex::new(session)));
        Ok(UploadStatus { id, offset: 0 })
    }

    async fn save_state(&self, id: &UploadId, state: &UploadState) -> RegistryResult<()> {
        let bytes =
            serde_json::to_vec(state).map_err(|e| RegistryError::UploadInvalid(e.to_string()))?;
        let b = self.backend.clone();
        let path = paths::upload_state(id);
        blocking(move || b.write_atomic(&path, &bytes).map_err(Into::into)).await
    }

    /// Finds a session in memory, or reloads it from disk after a restart.
    async fn session(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> RegistryResult<Arc<tokio::sync::Mutex<Session>>> {
        let found = self.sessions_map().get(id).cloned();
        let session = match found {
            Some(s) => s,
            None => {
                let b = self.backend.clone();
                let path = paths::upload_state(id);
                let raw =
                    blocking(move || b.read_small(&path, STATE_MAX).map_err(Into::into)).await?;
                let Some(raw) = raw else {
                    return Err(RegistryError::UploadUnknown);
                };
                let state: UploadState =
                    serde_json::from_slice(&raw).map_err(|_| RegistryError::UploadUnknown)?;
                let state_repo =
                    RepoName::parse(&state.repository).map_err(|_| RegistryError::UploadUnknown)?;
                let s = Arc::new(tokio::sync::Mutex::new(Session {
                    repo: state_repo,
                    offset: state.offset,
                    started_at: state.started_at,
                    hasher: None,
                }));
                self.sessions_map().entry(id.clone()).or_insert(s).clone()
            }
        };
        if &session.lock().await.repo != repo {
            return Err(RegistryError::UploadUnknown);
        }
        Ok(session)
    }

    /// Upload progress (`GET /v2/<name>/blobs/uploads/<id>`).
    pub async fn upload_status(
        &self,
        repo: &RepoName,
        id: &UploadId,
    ) -> RegistryResult<UploadStatus> {
        let s = self.session(repo, id).await?;
        let offset = s.lock().await.offset;
        Ok(UploadStatus {
            id: id.clone(),
            offset,
        })
    }

    /// Appends a chunk (`PATCH`). `start` is the Content-Range start when the
    /// client sent one; `expected_len` the length it announced. A chunk that
    /// does not start at the current offset changes nothing.
    pub async fn append_chunk<S>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        start: Option<u64>,
        expected_len: Option<u64>,
        body: S,
    ) -> RegistryResult<UploadStatus>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        let s = self.session(repo, id).await?;
        let mut session = s.lock().await;
        if let Some(start) = start {
            if start != session.offset {
                return Err(RegistryError::RangeInvalid {
                    offset: session.offset,
                    got: start,
                });
            }
        }
        self.append_locked(id, &mut session, expected_len, body)
            .await?;
        Ok(UploadStatus {
            id: id.clone(),
            offset: session.offset,
        })
    }

    async fn append_locked<S>(
        &self,
        id: &UploadId,
        session: &mut Session,
        expected_len: Option<u64>,
        body: S,
    ) -> RegistryResult<()>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        let b = self.backend.clone();
        let data = paths::upload_data(id);
        let offset = session.offset;
        let writer = blocking(move || b.open_append(&data, offset).map_err(Into::into)).await?;
        // Without a running hash the bytes are re-hashed from disk at the end.
        let had_hasher = session.hasher.is_some();
        let hasher = session.hasher.take().unwrap_or_default();
        let pumped = pump(body, writer, hasher, NO_CAP).await?;
        if let Some(want) = expected_len {
            if want != pumped.written {
                return Err(RegistryError::SizeInvalid(format!(
                    "chunk announced {want} bytes but carried {}",
                    pumped.written
                )));
            }
        }
        let new_offset = offset.saturating_add(pumped.written);
        self.save_state(
            id,
            &UploadState {
                repository: session.repo.to_string(),
                offset: new_offset,
                started_at: session.started_at,
            },
        )
        .await?;
        session.offset = new_offset;
        session.hasher = had_hasher.then_some(pumped.hasher);
        Ok(())
    }

    /// Completes an upload (`PUT ...?digest=`), with an optional last chunk.
    /// The blob becomes visible only if the content hashes to `digest`;
    /// either way the session ends.
    pub async fn finish_upload<S>(
        &self,
        repo: &RepoName,
        id: &UploadId,
        digest: &Digest,
        range: Option<(u64, u64)>,
        body: S,
    ) -> RegistryResult<Digest>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        let s = self.session(repo, id).await?;
        let mut session = s.lock().await;
        if let Some((start, _)) = range {
            if start != session.offset {
                return Err(RegistryError::RangeInvalid {
                    offset: session.offset,
                    got: start,
                });
            }
        }
        let expected_len = range.and_then(|(a, b)| b.checked_sub(a).and_then(|d| d.checked_add(1)));
        self.append_locked(id, &mut session, expected_len, body)
            .await?;
        let result = self.commit_session(repo, id, &mut session, digest).await;
        drop(session);
        self.sessions_map().remove(id);
        let b = self.backend.clone();
        let dir = paths::upload_dir(id);
        blocking(move || b.delete_dir(&dir).map_err(Into::into)).await?;
        result
    }

    async fn commit_session(
        &self,
        repo: &RepoName,
        id: &UploadId,
        session: &mut Session,
        digest: &Digest,
    ) -> RegistryResult<Digest> {
        let actual = match session.hasher.take() {
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
        };
        if &actual != digest {
            return Err(RegistryError::DigestMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        let b = self.backend.clone();
        let data = paths::upload_data(id);
        let blob = paths::blob(digest);
        let link = paths::layer_link(repo, digest);
        let link_body = digest.to_string().into_bytes();
        // Ordered against garbage collection; a blob already stored is
        // touched so its grace period restarts (see `gc`).
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
            if b.size(&link)?.is_none() {
                b.write_atomic(&link, &link_body)?;
            }
            Ok(())
        })
        .await?;
        drop(guard);
        Ok(digest.clone())
    }

    /// Monolithic upload (`POST ...?digest=` with the whole blob as body).
    pub async fn upload_monolithic<S>(
        &self,
        repo: &RepoName,
        digest: &Digest,
        body: S,
    ) -> RegistryResult<Digest>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Unpin + Send,
    {
        let id = UploadId::new_random();
        let started_at = now_secs();
        let mut session = Session {
            repo: repo.clone(),
            offset: 0,
            started_at,
            hasher: Some(Sha256Hasher::new()),
        };
        let b = self.backend.clone();
        let data = paths::upload_data(&id);
        let result = async {
            let writer = blocking(move || b.open_append(&data, 0).map_err(Into::into)).await?;
            let pumped = pump(body, writer, Sha256Hasher::new(), NO_CAP).await?;
            session.offset = pumped.written;
            session.hasher = Some(pumped.hasher);
            self.commit_session(repo, &id, &mut session, digest).await
        }
        .await;
        let b = self.backend.clone();
        let dir = paths::upload_dir(&id);
        blocking(move || b.delete_dir(&dir).map_err(Into::into)).await?;
        result
    }

    /// Cancels an upload (`DELETE /v2/<name>/blobs/uploads/<id>`).
    pub async fn cancel_upload(&self, repo: &RepoName, id: &UploadId) -> RegistryResult<()> {
        let s = self.session(repo, id).await?;
        let _held = s.lock().await;
        self.sessions_map().remove(id);
        let b = self.backend.clone();
        let dir = paths::upload_dir(id);
        blocking(move || b.delete_dir(&dir).map_err(Into::into)).await
    }

    /// Removes sessions older than `ttl_secs` (and folders without state).
    /// Returns how many were purged.
    pub async fn purge_uploads(&self, ttl_secs: u64) -> RegistryResult<usize> {
        let b = self.backend.clone();
        let stale: Vec<UploadId> = blocking(move || {
            let mut stale = Vec::new();
            for e in b.list(&paths::uploads_dir())? {
                let Some(id) = UploadId::parse(&e.name) else {
                    continue;
                };
                let state_age = b.age_secs(&paths::upload_state(&id))?;
                let dir_age = b.age_secs(&paths::upload_dir(&id))?.unwrap_or(0);
                let age = state_age.unwrap_or(dir_age);
                if age >= ttl_secs {
                    stale.push(id);
                }
            }
            Ok(stale)
        })
        .await?;
        let mut purged = 0;
        for id in stale {
            let held = self.sessions_map().get(&id).cloned();
            let _guard = match &held {
                Some(s) => Some(s.lock().await),
                None => None,
            };
            self.sessions_map().remove(&id);
            let b = self.backend.clone();
            let dir = paths::upload_dir(&id);
            blocking(move || b.delete_dir(&dir).map_err(Into::into)).await?;
            purged += 1;
        }
        Ok(purged)
    }
}
