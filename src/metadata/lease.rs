//! Leases: named locks held across replicas for as long as a multi-step
//! operation needs (an upload request writing a session's bytes, a REST
//! create checking a version and then writing it, a signature's `.sig`
//! read-modify-write). On PostgreSQL a session advisory lock on a
//! connection of the lease pool; nothing on SQLite, where one process
//! serves a data directory and the caller's in-process lock suffices.

use super::{Metadata, MetadataResult};

/// A held lease. When dropped the lock is released and the connection goes
/// back to the pool (or, if that fails or no runtime is left, the
/// connection is closed, which releases the lock too: it never outlives its
/// holder).
pub struct Lease {
    conn: Option<sqlx::pool::PoolConnection<sqlx::Any>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(mut conn) = self.conn.take() else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    let unlocked = sqlx::query("SELECT pg_advisory_unlock_all()")
                        .execute(&mut *conn)
                        .await;
                    if unlocked.is_err() {
                        conn.close_on_drop();
                    }
                });
            }
            Err(_) => drop(conn.detach()),
        }
    }
}

impl Metadata {
    /// Waits for the lease named `name` (hashed to an advisory lock key: two
    /// names may share a key, which only serializes them more).
    pub async fn lease(&self, name: &str) -> MetadataResult<Lease> {
        let Some(pool) = self.lease_pool() else {
            return Ok(Lease { conn: None });
        };
        let mut conn = pool.acquire().await?;
        if let Err(e) = sqlx::query("SELECT pg_advisory_lock(hashtext($1))")
            .bind(name.to_string())
            .execute(&mut *conn)
            .await
        {
            conn.close_on_drop();
            return Err(e.into());
        }
        Ok(Lease { conn: Some(conn) })
    }
}
