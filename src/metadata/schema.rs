//! The schema, the same statements on SQLite and PostgreSQL (only types
//! and syntax both accept: TEXT, BIGINT, composite primary keys,
//! `CREATE ... IF NOT EXISTS`). Applied at every start; idempotent.
//!
//! Digests are stored as text (`sha256:<hex>`), repositories as their
//! validated names, times as Unix seconds.

use super::{Metadata, MetadataResult};

/// The version this code writes; recorded in `meta` so a later version
/// can migrate.
pub const VERSION: i64 = 3;

/// `{key}` in a statement: a text column that sorts and compares byte-wise
/// (the OCI lexical order of tags and the catalog). SQLite's default
/// collation already does; PostgreSQL's depends on the database locale.
fn key_type(engine: super::Engine) -> &'static str {
    match engine {
        super::Engine::Sqlite => "TEXT",
        super::Engine::Postgres => "TEXT COLLATE \"C\"",
    }
}

/// `{c}` after an expression: byte-wise comparison of a plain text column
/// (in an index or an `ORDER BY`), so both engines sort the same.
pub(super) fn bytewise(engine: super::Engine) -> &'static str {
    match engine {
        super::Engine::Sqlite => "",
        super::Engine::Postgres => " COLLATE \"C\"",
    }
}

const STATEMENTS: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS repositories (name {key} PRIMARY KEY, created_at BIGINT NOT NULL)",
    // A manifest linked into a repository, with the media type it is
    // served with there, and (for referrers) its subject and descriptor.
    "CREATE TABLE IF NOT EXISTS manifests (
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        media_type TEXT NOT NULL,
        size BIGINT NOT NULL,
        subject {key},
        artifact_type TEXT,
        descriptor TEXT,
        linked_at BIGINT NOT NULL,
        PRIMARY KEY (repo, digest))",
    "CREATE INDEX IF NOT EXISTS manifests_by_subject ON manifests (repo, subject)",
    "CREATE INDEX IF NOT EXISTS manifests_by_digest ON manifests (digest)",
    // What a manifest references: config, layers, index children. The
    // collector's mark is a query over this table.
    "CREATE TABLE IF NOT EXISTS manifest_refs (
        repo {key} NOT NULL,
        manifest {key} NOT NULL,
        target {key} NOT NULL,
        PRIMARY KEY (repo, manifest, target))",
    "CREATE INDEX IF NOT EXISTS manifest_refs_by_target ON manifest_refs (target)",
    "CREATE TABLE IF NOT EXISTS tags (
        repo {key} NOT NULL,
        tag {key} NOT NULL,
        digest {key} NOT NULL,
        updated_at BIGINT NOT NULL,
        PRIMARY KEY (repo, tag))",
    "CREATE INDEX IF NOT EXISTS tags_by_digest ON tags (repo, digest)",
    // A blob reachable from a repository (uploaded or mounted there).
    "CREATE TABLE IF NOT EXISTS blob_links (
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        linked_at BIGINT NOT NULL,
        PRIMARY KEY (repo, digest))",
    "CREATE INDEX IF NOT EXISTS blob_links_by_digest ON blob_links (digest)",
    // Upload sessions: any replica may serve any request of a session.
    "CREATE TABLE IF NOT EXISTS uploads (
        id TEXT PRIMARY KEY,
        repo {key} NOT NULL,
        owner TEXT,
        committed BIGINT NOT NULL,
        started_at BIGINT NOT NULL,
        updated_at BIGINT NOT NULL)",
    // Rows the eBPF domain derives from manifests, written in the
    // manifest's transaction and deleted with it.
    "CREATE TABLE IF NOT EXISTS artifacts (
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        kind TEXT NOT NULL,
        architecture TEXT NOT NULL,
        linked_at BIGINT NOT NULL,
        record TEXT NOT NULL,
        PRIMARY KEY (repo, digest))",
    "CREATE INDEX IF NOT EXISTS artifacts_by_digest ON artifacts (digest, linked_at)",
    "CREATE INDEX IF NOT EXISTS artifacts_by_name ON artifacts (name, version)",
    // The order of `GET /artifacts` and its cursor (version 2).
    "CREATE INDEX IF NOT EXISTS artifacts_listing
        ON artifacts (repo, version{c}, architecture{c}, digest)",
    // The multi-valued filters of `GET /artifacts`: `tag` (one row per
    // tag) and `kernel_version` (version 2; filled for older rows by
    // the artifacts module at start-up).
    "CREATE TABLE IF NOT EXISTS artifact_facets (
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        facet TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (repo, digest, facet, value))",
    "CREATE INDEX IF NOT EXISTS artifact_facets_by_value ON artifact_facets (facet, value)",
    "CREATE TABLE IF NOT EXISTS host_associations (
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        subject {key} NOT NULL,
        host {key} NOT NULL,
        PRIMARY KEY (repo, digest))",
    "CREATE INDEX IF NOT EXISTS host_associations_by_host ON host_associations (host)",
    "CREATE INDEX IF NOT EXISTS host_associations_by_subject ON host_associations (repo, subject)",
    "CREATE TABLE IF NOT EXISTS signatures (
        repo {key} NOT NULL,
        digest {key} NOT NULL,
        subject {key} NOT NULL,
        key_id TEXT,
        key_version BIGINT,
        algorithm TEXT,
        created TEXT,
        stored_at BIGINT NOT NULL,
        PRIMARY KEY (repo, digest))",
    "CREATE INDEX IF NOT EXISTS signatures_by_subject ON signatures (repo, subject)",
];

