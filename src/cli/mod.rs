//! The maintenance subcommands of the binary: `gc`, `scrub` and (in
//! [`migrate`]) `migrate`. Each reads
//! the same `BPF_REGISTRY_*` configuration as the server, print a summary
//! on stdout (or the JSON report with `--json`), log a structured line on
//! stderr, and return the process exit status.
//!
//! `gc` and `scrub --repair` change the store, so they take the data
//! folder's lock exclusively and refuse to run beside a server (which runs
//! the collector itself, every `BPF_REGISTRY_GC_INTERVAL`) or another
//! maintenance command. `gc --dry-run` and `scrub` only read: they take no
//! lock (so they never keep a server from starting) and run beside a
//! server, noting on stderr that findings may then include writes in
//! flight.

mod migrate;

use std::sync::Arc;
use std::time::Duration;

pub use migrate::{migrate, MIGRATE_USAGE};

use crate::config::Config;
use crate::registry::gc::{GcOptions, GcReport};
use crate::registry::scrub::ScrubReport;
use crate::registry::Registry;
use crate::storage::lock::{DataDirLock, LockError};

pub const GC_USAGE: &str = "Usage: bpf-registry gc [--dry-run] [--delete-untagged] [--json]

Deletes blobs that no manifest kept in a repository references and that are
older than BPF_REGISTRY_GC_GRACE, dangling links, upload sessions older than
BPF_REGISTRY_UPLOAD_TTL and temporary files of interrupted writes.
  --dry-run          report what would be deleted, delete nothing
  --delete-untagged  first unlink manifests no tag reaches (directly, as an
                     index child, or as a referrer of a live manifest)
  --json             print the report as JSON
";

pub const SCRUB_USAGE: &str = "Usage: bpf-registry scrub [--repair] [--json]

Re-hashes every blob and checks the metadata rows against the blobs: every
tag, blob link, manifest reference, index child and referrer row. Exit
status 0 when the store is sound, 1 when anything is wrong (even if
repaired), 2 on a usage error.
  --repair  move corrupt blobs to _quarantine/sha256/<hex> (the rows naming
            them are reported, not changed)
  --json    print the report as JSON
";

/// Exit status for "the command could not run" (usage, config, lock).
const EXIT_USAGE: i32 = 2;
const EXIT_FAILED: i32 = 1;

struct Flags {
    set: Vec<&'static str>,
}

impl Flags {
    fn parse(args: &[String], known: &[&'static str], usage: &str) -> Result<Flags, i32> {
        let mut set = Vec::new();
        for a in args {
            if a == "--help" || a == "-h" {
                print!("{usage}");
                return Err(0);
            }
            match known.iter().find(|k| **k == a.as_str()) {
                Some(k) => set.push(*k),
                None => {
                    eprintln!("error: unknown argument {a:?}\n\n{usage}");
                    return Err(EXIT_USAGE);
                }
            }
        }
        Ok(Flags { set })
    }
    fn has(&self, f: &str) -> bool {
        self.set.contains(&f)
    }
}

/// Logging for the maintenance commands: to stderr, no colours.
pub(crate) fn setup(config: &Config) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "bpf_registry={}",
            config.log_level.as_filter()
        )))
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .try_init();
}

/// Config, lock (for a command that writes), runtime and registry for a
/// maintenance command.
fn open(
    writes: bool,
) -> Result<
    (
        Config,
        Option<DataDirLock>,
        tokio::runtime::Runtime,
        Arc<Registry>,
    ),
    i32,
> {
    let config = Config::from_env().map_err(|e| {
        eprintln!("error: invalid configuration: {e}");
        EXIT_USAGE
    })?;
    setup(&config);
    let lock = if writes {
        Some(
            DataDirLock::acquire_exclusive(&config.data_dir).map_err(|e| {
                match e {
                    LockError::Busy(_) => eprintln!(
                        "error: {} is in use by a running bpf-registry server or another \
                         maintenance command; stop it first (the server collects garbage \
                         itself every BPF_REGISTRY_GC_INTERVAL)",
                        config.data_dir.display()
                    ),
                    LockError::Io(..) => eprintln!("error: {e}"),
                }
                EXIT_FAILED
            })?,
        )
    } else {
        if DataDirLock::is_held(&config.data_dir) {
            eprintln!(
                "note: a server or maintenance command is using {}; read-only, this \
                 reports what it sees now, which may include writes in flight",
                config.data_dir.display()
            );
        }
        None
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the runtime: {e}");
            EXIT_FAILED
        })?;
    let registry = runtime
        .block_on(crate::open_registry(&config, None))
        .map_err(|e| {
            eprintln!("error: cannot open {}: {e}", config.data_dir.display());
            EXIT_FAILED
        })?;
    Ok((config, lock, runtime, registry))
}

