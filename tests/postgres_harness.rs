//! The storage-configuration harness of the tests (tests/common/engines.rs):
//! on PostgreSQL every test server gets a database of its own, which exists
//! and survives a restart of that server; a database the test chose is kept;
//! and on the defaults nothing is added. The PostgreSQL tests need
//! `BPF_TEST_POSTGRES` (`eval "$(conformance/postgres.sh start DIR)"`):
//! without it they are skipped, and fail under CI=true.

mod common;

use common::engines::{self, BlobStore, Engines, MetadataEngine, BLOB_STORE_VAR, METADATA_VAR};
use common::TestServer;

/// `BPF_TEST_POSTGRES`, or None after printing why the test is skipped.
fn postgres_or_skip(test: &str) -> Option<String> {
    if let Some(url) = engines::postgres_base_url() {
        return Some(url);
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: BPF_TEST_POSTGRES is not set under CI=true \
         (eval \"$(conformance/postgres.sh start DIR)\")"
    );
    eprintln!(
        "skipped {test}: BPF_TEST_POSTGRES is not set \
         (eval \"$(conformance/postgres.sh start DIR)\")"
    );
    None
}

/// PostgreSQL metadata, whatever BPF_TEST_METADATA says (the blob store as
/// selected), so these tests run whenever a PostgreSQL server is given.
fn on_postgres() -> Engines {
    Engines {
        metadata: MetadataEngine::Postgres,
        ..Engines::from_env()
    }
}

/// Starts a server the way `TestServer::start` does under
/// BPF_TEST_METADATA=postgres.
async fn start_on_postgres() -> TestServer {
    let mut env = Vec::new();
    on_postgres().add_missing(&mut env);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    TestServer::start_with_env(&env).await
}

fn var<'a>(env: &'a [(String, String)], name: &str) -> Option<&'a str> {
    env.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The server's one `BPF_REGISTRY_METADATA` (a second one would win in
/// the server's variable map).
fn metadata_url(s: &TestServer) -> String {
    let env = s.store_env();
    let urls: Vec<&str> = env
        .iter()
        .filter(|(k, _)| k == METADATA_VAR)
        .map(|(_, v)| v.as_str())
        .collect();
    assert_eq!(urls.len(), 1, "BPF_REGISTRY_METADATA values: {urls:?}");
    urls[0].to_string()
}

fn database_exists(base: &str, db: &str) -> bool {
    engines::psql(
        base,
        &format!("SELECT count(*) FROM pg_database WHERE datname = '{db}'"),
    ) == "1"
}

#[tokio::test]
async fn each_server_gets_a_database_of_its_own_that_exists() {
    let Some(base) = postgres_or_skip("each_server_gets_a_database_of_its_own_that_exists") else {
        return;
    };
    let a = start_on_postgres().await;
    let b = start_on_postgres().await;
    let (url_a, url_b) = (metadata_url(&a), metadata_url(&b));
    let (db_a, db_b) = (engines::database_of(&url_a), engines::database_of(&url_b));
    assert_ne!(db_a, db_b, "two servers share a database");
    for (url, db) in [(&url_a, db_a), (&url_b, db_b)] {
        assert!(
            db.starts_with("t_") && db.len() == 34,
            "unexpected database name {db:?} in {url}"
        );
        assert!(database_exists(&base, db), "{db} does not exist on {base}");
        // The URL the server gets reaches that very database.
        assert_eq!(engines::psql(url, "SELECT current_database()"), db);
    }
}

#[tokio::test]
async fn a_restart_keeps_the_servers_database() {
    let Some(base) = postgres_or_skip("a_restart_keeps_the_servers_database") else {
        return;
    };
    let s = start_on_postgres().await;
    let before = metadata_url(&s);
    let s = s.restart().await;
    assert_eq!(metadata_url(&s), before, "the restart changed the database");
    assert!(database_exists(&base, engines::database_of(&before)));
}

#[tokio::test]
async fn a_database_the_test_chose_is_kept() {
    if postgres_or_skip("a_database_the_test_chose_is_kept").is_none() {
        return;
    }
    let chosen = engines::new_postgres_database();
    let mut env = vec![(METADATA_VAR.to_string(), chosen.clone())];
    on_postgres().add_missing(&mut env);
    assert_eq!(
        var(&env, METADATA_VAR),
        Some(chosen.as_str()),
        "add_missing replaced the test's own database"
    );
    assert_eq!(
        env.iter().filter(|(k, _)| k == METADATA_VAR).count(),
        1,
        "a second BPF_REGISTRY_METADATA was added"
    );
    let s = TestServer::start_with_env(&[(METADATA_VAR, &chosen)]).await;
    assert_eq!(metadata_url(&s), chosen);
}

/// Plain `TestServer::start` follows BPF_TEST_METADATA / BPF_TEST_BLOB_STORE;
/// on the defaults (sqlite, fs) the server gets no storage variable at all.
#[tokio::test]
async fn plain_servers_get_exactly_the_selected_configuration() {
    let selected = Engines::from_env();
    let s = TestServer::start().await;
    let env = s.store_env();
    match selected.metadata {
        MetadataEngine::Sqlite => assert_eq!(var(&env, METADATA_VAR), None),
        MetadataEngine::Postgres => {
            let url = var(&env, METADATA_VAR).expect("BPF_REGISTRY_METADATA on postgres");
            let base = engines::postgres_base_url().expect("BPF_TEST_POSTGRES");
            assert!(database_exists(&base, engines::database_of(url)));
        }
    }
    match selected.blob_store {
        BlobStore::Fs => assert_eq!(var(&env, BLOB_STORE_VAR), None),
        BlobStore::S3 => {
            let url = var(&env, BLOB_STORE_VAR).expect("BPF_REGISTRY_BLOB_STORE on s3");
            assert!(url.starts_with("s3://"), "{url}");
            assert!(url.contains("/t-"), "no per-server prefix in {url}");
        }
    }
}

#[test]
fn database_urls_name_the_new_database_and_keep_the_rest() {
    let cases = [
        (
            "postgres://bpfreg@127.0.0.1:5432/postgres",
            "postgres://bpfreg@127.0.0.1:5432/t_1",
        ),
        (
            "postgres://bpfreg@127.0.0.1:5432",
            "postgres://bpfreg@127.0.0.1:5432/t_1",
        ),
        (
            "postgres://u:p@127.0.0.1:5432/db?sslmode=disable",
            "postgres://u:p@127.0.0.1:5432/t_1?sslmode=disable",
        ),
    ];
    for (base, want) in cases {
        let got = engines::with_database(base, "t_1");
        assert_eq!(got, want, "from {base}");
        assert_eq!(engines::database_of(&got), "t_1");
    }
}

#[test]
fn s3_urls_get_the_prefix_before_the_options() {
    let cases = [
        (
            "s3://bpf-registry?endpoint=http://127.0.0.1:3900&region=garage",
            "s3://bpf-registry/t-1?endpoint=http://127.0.0.1:3900&region=garage",
        ),
        (
            "s3://bpf-registry/ci/?endpoint=http://127.0.0.1:3900&region=garage",
            "s3://bpf-registry/ci/t-1?endpoint=http://127.0.0.1:3900&region=garage",
        ),
        ("s3://b", "s3://b/t-1"),
    ];
    for (base, want) in cases {
        assert_eq!(engines::with_prefix(base, "t-1"), want, "from {base}");
    }
}
