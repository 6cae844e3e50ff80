//! Copies the metadata rows of one store into another, generically over
//! `schema::TABLES`: each table is read in primary-key order in batches
//! (keyset pagination, so memory stays bounded), and each batch is one
//! upsert transaction in the target. A row already in the target with the
//! same values is left alone (and not counted as written), so a rerun
//! writes nothing and a run cut short by `kill -9` redoes only what was
//! not committed.

use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{Any, Row};

use crate::metadata::schema::{ColumnKind, Table};
use crate::metadata::{Metadata, MetadataResult};

/// One value of a copied row (every column is copied as nullable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Text(Option<String>),
    Int(Option<i64>),
}

impl Value {
    fn read(row: &AnyRow, i: usize, kind: ColumnKind) -> MetadataResult<Value> {
        Ok(match kind {
            ColumnKind::Text => Value::Text(row.try_get::<Option<String>, _>(i)?),
            ColumnKind::Int => Value::Int(row.try_get::<Option<i64>, _>(i)?),
        })
    }

    fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> sqlx::query::Query<'q, Any, sqlx::any::AnyArguments> {
        match self {
            Value::Text(v) => q.bind(v),
            Value::Int(v) => q.bind(v),
        }
    }
}

/// What the copy did to one table.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct TableReport {
    pub table: String,
    /// Rows read from the source (those a copy skips by rule excluded).
    pub source_rows: u64,
    /// Rows inserted into the target, or changed there to the source's
    /// values; the rest were already there, equal.
    pub written: u64,
    /// Rows of the table in the target after the copy.
    pub target_rows: u64,
}

fn select_sql(t: &Table, after_key: bool, limit: usize) -> String {
    let columns: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    let key = t.key.join(", ");
    let filter = if after_key {
        let params: Vec<String> = (1..=t.key.len()).map(|i| format!("${i}")).collect();
        format!(" WHERE ({key}) > ({})", params.join(", "))
    } else {
        String::new()
    };
    format!(
        "SELECT {} FROM {}{filter} ORDER BY {key} LIMIT {limit}",
        columns.join(", "),
        t.name
    )
}

/// `INSERT ... ON CONFLICT DO UPDATE ... WHERE <a value differs>` for
/// `rows` rows: inserted or changed rows count in `rows_affected`, equal
/// ones do not (`IS DISTINCT FROM`: SQLite 3.39 and PostgreSQL alike).
fn upsert_sql(t: &Table, rows: usize) -> String {
    let columns: Vec<&str> = t.columns.iter().map(|(c, _)| *c).collect();
    let width = columns.len();
    let tuples: Vec<String> = (0..rows)
        .map(|r| {
            let params: Vec<String> = (1..=width).map(|c| format!("${}", r * width + c)).collect();
            format!("({})", params.join(", "))
        })
        .collect();
    let others: Vec<&str> = columns
        .iter()
        .copied()
        .filter(|c| !t.key.contains(c))
        .collect();
    let conflict = if others.is_empty() {
        "DO NOTHING".to_string()
    } else {
        let set: Vec<String> = others
            .iter()
            .map(|c| format!("{c} = excluded.{c}"))
            .collect();
        let differs: Vec<String> = others
            .iter()
            .map(|c| format!("{}.{c} IS DISTINCT FROM excluded.{c}", t.name))
            .collect();
        format!(
            "DO UPDATE SET {} WHERE {}",
            set.join(", "),
            differs.join(" OR ")
        )
    };
    format!(
        "INSERT INTO {} ({}) VALUES {} ON CONFLICT ({}) {conflict}",
        t.name,
        columns.join(", "),
        tuples.join(", "),
        t.key.join(", ")
    )
}