/// Bytes in a short human form (`12.3 MiB`).
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS.get(u).copied().unwrap_or("B"))
    }
}

fn print_gc(r: &GcReport) {
    let would = if r.dry_run { "would be " } else { "" };
    println!(
        "gc: {} repositories, {} manifests kept, {} untagged manifests {would}deleted",
        r.repositories, r.manifests_kept, r.manifests_deleted
    );
    println!(
        "gc: {} blobs, {} referenced, {} {would}deleted, {} bytes {would}freed ({}); {} unreferenced kept (younger than the grace period), {} kept (used by a push during the run)",
        r.blobs_total,
        r.blobs_marked,
        r.blobs_deleted,
        r.bytes_freed,
        human_bytes(r.bytes_freed),
        r.blobs_young,
        r.protected
    );
    if r.dry_run {
        println!(
            "gc: blob links that would be removed: {} (upload sessions and temporary files not examined)",
            r.blob_links_removed
        );
    } else {
        println!(
            "gc: blob links removed: {}; upload sessions purged: {}; temporary files removed: {}",
            r.blob_links_removed, r.uploads_purged, r.temp_files_removed
        );
    }
    println!("gc: done in {} ms", r.duration_ms);
}

fn print_scrub(r: &ScrubReport) {
    for p in &r.problems {
        println!(
            "scrub: {:<24} {}{} {}{}",
            p.kind,
            p.repository
                .as_deref()
                .map(|r| format!("{r} "))
                .unwrap_or_default(),
            p.object,
            p.detail,
            if p.repaired { " [repaired]" } else { "" }
        );
    }
    println!(
        "scrub: {} blobs re-hashed ({}), {} repositories, {} tags, {} manifests, {} blob links, {} referrers checked in {} ms",
        r.blobs_checked,
        human_bytes(r.bytes_hashed),
        r.repositories,
        r.tags_checked,
        r.manifests_checked,
        r.blob_links_checked,
        r.referrers_checked,
        r.duration_ms
    );
    if r.is_clean() {
        println!("scrub: OK, no problems found");
    } else {
        println!(
            "scrub: FAILED, {} problems found, {} repaired",
            r.problems.len(),
            r.repaired()
        );
    }
}

fn print_json<T: serde::Serialize>(v: &T) {
    match serde_json::to_string_pretty(v) {
        Ok(s) => println!("{s}"),
        Err(e) => eprintln!("error: cannot print the report: {e}"),
    }
}

/// `bpf-registry gc ...`; `args` excludes the subcommand itself.
pub fn gc(args: &[String]) -> i32 {
    let flags = match Flags::parse(
        args,
        &["--dry-run", "--delete-untagged", "--json"],
        GC_USAGE,
    ) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let dry_run = flags.has("--dry-run");
    let (config, _lock, runtime, registry) = match open(!dry_run) {
        Ok(x) => x,
        Err(code) => return code,
    };
    let opts = GcOptions {
        dry_run,
        delete_untagged: flags.has("--delete-untagged"),
        grace: config.gc_grace,
        upload_ttl: config.upload_ttl,
        // On SQLite no server writes beside the exclusive lock: every temp
        // is dead. With a shared metadata store replicas may be writing
        // (their own data dirs, the same blob store): only temps as old as
        // a server's collector would take.
        temp_min_age: match config.metadata.engine() {
            crate::metadata::Engine::Sqlite => Duration::ZERO,
            crate::metadata::Engine::Postgres => config.upload_ttl,
        },
    };
    match runtime.block_on(registry.gc(&opts)) {
        Ok(report) => {
            report.log();
            if flags.has("--json") {
                print_json(&report);
            } else {
                print_gc(&report);
            }
            0
        }
        Err(e) => {
            eprintln!("error: garbage collection failed: {e}");
            EXIT_FAILED
        }
    }
}

/// `bpf-registry scrub ...`; `args` excludes the subcommand itself.
pub fn scrub(args: &[String]) -> i32 {
    let flags = match Flags::parse(args, &["--repair", "--json"], SCRUB_USAGE) {
        Ok(f) => f,
        Err(code) => return code,
    };
    let repair = flags.has("--repair");
    let (_config, _lock, runtime, registry) = match open(repair) {
        Ok(x) => x,
        Err(code) => return code,
    };
    match runtime.block_on(registry.scrub(repair)) {
        Ok(report) => {
            report.log();
            if flags.has("--json") {
                print_json(&report);
            } else {
                print_scrub(&report);
            }
            if report.is_clean() {
                0
            } else {
                EXIT_FAILED
            }
        }
        Err(e) => {
            eprintln!("error: scrub failed: {e}");
            EXIT_FAILED
        }
    }
}
