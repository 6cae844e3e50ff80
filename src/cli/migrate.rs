//! `bpf-registry migrate`: the command line of
//! [`crate::registry::migrate`]. Reads the source from the usual
//! `BPF_REGISTRY_*` configuration and the target from its flags, takes the
//! locks, prints the summary (or JSON) and returns the exit status: 0 done,
//! 1 failed (run it again once the cause is fixed: it resumes), 2 not run
//! (usage, configuration, a store in use, a target holding another store).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{human_bytes, print_json, setup, EXIT_FAILED, EXIT_USAGE};
use crate::config::Config;
use crate::metadata::{Metadata, MetadataConfig};
use crate::registry::migrate::{MigrateError, MigrateOptions, MigrateReport, Target};
use crate::storage::blob_store::BlobStoreConfig;
use crate::storage::lock::{DataDirLock, LockError};
use crate::storage::{Backend, FsBackend};

pub const MIGRATE_USAGE: &str = "Usage: bpf-registry migrate --metadata <postgres://...|sqlite:PATH> [--blob-store <s3://...|fs:DIR>] [--json] [--batch-rows N]

Copies the store this configuration names (BPF_REGISTRY_DATA_DIR,
BPF_REGISTRY_METADATA, BPF_REGISTRY_BLOB_STORE) to other engines: every
blob (hashed while copied; skipped when the target has it with the same
size), then every metadata row. Upload sessions in progress are not copied.
Run it with the server stopped; run it again after any failure or kill: it
resumes. Exit status 0 done, 1 failed, 2 not run.
  --metadata    the target metadata store: a postgres:// URL (an empty
                database, or a copy of this store to resume), or sqlite:PATH
                (a server reads <data dir>/metadata.db: sqlite:DIR/metadata.db)
  --blob-store  the target blob store: s3://<bucket>[/<prefix>]?endpoint=..&region=..
                (credentials from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)
                or fs:DIR (a data dir); without it the target shares this
                store's blobs and only the rows are copied
  --json        print the report as JSON
  --batch-rows  rows per transaction (default 1000)
";

/// The target blob store of `--blob-store`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum BlobTarget {
    Fs(PathBuf),
    S3(BlobStoreConfig),
}

#[derive(Debug)]
struct Args {
    metadata: MetadataConfig,
    blob_store: Option<BlobTarget>,
    json: bool,
    batch_rows: usize,
}

fn absolute(p: &str) -> Result<PathBuf, String> {
    if p.is_empty() {
        return Err("an empty path".into());
    }
    std::path::absolute(p).map_err(|e| format!("{p}: {e}"))
}

fn parse_metadata(v: &str) -> Result<MetadataConfig, String> {
    if let Some(path) = v.strip_prefix("sqlite:") {
        return Ok(MetadataConfig::Sqlite {
            path: absolute(path).map_err(|e| format!("--metadata sqlite:PATH: {e}"))?,
        });
    }
    if v.starts_with("postgres://") || v.starts_with("postgresql://") {
        return MetadataConfig::parse(Some(v), Path::new("."));
    }
    Err("--metadata must be a postgres:// URL or sqlite:PATH".into())
}

fn parse_blob_store(v: &str) -> Result<BlobTarget, String> {
    if let Some(dir) = v.strip_prefix("fs:") {
        return Ok(BlobTarget::Fs(
            absolute(dir).map_err(|e| format!("--blob-store fs:DIR: {e}"))?,
        ));
    }
    if v.starts_with("s3://") {
        return BlobStoreConfig::parse(v)
            .map(BlobTarget::S3)
            .map_err(|e| format!("--blob-store: {e}"));
    }
    Err("--blob-store must be s3://... or fs:DIR".into())
}

fn parse_args(args: &[String]) -> Result<Args, String> {
    let mut metadata = None;
    let mut blob_store = None;
    let mut json = false;
    let mut batch_rows = MigrateOptions::default().batch_rows;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| it.next().cloned())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        match flag {
            "--metadata" => metadata = Some(parse_metadata(&value("--metadata")?)?),
            "--blob-store" => blob_store = Some(parse_blob_store(&value("--blob-store")?)?),
            "--batch-rows" => {
                batch_rows = value("--batch-rows")?
                    .parse()
                    .ok()
                    .filter(|n| (1..=4000).contains(n))
                    .ok_or("--batch-rows must be 1 to 4000")?
            }
            "--json" if inline.is_none() => json = true,
            _ => return Err(format!("unknown argument {a:?}")),
        }
    }
    Ok(Args {
        metadata: metadata.ok_or("--metadata is required")?,
        blob_store,
        json,
        batch_rows,
    })
}