/// How a column is read and written when rows are copied between stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    Text,
    Int,
}

/// A table of [`STATEMENTS`] as `bpf-registry migrate` copies it: its
/// columns (nullable or not, each is copied as an optional value), its
/// primary key, and whether its rows belong in a copy of the store.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    pub name: &'static str,
    pub columns: &'static [(&'static str, ColumnKind)],
    pub key: &'static [&'static str],
    /// `false` for upload sessions: their bytes stay in the source's
    /// upload folders, so a copied row would name bytes the target lacks.
    pub copied: bool,
}

use ColumnKind::{Int, Text};

/// Every table of the schema, in the order a copy writes them (rows that
/// name others after them, tags next to last, `meta` last). A unit test
/// compares this list with the tables SQLite creates from [`STATEMENTS`]:
/// a new table or column cannot be forgotten by the copy.
pub const TABLES: &[Table] = &[
    Table {
        name: "repositories",
        columns: &[("name", Text), ("created_at", Int)],
        key: &["name"],
        copied: true,
    },
    Table {
        name: "blob_links",
        columns: &[("repo", Text), ("digest", Text), ("linked_at", Int)],
        key: &["repo", "digest"],
        copied: true,
    },
    Table {
        name: "manifests",
        columns: &[
            ("repo", Text),
            ("digest", Text),
            ("media_type", Text),
            ("size", Int),
            ("subject", Text),
            ("artifact_type", Text),
            ("descriptor", Text),
            ("linked_at", Int),
        ],
        key: &["repo", "digest"],
        copied: true,
    },
    Table {
        name: "manifest_refs",
        columns: &[("repo", Text), ("manifest", Text), ("target", Text)],
        key: &["repo", "manifest", "target"],
        copied: true,
    },
    Table {
        name: "artifacts",
        columns: &[
            ("repo", Text),
            ("digest", Text),
            ("name", Text),
            ("version", Text),
            ("kind", Text),
            ("architecture", Text),
            ("linked_at", Int),
            ("record", Text),
        ],
        key: &["repo", "digest"],
        copied: true,
    },
    Table {
        name: "artifact_facets",
        columns: &[
            ("repo", Text),
            ("digest", Text),
            ("facet", Text),
            ("value", Text),
        ],
        key: &["repo", "digest", "facet", "value"],
        copied: true,
    },
    Table {
        name: "host_associations",
        columns: &[
            ("repo", Text),
            ("digest", Text),
            ("subject", Text),
            ("host", Text),
        ],
        key: &["repo", "digest"],
        copied: true,
    },
    Table {
        name: "signatures",
        columns: &[
            ("repo", Text),
            ("digest", Text),
            ("subject", Text),
            ("key_id", Text),
            ("key_version", Int),
            ("algorithm", Text),
            ("created", Text),
            ("stored_at", Int),
        ],
        key: &["repo", "digest"],
        copied: true,
    },
    // The fleet (see `fleet`): hosts and reports are state the registry
    // keeps; the derived selector and channel rows follow their manifests.
    Table {
        name: "hosts",
        columns: &[
            ("host_id", Text),
            ("architecture", Text),
            ("kernel_release", Text),
            ("btf", Int),
            ("agent_version", Text),
            ("labels", Text),
            ("registered_at", Int),
            ("last_seen", Int),
        ],
        key: &["host_id"],
        copied: true,
    },
    Table {
        name: "deployments",
        columns: &[
            ("host_id", Text),
            ("repo", Text),
            ("digest", Text),
            ("state", Text),
            ("message", Text),
            ("attach_point", Text),
            ("reported_at", Int),
        ],
        key: &["host_id", "repo", "digest"],
        copied: true,
    },
    Table {
        name: "deployment_history",
        columns: &[
            ("host_id", Text),
            ("seq", Int),
            ("repo", Text),
            ("digest", Text),
            ("state", Text),
            ("message", Text),
            ("attach_point", Text),
            ("reported_at", Int),
        ],
        key: &["host_id", "seq"],
        copied: true,
    },
    Table {
        name: "channel_moves",
        columns: &[
            ("repo", Text),
            ("channel", Text),
            ("seq", Int),
            ("version", Text),
            ("digest", Text),
            ("action", Text),
            ("undone", Int),
            ("moved_at", Int),
            ("moved_by", Text),
        ],
        key: &["repo", "channel", "seq"],
        copied: true,
    },
    Table {
        name: "host_selectors",
        columns: &[
            ("repo", Text),
            ("digest", Text),
            ("subject", Text),
            ("selector", Text),
            ("channel", Text),
        ],
        key: &["repo", "digest"],
        copied: true,
    },
    Table {
        name: "association_channels",
        columns: &[("repo", Text), ("digest", Text), ("channel", Text)],
        key: &["repo", "digest"],
        copied: true,
    },
    // Counters of this store's changes: a copy starts its own.
    Table {
        name: "fleet_changes",
        columns: &[("scope", Text), ("seq", Int)],
        key: &["scope"],
        copied: false,
    },
    Table {
        name: "tags",
        columns: &[
            ("repo", Text),
            ("tag", Text),
            ("digest", Text),
            ("updated_at", Int),
        ],
        key: &["repo", "tag"],
        copied: true,
    },
    Table {
        name: "uploads",
        columns: &[
            ("id", Text),
            ("repo", Text),
            ("owner", Text),
            ("committed", Int),
            ("started_at", Int),
            ("updated_at", Int),
        ],
        key: &["id"],
        copied: false,
    },
    // The events outbox: undelivered events of the source stay with the
    // source (their sequence numbers are the source's; drain it first).
    Table {
        name: "event_outbox",
        columns: &[
            ("seq", Int),
            ("id", Text),
            ("kind", Text),
            ("created_at", Int),
            ("body", Text),
        ],
        key: &["seq"],
        copied: false,
    },
    Table {
        name: "event_deliveries",
        columns: &[
            ("seq", Int),
            ("webhook", Text),
            ("attempts", Int),
            ("next_at", Int),
            ("lease_until", Int),
            ("lease_owner", Text),
            ("delivered_at", Int),
            ("last_error", Text),
        ],
        key: &["seq", "webhook"],
        copied: false,
    },
    Table {
        name: "meta",
        columns: &[("key", Text), ("value", Text)],
        key: &["key"],
        copied: true,
    },
];

