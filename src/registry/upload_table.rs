//! The in-memory table of upload sessions: one slot per session, whose
//! async lock makes its holder the session's only writer, and the owner of
//! every session on disk, counted per [`Principal`], so both caps are
//! checked and a place reserved under one lock (never exceeded by
//! concurrent starts).
//!
//! A slot leaves the table only once it is [`Slot::Ended`] and its state
//! file is gone from disk: a request that still holds the slot sees it
//! ended, one that comes later finds nothing on disk, so a completed,
//! cancelled or purged session can never be loaded again.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::OwnedMutexGuard;

use super::{Limits, RegistryError, RegistryResult};
use crate::oci::{RepoName, Sha256Hasher};
use crate::storage::UploadId;

/// Whom an upload session counts against: the user who authenticated, or
/// for anonymous callers (and when authentication is off) the source
/// address. An IPv6 address counts by its /64, which one client usually
/// holds whole.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Principal {
    User(String),
    Address(IpAddr),
}

impl Principal {
    pub fn user(name: &str) -> Principal {
        Principal::User(name.to_string())
    }

    pub fn address(ip: IpAddr) -> Principal {
        let ip = match ip {
            IpAddr::V4(_) => ip,
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let mut s = v6.segments();
                    s[4..].fill(0);
                    IpAddr::V6(Ipv6Addr::from(s))
                }
            },
        };
        Principal::Address(ip)
    }
}

/// Which cap refused a new session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UploadCap {
    RegistryWide,
    PerUser,
    /// The per-user cap, applied to an anonymous caller's address.
    PerAddress,
}

impl UploadCap {
    /// The client-facing explanation (part of the 429).
    pub fn describe(self, limit: usize) -> String {
        match self {
            UploadCap::RegistryWide => format!(
                "too many upload sessions in progress: the registry-wide cap of {limit} is reached; retry when sessions complete"
            ),
            UploadCap::PerUser => format!(
                "too many upload sessions in progress for this user: the per-user cap of {limit} is reached; complete or cancel one first"
            ),
            UploadCap::PerAddress => format!(
                "too many upload sessions in progress from this address: the per-user cap of {limit} applies to each address of anonymous callers; complete or cancel one first"
            ),
        }
    }
}

/// A session being written.
pub(super) struct Session {
    pub repo: RepoName,
    /// `None` for a session written by a version that did not record it.
    pub owner: Option<Principal>,
    /// Bytes acknowledged.
    pub offset: u64,
    pub started_at: u64,
    /// The hash of bytes `0..offset`; `None` after a restart or a failed
    /// chunk, in which case the data is re-hashed from disk at the end.
    pub hasher: Option<Sha256Hasher>,
    /// Whether `offset` is known to be the row's: false from the moment a
    /// chunk starts until its offset is recorded, so a request after a
    /// failure reads the row again.
    pub row_current: bool,
}

pub(super) enum Slot {
    /// In the table, not read from disk yet (a session from before a
    /// restart, or an id that may not exist).
    Unloaded,
    Live(Session),
    /// Completed, cancelled, purged, or never existed.
    Ended,
}

pub(super) type SlotRef = Arc<tokio::sync::Mutex<Slot>>;
pub(super) type SlotGuard = OwnedMutexGuard<Slot>;

#[derive(Default)]
struct Table {
    slots: HashMap<UploadId, SlotRef>,
    /// Every session on disk (once counted) with its owner.
    owners: HashMap<UploadId, Option<Principal>>,
    per_principal: HashMap<Principal, usize>,
}

impl Table {
    fn count(&mut self, id: &UploadId, owner: Option<Principal>) {
        if self.owners.contains_key(id) {
            return;
        }
        if let Some(p) = &owner {
            *self.per_principal.entry(p.clone()).or_insert(0) += 1;
        }
        self.owners.insert(id.clone(), owner);
    }

    fn release(&mut self, id: &UploadId) {
        let Some(Some(p)) = self.owners.remove(id) else {
            return;
        };
        if let Some(n) = self.per_principal.get_mut(&p) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_principal.remove(&p);
            }
        }
    }

    fn forget(&mut self, id: &UploadId, slot: &SlotRef) {
        if self.slots.get(id).is_some_and(|s| Arc::ptr_eq(s, slot)) {
            self.slots.remove(id);
        }
    }
}

