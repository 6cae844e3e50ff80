//! The storage configuration every test server runs on, chosen by the
//! environment of `cargo test`:
//!
//! - `BPF_TEST_METADATA` = `sqlite` (default: nothing is set, the server's
//!   own default) or `postgres`: then `BPF_TEST_POSTGRES` must be the URL of
//!   a server where its user may `CREATE DATABASE` (what
//!   `conformance/postgres.sh start DIR` prints), and each test server gets
//!   a fresh database `t_<hex>` as `BPF_REGISTRY_METADATA`.
//! - `BPF_TEST_BLOB_STORE` = `fs` (default: nothing is set) or `s3`: then
//!   `BPF_TEST_S3_URL` must be `s3://<bucket>[/<prefix>]?endpoint=..&region=..`
//!   (what `conformance/garage.sh` prints), and each test server gets a
//!   prefix of its own, `t-<hex>`, as `BPF_REGISTRY_BLOB_STORE`.
//!
//! `TestServer::start_on` adds these to a server's variables unless the test
//! set them itself, so a restart keeps the database and the prefix. Tests
//! that read files of the data dir are about the fs blob store: they check
//! `blob_store_is_fs()`. Databases created here are dropped when the test
//! process exits (`BPF_TEST_KEEP_DATABASES=1` keeps them for a post-mortem).

use std::process::{Command, Stdio};
use std::sync::{Mutex, Once};

use super::TestServer;

/// The server variable naming the metadata engine.
pub const METADATA_VAR: &str = "BPF_REGISTRY_METADATA";
/// The server variable naming the blob store.
pub const BLOB_STORE_VAR: &str = "BPF_REGISTRY_BLOB_STORE";

/// Where the metadata lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetadataEngine {
    Sqlite,
    Postgres,
}

/// Where the blob bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobStore {
    Fs,
    S3,
}

/// A configuration: which engines the next servers are started on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Engines {
    pub metadata: MetadataEngine,
    pub blob_store: BlobStore,
}

impl Engines {
    /// The configuration `BPF_TEST_METADATA` and `BPF_TEST_BLOB_STORE`
    /// select. An unknown value panics: a typo must not silently test the
    /// defaults.
    pub fn from_env() -> Engines {
        let metadata = match test_var("BPF_TEST_METADATA").as_deref() {
            None | Some("sqlite") => MetadataEngine::Sqlite,
            Some("postgres") => MetadataEngine::Postgres,
            Some(other) => panic!("BPF_TEST_METADATA={other:?}: expected sqlite or postgres"),
        };
        let blob_store = match test_var("BPF_TEST_BLOB_STORE").as_deref() {
            None | Some("fs") => BlobStore::Fs,
            Some("s3") => BlobStore::S3,
            Some(other) => panic!("BPF_TEST_BLOB_STORE={other:?}: expected fs or s3"),
        };
        Engines {
            metadata,
            blob_store,
        }
    }

    /// Adds the variables of this configuration that `env` does not set yet,
    /// creating a fresh database and a fresh S3 prefix where needed.
    pub fn add_missing(&self, env: &mut Vec<(String, String)>) {
        let has = |env: &[(String, String)], var: &str| env.iter().any(|(k, _)| k == var);
        if self.metadata == MetadataEngine::Postgres && !has(env, METADATA_VAR) {
            env.push((METADATA_VAR.into(), new_postgres_database()));
        }
        if self.blob_store == BlobStore::S3 && !has(env, BLOB_STORE_VAR) {
            env.push((BLOB_STORE_VAR.into(), new_s3_prefix()));
        }
    }
}

/// What `TestServer::start_on` calls: the selected configuration's
/// variables, where the caller did not set them.
pub fn add_missing_server_env(env: &mut Vec<(String, String)>) {
    Engines::from_env().add_missing(env);
}

/// The variables for a server a test starts as a process of its own
/// (`CARGO_BIN_EXE_bpf-registry`): a fresh database and prefix.
pub fn fresh_server_env() -> Vec<(String, String)> {
    let mut env = Vec::new();
    add_missing_server_env(&mut env);
    env
}

/// True unless the tests run on S3: the blob bytes are files under the
/// data dir only on the fs store.
pub fn blob_store_is_fs() -> bool {
    Engines::from_env().blob_store == BlobStore::Fs
}

/// For a test that inspects the files of the fs blob store: true when it
/// can run; otherwise prints why it is skipped.
pub fn fs_blob_store_or_skip(test: &str) -> bool {
    let fs = blob_store_is_fs();
    if !fs {
        eprintln!(
            "skipped {test}: it inspects blob files in the data dir (BPF_TEST_BLOB_STORE=s3)"
        );
    }
    fs
}

/// `BPF_TEST_POSTGRES`, if set.
pub fn postgres_base_url() -> Option<String> {
    test_var("BPF_TEST_POSTGRES")
}