/// The same folder (both exist and resolve alike, or are spelled alike).
fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

fn lock(dir: &Path, what: &str) -> Result<DataDirLock, i32> {
    DataDirLock::acquire_exclusive(dir).map_err(|e| {
        match e {
            LockError::Busy(_) => eprintln!(
                "error: {} ({what}) is in use by a running bpf-registry server or a maintenance \
                 command; stop it first: the store must not change while it is copied",
                dir.display()
            ),
            LockError::Io(..) => eprintln!("error: {e}"),
        }
        EXIT_USAGE
    })
}

/// The source and target folders `migrate` holds exclusive while it runs.
fn take_locks(config: &Config, args: &Args) -> Result<Vec<DataDirLock>, i32> {
    let mut held: Vec<PathBuf> = vec![config.data_dir.clone()];
    let mut locks = vec![lock(&config.data_dir, "the source data dir")?];
    let mut targets: Vec<(PathBuf, &str)> = Vec::new();
    if let Some(BlobTarget::Fs(dir)) = &args.blob_store {
        targets.push((dir.clone(), "the target data dir"));
    }
    if let MetadataConfig::Sqlite { path } = &args.metadata {
        if let Some(parent) = path.parent() {
            targets.push((parent.to_path_buf(), "the target metadata's folder"));
        }
    }
    for (dir, what) in targets {
        if held.iter().any(|h| same_dir(h, &dir)) {
            continue;
        }
        locks.push(lock(&dir, what)?);
        held.push(dir);
    }
    Ok(locks)
}

/// The target's blob store; `None` when it is the source's own.
fn open_blob_target(config: &Config, args: &Args) -> Result<Option<Arc<dyn Backend>>, String> {
    match (&args.blob_store, &config.blob_store) {
        (None, _) => Ok(None),
        (Some(BlobTarget::Fs(dir)), BlobStoreConfig::Fs) if same_dir(dir, &config.data_dir) => {
            Ok(None)
        }
        (Some(BlobTarget::S3(to)), from) if to == from => Ok(None),
        (Some(BlobTarget::Fs(dir)), _) => FsBackend::open(dir)
            .map(|b| Some(Arc::new(b) as Arc<dyn Backend>))
            .map_err(|e| format!("cannot open {}: {e}", dir.display())),
        (Some(BlobTarget::S3(to)), _) => to
            .open(&config.data_dir, config.direct_writes)
            .map(Some)
            .map_err(|e| e.0),
    }
}

fn describe_blob_store(c: &BlobStoreConfig) -> String {
    match c {
        BlobStoreConfig::Fs => "fs".into(),
        BlobStoreConfig::S3(l) if l.prefix.is_empty() => {
            format!("s3://{} at {}", l.bucket, l.endpoint)
        }
        BlobStoreConfig::S3(l) => format!("s3://{}/{} at {}", l.bucket, l.prefix, l.endpoint),
    }
}

fn print_report(r: &MigrateReport, source: &str, target: &str) {
    println!("migrate: {source} -> {target}");
    if r.resumed {
        println!(
            "migrate: resumed a copy of store {} (the target held part or all of it)",
            r.source_store_id
        );
    }
    if r.blobs_copied_between_stores {
        println!(
            "migrate: blobs: {} copied ({}, {} bytes), {} skipped (already in the target)",
            r.blobs.copied,
            human_bytes(r.blobs.bytes_copied),
            r.blobs.bytes_copied,
            r.blobs.skipped
        );
    } else {
        println!("migrate: blobs: none copied (the target uses this blob store)");
    }
    for t in &r.tables {
        println!(
            "migrate: rows: {:<18} {:>8} in the source, {:>8} written, {:>8} in the target",
            t.table, t.source_rows, t.written, t.target_rows
        );
    }
    println!(
        "migrate: {} upload sessions in progress not copied (their clients start them again)",
        r.upload_sessions_not_copied
    );
    println!(
        "migrate: done in {:.1} s; check the target with `bpf-registry scrub`",
        r.duration_ms as f64 / 1000.0
    );
}