/// Creates what is missing and records the version. Two replicas starting
/// at once may both run this: every statement is idempotent, and on
/// PostgreSQL a transaction advisory lock makes them run one at a time.
pub(super) async fn apply(m: &Metadata) -> MetadataResult<()> {
    let mut tx = m.begin_write().await?;
    if m.engine() == super::Engine::Postgres {
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(0x6270_6672_6567_0003_i64)
            .execute(&mut *tx)
            .await?;
    }
    let key = key_type(m.engine());
    for s in STATEMENTS
        .iter()
        .chain(super::outbox::STATEMENTS)
        .chain(super::fleet::STATEMENTS)
    {
        let statement = s
            .replace("{key}", key)
            .replace("{c}", bytewise(m.engine()))
            .replace("{seq}", super::outbox::seq_type(m.engine()));
        sqlx::query(sqlx::AssertSqlSafe(statement))
            .execute(&mut *tx)
            .await?;
    }
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(VERSION.to_string())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// A value of the `meta` table.
pub async fn meta_value(m: &Metadata, key: &str) -> MetadataResult<Option<String>> {
    use sqlx::Row;
    let row = sqlx::query("SELECT value FROM meta WHERE key = $1")
        .bind(key.to_string())
        .fetch_optional(m.pool())
        .await?;
    Ok(row.map(|r| r.get::<String, _>(0)))
}

/// Sets a value of the `meta` table.
pub async fn set_meta_value(m: &Metadata, key: &str, value: &str) -> MetadataResult<()> {
    sqlx::query(
        "INSERT INTO meta (key, value) VALUES ($1, $2)
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
    )
    .bind(key.to_string())
    .bind(value.to_string())
    .execute(m.pool())
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    /// The list the copy uses is the schema: every table, column, type
    /// and primary key SQLite made from the statements, and nothing else.
    #[tokio::test]
    async fn the_table_list_is_the_schema() {
        let dir = tempfile::tempdir().unwrap();
        let m = Metadata::open_in_dir(dir.path()).await.unwrap();
        let tables: Vec<String> = sqlx::query(
            "SELECT name FROM sqlite_master WHERE type = 'table'
                 AND name NOT LIKE 'sqlite_%' ORDER BY name",
        )
        .fetch_all(m.pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get::<String, _>(0))
        .collect();
        let mut listed: Vec<String> = TABLES.iter().map(|t| t.name.to_string()).collect();
        listed.sort();
        assert_eq!(tables, listed, "schema tables vs schema::TABLES");
        for t in TABLES {
            let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
                "SELECT name, type, pk FROM pragma_table_info('{}') ORDER BY cid",
                t.name
            )))
            .fetch_all(m.pool())
            .await
            .unwrap();
            let columns: Vec<(String, ColumnKind)> = rows
                .iter()
                .map(|r| {
                    let kind = match r.get::<String, _>(1).as_str() {
                        "TEXT" => Text,
                        // INTEGER: the outbox's autoincrement key.
                        "BIGINT" | "INTEGER" => Int,
                        other => panic!("{}: column type {other} has no ColumnKind", t.name),
                    };
                    (r.get::<String, _>(0), kind)
                })
                .collect();
            let listed: Vec<(String, ColumnKind)> =
                t.columns.iter().map(|(c, k)| (c.to_string(), *k)).collect();
            assert_eq!(columns, listed, "columns of {}", t.name);
            let mut key: Vec<(i64, String)> = rows
                .iter()
                .filter(|r| r.get::<i64, _>(2) > 0)
                .map(|r| (r.get::<i64, _>(2), r.get::<String, _>(0)))
                .collect();
            key.sort();
            let key: Vec<String> = key.into_iter().map(|(_, c)| c).collect();
            assert_eq!(key, t.key, "primary key of {}", t.name);
        }
    }
}