/// Creates a database `t_<random hex>` on `BPF_TEST_POSTGRES` and returns
/// its URL (the same user, host and options).
pub fn new_postgres_database() -> String {
    let base = postgres_base_url().unwrap_or_else(|| {
        panic!(
            "BPF_TEST_METADATA=postgres needs BPF_TEST_POSTGRES=postgres://USER@127.0.0.1:PORT/DB \
             (eval \"$(conformance/postgres.sh start DIR)\" prints it)"
        )
    });
    let name = format!("t_{}", uuid::Uuid::new_v4().simple());
    psql(&base, &format!("CREATE DATABASE {name}"));
    drop_at_exit(&base, &name);
    with_database(&base, &name)
}

/// `BPF_TEST_S3_URL` with a fresh prefix `t-<random hex>` under its own.
pub fn new_s3_prefix() -> String {
    let base = test_var("BPF_TEST_S3_URL").unwrap_or_else(|| {
        panic!(
            "BPF_TEST_BLOB_STORE=s3 needs BPF_TEST_S3_URL=s3://BUCKET?endpoint=URL&region=R \
             (conformance/garage.sh start1 DIR prints it)"
        )
    });
    with_prefix(&base, &format!("t-{}", uuid::Uuid::new_v4().simple()))
}

/// `url` (`postgres://user@host:port[/db][?options]`) naming database `db`.
pub fn with_database(url: &str, db: &str) -> String {
    let (main, query) = split_query(url);
    let authority_start = main.find("://").map_or(0, |i| i + 3);
    let root = match main[authority_start..].find('/') {
        Some(i) => &main[..authority_start + i],
        None => main,
    };
    format!("{root}/{db}{query}")
}

/// `url` (`s3://bucket[/prefix][?options]`) with `sub` appended to its prefix.
pub fn with_prefix(url: &str, sub: &str) -> String {
    let (main, query) = split_query(url);
    format!("{}/{sub}{query}", main.trim_end_matches('/'))
}

/// The database a `postgres://` URL names.
pub fn database_of(url: &str) -> &str {
    let (main, _) = split_query(url);
    let authority_start = main.find("://").map_or(0, |i| i + 3);
    main[authority_start..]
        .split_once('/')
        .map_or("", |(_, db)| db)
}

/// Runs one SQL command with psql (`BPF_TEST_PSQL`, default `psql`) on
/// `url`; returns its unaligned, tuples-only output. Panics on failure.
pub fn psql(url: &str, sql: &str) -> String {
    let bin = psql_bin();
    let out = Command::new(&bin)
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            url,
            "-c",
            sql,
        ])
        .env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {bin} (set BPF_TEST_PSQL): {e}"));
    assert!(
        out.status.success(),
        "{bin} -d {url} -c {sql:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl TestServer {
    /// This server's storage variables (`BPF_REGISTRY_METADATA`,
    /// `BPF_REGISTRY_BLOB_STORE`) where set: what a `bpf-registry`
    /// subcommand run on the same store needs besides the data dir.
    pub fn store_env(&self) -> Vec<(String, String)> {
        self.extra_env
            .iter()
            .filter(|(k, _)| k == METADATA_VAR || k == BLOB_STORE_VAR)
            .cloned()
            .collect()
    }
}

fn test_var(name: &str) -> Option<String> {
    std::env::var(name)
        .ok()
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
}

fn psql_bin() -> String {
    test_var("BPF_TEST_PSQL").unwrap_or_else(|| "psql".into())
}

fn split_query(url: &str) -> (&str, &str) {
    match url.find('?') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, ""),
    }
}

/// (admin URL, database) pairs created by this process.
static CREATED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());
static AT_EXIT: Once = Once::new();

/// Each database is a copy of template1 (about 7 MB): a test binary starts
/// dozens of servers, so the databases go when the process exits.
fn drop_at_exit(base: &str, name: &str) {
    if test_var("BPF_TEST_KEEP_DATABASES").as_deref() == Some("1") {
        return;
    }
    CREATED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push((base.to_string(), name.to_string()));
    AT_EXIT.call_once(|| {
        // SAFETY: registers a plain function with no arguments; it only
        // reads a static and runs a process.
        unsafe {
            libc::atexit(drop_created_databases);
        }
    });
}

/// Best effort (the cluster is a throw-away one): one psql per admin URL,
/// one `DROP DATABASE` per `-c`, errors ignored; never panics (a panic here
/// would abort the process).
extern "C" fn drop_created_databases() {
    let created = std::mem::take(&mut *CREATED.lock().unwrap_or_else(|e| e.into_inner()));
    let mut bases: Vec<&str> = created.iter().map(|(b, _)| b.as_str()).collect();
    bases.sort_unstable();
    bases.dedup();
    for base in bases {
        let mut cmd = Command::new(psql_bin());
        cmd.args(["-X", "-q", "-d", base]);
        for (_, name) in created.iter().filter(|(b, _)| b == base) {
            cmd.arg("-c")
                .arg(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
        let _ = cmd
            .env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