/// `bpf-registry migrate ...`; `args` excludes the subcommand itself.
pub fn migrate(args: &[String]) -> i32 {
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{MIGRATE_USAGE}");
        return 0;
    }
    let args = match parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("error: {e}\n\n{MIGRATE_USAGE}");
            return EXIT_USAGE;
        }
    };
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return EXIT_USAGE;
        }
    };
    setup(&config);
    let _locks = match take_locks(&config, &args) {
        Ok(l) => l,
        Err(code) => return code,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let source = format!(
        "{} + {:?} (data dir {})",
        describe_blob_store(&config.blob_store),
        config.metadata,
        config.data_dir.display()
    );
    let target = format!(
        "{} + {:?}",
        match &args.blob_store {
            None => "the same blob store".to_string(),
            Some(BlobTarget::Fs(d)) => format!("fs:{}", d.display()),
            Some(BlobTarget::S3(c)) => describe_blob_store(c),
        },
        args.metadata
    );
    runtime.block_on(async {
        let registry = match crate::open_registry(&config, None).await {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: cannot open the source store: {e}");
                return EXIT_FAILED;
            }
        };
        let blobs = match open_blob_target(&config, &args) {
            Ok(b) => b,
            Err(e) => {
                eprintln!("error: cannot open the target blob store: {e}");
                return EXIT_USAGE;
            }
        };
        if let Some(b) = blobs.clone() {
            let failure = match tokio::task::spawn_blocking(move || b.probe_writable()).await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(e.to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(e) = failure {
                eprintln!("error: the target blob store does not accept writes: {e}");
                return EXIT_FAILED;
            }
        }
        let metadata = match Metadata::open(&args.metadata).await {
            Ok(m) => m,
            Err(e) => {
                eprintln!("error: cannot open the target metadata store: {e}");
                return EXIT_FAILED;
            }
        };
        let target_store = Target { metadata, blobs };
        let options = MigrateOptions {
            batch_rows: args.batch_rows,
        };
        match crate::registry::migrate::migrate(&registry, &target_store, &options).await {
            Ok(report) => {
                tracing::info!(
                    blobs_copied = report.blobs.copied,
                    blobs_skipped = report.blobs.skipped,
                    bytes_copied = report.blobs.bytes_copied,
                    duration_ms = report.duration_ms,
                    "migrate done"
                );
                if args.json {
                    print_json(&report);
                } else {
                    print_report(&report, &source, &target);
                }
                0
            }
            Err(MigrateError::Refused(m)) => {
                eprintln!("error: refused, the target was not changed: {m}");
                EXIT_USAGE
            }
            Err(MigrateError::CorruptBlobs(blobs)) => {
                for c in &blobs.corrupt {
                    eprintln!(
                        "error: blob {} holds {} bytes hashing to {}: not copied",
                        c.digest, c.size, c.actual
                    );
                }
                eprintln!(
                    "error: {} source blobs do not match their digest; no rows were copied \
                     (run `bpf-registry scrub` on the source)",
                    blobs.corrupt.len()
                );
                EXIT_FAILED
            }
            Err(MigrateError::Registry(e)) => {
                eprintln!("error: migrate failed (run it again to resume): {e}");
                EXIT_FAILED
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        parse_args(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn flags_name_the_target_engines() {
        let a = parse(&["--metadata", "postgres://u@h/db", "--json"]).unwrap();
        assert_eq!(a.metadata.engine(), crate::metadata::Engine::Postgres);
        assert!(a.json && a.blob_store.is_none());
        let a = parse(&["--metadata=sqlite:/x/metadata.db", "--blob-store=fs:/x"]).unwrap();
        assert_eq!(
            a.metadata,
            MetadataConfig::Sqlite {
                path: PathBuf::from("/x/metadata.db")
            }
        );
        assert_eq!(a.blob_store, Some(BlobTarget::Fs(PathBuf::from("/x"))));
        let a = parse(&[
            "--metadata",
            "postgres://u@h/db",
            "--blob-store",
            "s3://bkt/p?endpoint=http://127.0.0.1:3900&region=garage",
            "--batch-rows",
            "7",
        ])
        .unwrap();
        assert!(matches!(a.blob_store, Some(BlobTarget::S3(_))));
        assert_eq!(a.batch_rows, 7);
    }

    #[test]
    fn bad_flags_are_refused_by_name() {
        assert!(parse(&[]).unwrap_err().contains("--metadata is required"));
        assert!(parse(&["--metadata", "mysql://x"])
            .unwrap_err()
            .contains("postgres:// URL or sqlite:PATH"));
        assert!(parse(&["--metadata"])
            .unwrap_err()
            .contains("needs a value"));
        assert!(
            parse(&["--metadata", "sqlite:/a", "--blob-store", "gs://x"])
                .unwrap_err()
                .contains("s3://... or fs:DIR")
        );
        assert!(parse(&[
            "--metadata",
            "sqlite:/a",
            "--blob-store",
            "s3://bkt?region=r"
        ])
        .unwrap_err()
        .contains("endpoint"));
        assert!(parse(&["--metadata", "sqlite:/a", "--batch-rows", "0"])
            .unwrap_err()
            .contains("1 to 4000"));
        assert!(parse(&["--metadata", "sqlite:/a", "--force"])
            .unwrap_err()
            .contains("unknown argument"));
    }
}