/// Copies table `t` from `source` to `target` in batches of `batch_rows`,
/// leaving out rows `skip` says belong to the source alone.
pub(super) async fn copy_table(
    source: &Metadata,
    target: &Metadata,
    t: &Table,
    batch_rows: usize,
    skip: impl Fn(&[Value]) -> bool,
) -> MetadataResult<TableReport> {
    let mut report = TableReport {
        table: t.name.to_string(),
        ..TableReport::default()
    };
    let key_at: Vec<usize> = t
        .key
        .iter()
        .filter_map(|k| t.columns.iter().position(|(c, _)| c == k))
        .collect();
    let mut last_key: Option<Vec<Value>> = None;
    loop {
        let sql = select_sql(t, last_key.is_some(), batch_rows);
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        for v in last_key.iter().flatten() {
            q = v.clone().bind(q);
        }
        let fetched = q.fetch_all(source.pool()).await?;
        let mut rows: Vec<Vec<Value>> = Vec::with_capacity(fetched.len());
        for row in &fetched {
            let values = t
                .columns
                .iter()
                .enumerate()
                .map(|(i, (_, kind))| Value::read(row, i, *kind))
                .collect::<MetadataResult<Vec<Value>>>()?;
            rows.push(values);
        }
        let Some(last) = rows.last() else {
            break;
        };
        last_key = Some(
            key_at
                .iter()
                .filter_map(|i| last.get(*i).cloned())
                .collect(),
        );
        let full = rows.len() == batch_rows;
        rows.retain(|r| !skip(r));
        if !rows.is_empty() {
            report.source_rows += rows.len() as u64;
            let sql = upsert_sql(t, rows.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for v in rows.into_iter().flatten() {
                q = v.bind(q);
            }
            // One batch, one transaction (taking the engine's write lock
            // like every other write of the target).
            let mut tx = target.begin_write().await?;
            report.written += q.execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
        }
        if !full {
            break;
        }
    }
    report.target_rows = count(target, t).await?;
    Ok(report)
}

/// The rows of `t` in `m`.
pub(super) async fn count(m: &Metadata, t: &Table) -> MetadataResult<u64> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM {}",
        t.name
    )))
    .fetch_one(m.pool())
    .await?;
    Ok(row.try_get::<i64, _>(0)?.max(0) as u64)
}

/// Whether `t` has any row in `m`.
pub(super) async fn has_rows(m: &Metadata, t: &Table) -> MetadataResult<bool> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT 1 FROM {} LIMIT 1",
        t.name
    )))
    .fetch_optional(m.pool())
    .await?;
    Ok(row.is_some())
}

/// The text value of column `column` of a copied row.
pub(super) fn text_of<'a>(t: &Table, row: &'a [Value], column: &str) -> Option<&'a str> {
    let i = t.columns.iter().position(|(c, _)| *c == column)?;
    match row.get(i) {
        Some(Value::Text(Some(s))) => Some(s.as_str()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::schema::TABLES;

    fn table(name: &str) -> &'static Table {
        TABLES.iter().find(|t| t.name == name).unwrap()
    }

    #[test]
    fn statements_name_every_column_and_page_by_the_key() {
        let tags = table("tags");
        assert_eq!(
            select_sql(tags, true, 10),
            "SELECT repo, tag, digest, updated_at FROM tags WHERE (repo, tag) > ($1, $2) ORDER BY repo, tag LIMIT 10"
        );
        assert_eq!(
            upsert_sql(tags, 2),
            "INSERT INTO tags (repo, tag, digest, updated_at) VALUES ($1, $2, $3, $4), ($5, $6, $7, $8) \
             ON CONFLICT (repo, tag) DO UPDATE SET digest = excluded.digest, updated_at = excluded.updated_at \
             WHERE tags.digest IS DISTINCT FROM excluded.digest OR tags.updated_at IS DISTINCT FROM excluded.updated_at"
        );
        assert!(upsert_sql(table("manifest_refs"), 1).ends_with("DO NOTHING"));
    }

    #[tokio::test]
    async fn a_copy_pages_through_every_row_and_a_rerun_writes_nothing() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let source = Metadata::open_in_dir(a.path()).await.unwrap();
        let target = Metadata::open_in_dir(b.path()).await.unwrap();
        for i in 0..25 {
            sqlx::query("INSERT INTO tags (repo, tag, digest, updated_at) VALUES ($1, $2, $3, $4)")
                .bind(format!("r{}", i % 3))
                .bind(format!("t{i}"))
                .bind(format!("sha256:{i:064}"))
                .bind(i as i64)
                .execute(source.pool())
                .await
                .unwrap();
        }
        let tags = table("tags");
        let first = copy_table(&source, &target, tags, 4, |_| false)
            .await
            .unwrap();
        assert_eq!(
            (first.source_rows, first.written, first.target_rows),
            (25, 25, 25)
        );
        let again = copy_table(&source, &target, tags, 4, |_| false)
            .await
            .unwrap();
        assert_eq!(
            (again.source_rows, again.written, again.target_rows),
            (25, 0, 25)
        );
        // A row that changed in the source is rewritten, alone.
        sqlx::query("UPDATE tags SET digest = 'sha256:moved' WHERE tag = 't7'")
            .execute(source.pool())
            .await
            .unwrap();
        let third = copy_table(&source, &target, tags, 4, |_| false)
            .await
            .unwrap();
        assert_eq!(third.written, 1);
        let moved: String = sqlx::query("SELECT digest FROM tags WHERE tag = 't7'")
            .fetch_one(target.pool())
            .await
            .unwrap()
            .get(0);
        assert_eq!(moved, "sha256:moved");
    }
}