/// The sessions of one registry.
#[derive(Default)]
pub struct Sessions {
    table: Mutex<Table>,
    /// Set once the sessions on disk were counted (lazily, before the
    /// first use after a start).
    counted: tokio::sync::OnceCell<()>,
}

impl Sessions {
    fn table(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `count` once (it lists the sessions on disk and records them
    /// with [`Sessions::count_found`]); a failure is retried next time.
    pub(super) async fn ensure_counted<F, Fut>(&self, count: F) -> RegistryResult<()>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = RegistryResult<()>>,
    {
        self.counted.get_or_try_init(count).await.map(|_| ())
    }

    /// Records sessions found on disk.
    pub(super) fn count_found(&self, found: Vec<(UploadId, Option<Principal>)>) {
        let mut t = self.table();
        for (id, owner) in found {
            t.count(&id, owner);
        }
    }

    /// Checks both caps and, under the same lock, counts a new session and
    /// puts it in the table, locked by the returned guard.
    pub(super) fn reserve(
        &self,
        id: &UploadId,
        session: Session,
        limits: &Limits,
    ) -> RegistryResult<(SlotRef, SlotGuard)> {
        let mut t = self.table();
        if t.owners.len() >= limits.max_upload_sessions {
            return Err(RegistryError::TooManyUploads {
                cap: UploadCap::RegistryWide,
                limit: limits.max_upload_sessions,
            });
        }
        if let Some(p) = &session.owner {
            let limit = limits.max_upload_sessions_per_principal;
            if t.per_principal.get(p).copied().unwrap_or(0) >= limit {
                let cap = match p {
                    Principal::User(_) => UploadCap::PerUser,
                    Principal::Address(_) => UploadCap::PerAddress,
                };
                return Err(RegistryError::TooManyUploads { cap, limit });
            }
        }
        let owner = session.owner.clone();
        let slot: SlotRef = Arc::new(tokio::sync::Mutex::new(Slot::Live(session)));
        let guard = slot
            .clone()
            .try_lock_owned()
            .map_err(|_| RegistryError::Internal("a new upload slot is locked".into()))?;
        t.count(id, owner);
        t.slots.insert(id.clone(), slot.clone());
        Ok((slot, guard))
    }

    /// The slot of `id`, a new [`Slot::Unloaded`] one if none is in the table.
    pub(super) fn slot(&self, id: &UploadId) -> SlotRef {
        self.table()
            .slots
            .entry(id.clone())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Slot::Unloaded)))
            .clone()
    }

    /// A session loaded from disk (counted if the start-up count missed it).
    pub(super) fn loaded(&self, id: &UploadId, owner: &Option<Principal>) {
        self.table().count(id, owner.clone());
    }

    /// An ended session whose state is gone from disk: it leaves the table
    /// and stops counting.
    pub(super) fn ended(&self, id: &UploadId, slot: &SlotRef) {
        let mut t = self.table();
        t.forget(id, slot);
        t.release(id);
    }

    /// An ended session whose state could not be removed: it stops
    /// counting but stays in the table as a tombstone, so it is not loaded
    /// from disk again while this process runs.
    pub(super) fn ended_in_memory(&self, id: &UploadId) {
        self.table().release(id);
    }

    /// Sessions counted (registry-wide).
    pub(super) fn open_count(&self) -> usize {
        self.table().owners.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn addresses_count_by_ipv4_or_ipv6_slash_64() {
        let a = Principal::address("2001:db8:1:2:aaaa::1".parse().unwrap());
        let b = Principal::address("2001:db8:1:2:bbbb::2".parse().unwrap());
        let c = Principal::address("2001:db8:1:3::1".parse().unwrap());
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_eq!(
            Principal::address("::ffff:10.0.0.1".parse().unwrap()),
            Principal::address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
        );
        assert_ne!(
            Principal::address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1))),
            Principal::address(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)))
        );
    }

    #[test]
    fn owners_serialize_as_small_objects() {
        let u = serde_json::to_string(&Principal::user("alice")).unwrap();
        assert_eq!(u, r#"{"user":"alice"}"#);
        let a = serde_json::to_string(&Principal::address(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        assert_eq!(a.unwrap(), r#"{"address":"127.0.0.1"}"#);
    }
}
