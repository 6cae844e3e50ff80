//! bpf-registry: an OCI distribution v1.1 registry for eBPF artifacts.
//!
//! Modules, in dependency order (arrows only point down):
//! - [`metrics`]: every metric the server exports, and their encoding.
//! - [`oci`]: pure types: digests, names, references, media types, manifests.
//! - [`storage`]: the backend trait, every storage path, the filesystem backend.
//! - [`registry`]: HTTP-free services: blobs, uploads, manifests, tags, referrers,
//!   garbage collection and scrub.
//! - [`signing`]: signing of eBPF artifacts with a Vault Transit or local key,
//!   cosign-compatible signature manifests, verification.
//! - [`artifacts`]: the eBPF domain: REST model, packing, ELF inspection, host index.
//! - [`auth`]: HTTP-free authentication and authorization: htpasswd users,
//!   the TOML policy, ES256 bearer tokens, login cache and failure limits.
//! - [`fleet`]: HTTP-free fleet logic: label selectors, version order,
//!   artifact requirements, desired-set resolution.
//! - [`events`]: CloudEvents of the registry's changes, from the metadata
//!   store's outbox to the configured webhooks (signed, retried).
//! - [`http`]: the axum router and handlers (with the auth middleware,
//!   the `/token` endpoint, the accept loop and TLS), and the one error
//!   table per dialect (`http::error`): the only place domain errors
//!   become wire errors.
//! - [`config`]: typed configuration from `BPF_REGISTRY_*` variables.
//! - [`cli`]: the maintenance subcommands `gc`, `scrub` and `migrate`.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod artifacts;
pub mod auth;
pub mod cli;
pub mod config;
pub mod events;
pub mod fleet;
pub mod http;
pub mod keyed_locks;
pub mod metadata;
pub mod metrics;
pub mod oci;
pub mod registry;
pub mod signing;
pub mod storage;

use std::future::Future;
use std::sync::Arc;

use config::Config;
use registry::{Limits, Registry};

/// Opens the blob store and the metadata store of a config, registers
/// the derivers of the domain rows (artifacts, host associations,
/// signatures) and imports a data directory of the previous version: what
/// the server and every maintenance command start from.
pub async fn open_registry(
    config: &Config,
    metrics: Option<&Arc<metrics::Metrics>>,
) -> std::io::Result<Arc<Registry>> {
    open_registry_with(config, metrics, false).await
}

/// `open_registry`, with the server's local blob cache in front of a
/// remote blob store when `blob_cache` (only a server caches: a
/// maintenance command beside it must not take or empty its folder).
async fn open_registry_with(
    config: &Config,
    metrics: Option<&Arc<metrics::Metrics>>,
    blob_cache: bool,
) -> std::io::Result<Arc<Registry>> {
    let mut backend = config
        .blob_store
        .open(&config.data_dir, config.direct_writes)
        .map_err(|e| std::io::Error::other(format!("cannot open the blob store: {e}")))?;
    let remote = !matches!(config.blob_store, storage::blob_store::BlobStoreConfig::Fs);
    if blob_cache && remote && config.blob_cache_bytes > 0 {
        // The cache only saves bucket reads: one that cannot be had (its
        // folder held by another server, unwritable) costs speed, never
        // the start.
        let dir = &config.blob_cache_dir;
        match storage::blob_cache::CachingBackend::open(
            backend.clone(),
            dir,
            config.blob_cache_bytes,
            registry::scrub::VERIFY_ON_READ_MAX,
        ) {
            Ok(cached) => backend = Arc::new(cached),
            Err(e) => tracing::warn!(
                dir = %dir.display(),
                error = %e,
                "no local blob cache: every pull reads the blob store"
            ),
        }
    }
    let limits = Limits {
        max_manifest_bytes: config.max_manifest_bytes,
        max_upload_sessions: config.max_upload_sessions,
        max_upload_sessions_per_principal: config.max_upload_sessions_per_user,
    };
    let label = match config.blob_store {
        storage::blob_store::BlobStoreConfig::Fs => "fs",
        storage::blob_store::BlobStoreConfig::S3(_) => "s3",
    };
    let backend = storage::instrumented::wrap(backend, label, metrics);
    let started = std::time::Instant::now();
    let meta = metadata::Metadata::open(&config.metadata)
        .await
        .map_err(|e| std::io::Error::other(format!("cannot open the metadata store: {e}")))?
        // With webhooks, every change writes its events (the CLIs' too).
        .with_outbox(config.events.as_ref().map(|e| {
            Arc::new(metadata::OutboxSettings::new(
                e.webhooks.clone(),
                config.external_url.as_deref(),
            ))
        }));
    // PostgreSQL: other replicas' fleet changes wake this one's waiters.
    meta.spawn_change_listener();
    // SQLite: the feed knows every counter from the start (no SQL read
    // per woken waiter for scopes not written since).
    if let Err(e) = meta.seed_change_feed().await {
        tracing::warn!(error = %e, "change feed not seeded: waiters read counters from SQL");
    }
    let registry = Arc::new(Registry::new(backend.clone(), meta.clone(), limits));
    let artifact_index = Arc::new(artifacts::ArtifactIndex::new(backend, meta.clone()));
    registry.add_deriver(artifact_index.clone());
    registry.add_deriver(Arc::new(signing::SignatureIndex::new(meta.clone())));
    // A data directory written by the previous version: its link tree
    // becomes rows once, through the derivers above (resumable,
    // idempotent; see `registry::import`).
    let imported = registry::import::import_link_tree(&registry)
        .await
        .map_err(|e| std::io::Error::other(format!("cannot import the link tree: {e}")))?;
    // Rows of a version-1 schema get the facets `GET /artifacts` filters on.
    let facets_filled = artifact_index
        .fill_facets()
        .await
        .map_err(|e| std::io::Error::other(format!("cannot fill artifact facets: {e}")))?;
    tracing::info!(
        engine = meta.engine().as_str(),
        imported_manifests = imported.manifests,
        facets_filled,
        duration_ms = started.elapsed().as_millis() as u64,
        "metadata store open"
    );
    Ok(registry)
}

/// Builds the application state for a config.
pub async fn build_state(config: Config) -> std::io::Result<http::AppState> {
    let metrics = config.metrics.then(|| Arc::new(metrics::Metrics::new()));
    let registry = open_registry_with(&config, metrics.as_ref(), true).await?;
    let index = Arc::new(artifacts::ArtifactIndex::new(
        registry.backend().clone(),
        registry.metadata().clone(),
    ));
    // Refuses to start on an unusable signing key (mode, format).
    let signing = signing::SigningService::start(
        &config.signing,
        registry.clone(),
        config
            .external_url
            .as_deref()
            .and_then(signing::registry_host),
    )
    .await
    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    if let Some(m) = &metrics {
        signing.record_metrics_in(m.clone());
    }
    // REST payloads are spooled here; a crashed server's leftovers go.
    let spool_dir = storage::paths::spool_dir(&config.data_dir);
    artifacts::payload::reset_spool_dir(&spool_dir).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!(
                "cannot prepare the spool folder {}: {e}",
                spool_dir.display()
            ),
        )
    })?;
    let create_settings = artifacts::service::CreateSettings {
        max_artifact_bytes: config.max_artifact_bytes,
        spool_dir,
        memory_budget_bytes: config.create_memory_budget,
        memory_wait: config.create_memory_wait,
    };
    let artifacts = Arc::new(
        artifacts::ArtifactService::new(registry.clone(), index, create_settings)
            .with_signing(signing.clone()),
    );
    let auth = match &config.auth_htpasswd {
        None => None,
        Some(htpasswd) => {
            let settings = auth::AuthSettings {
                htpasswd: htpasswd.clone(),
                policy: config.auth_policy.clone(),
                token_key: config.token_key.clone(),
                token_ttl: std::time::Duration::from_secs(config.token_ttl_secs),
                data_dir: config.data_dir.clone(),
            };
            let a = tokio::task::spawn_blocking(move || auth::Auth::load(settings))
                .await
                .map_err(std::io::Error::other)?
                .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
            let a = Arc::new(a);
            a.spawn_watcher();
            Some(a)
        }
    };
    let fleet = Arc::new(fleet::FleetService::new(
        artifacts.clone(),
        config.max_watchers,
    ));
    Ok(http::AppState {
        registry,
        fleet,
        artifacts,
        config: Arc::new(config),
        auth,
        signing,
        metrics,
    })
}

/// The router for a state.
pub fn app(state: http::AppState) -> axum::Router {
    http::router(state)
}

/// Serves on an already-bound listener until `shutdown` resolves; in-flight
/// requests finish first.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: Config,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(cert), Some(key)) => Some(http::tls::server_config(cert, key)?),
        _ => None,
    };
    // With the embedded SQLite store, held exclusive while serving: a
    // second server, `gc` and `scrub --repair` on the same data dir are
    // refused (see `storage::lock`). With PostgreSQL the metadata engine
    // serializes writers, so replicas may share a data directory (on a
    // shared filesystem): held shared, which still keeps `gc` and `scrub
    // --repair` (exclusive) away while any of them serves.
    let _data_dir_lock = match config.metadata.engine() {
        metadata::Engine::Sqlite => storage::lock::DataDirLock::acquire_exclusive(&config.data_dir)
            .map_err(storage::lock::LockError::into_io)?,
        metadata::Engine::Postgres => storage::lock::DataDirLock::try_acquire(
            &config.data_dir,
            storage::lock::LockMode::Shared,
        )
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "data dir {} is in use by a maintenance command (gc, scrub --repair, sign): {e}",
                    config.data_dir.display()
                ),
            )
        })?,
    };
    let state = build_state(config).await?;
    if state.auth.is_some() && tls.is_none() {
        tracing::warn!(
            "authentication is on but TLS is off: passwords and tokens cross the network in clear text (set BPF_REGISTRY_TLS_CERT and BPF_REGISTRY_TLS_KEY)"
        );
    }
    let connection_policy = http::limits::ConnectionPolicy::from_config(&state.config);
    let collector = state.config.gc_interval.map(|every| {
        let opts = registry::gc::GcOptions {
            dry_run: false,
            delete_untagged: false,
            grace: state.config.gc_grace,
            upload_ttl: state.config.upload_ttl,
            // Temp files live for milliseconds; older ones are from a crash.
            temp_min_age: state.config.upload_ttl,
        };
        let metrics = state.metrics.clone();
        registry::gc::spawn_collector(state.registry.clone(), every, opts, move |report| {
            if let Some(m) = &metrics {
                m.gc_run(report.bytes_freed);
            }
        })
    });
    let deliverers = match &state.config.events {
        Some(events) => Some(
            events::spawn(
                state.registry.metadata().clone(),
                events,
                state.metrics.clone(),
            )
            .map_err(std::io::Error::other)?,
        ),
        None => None,
    };
    let service = app(state);
    if tls.is_some() {
        tracing::info!("serving HTTPS");
    }
    let served = http::limits::serve(listener, tls, service, connection_policy, shutdown).await;
    if let Some(c) = collector {
        c.abort();
    }
    if let Some(d) = deliverers {
        d.stop().await;
    }
    served
}

#[cfg(test)]
mod tests {
    //! Start-up does not grow with the store: its one-time steps (the
    //! link-tree import, the facet fill) run once, recorded in `meta`, and
    //! a later start neither walks the blob store nor reads artifact rows.

    use super::*;

    fn config(dir: &std::path::Path) -> Config {
        let data_dir = dir.display().to_string();
        Config::from_lookup(|k| (k == "BPF_REGISTRY_DATA_DIR").then(|| data_dir.clone())).unwrap()
    }

    /// What each one-time step trips over if it runs: the walk over a
    /// `repositories` that is a file (ENOTDIR), the fill over a row whose
    /// record is not JSON.
    async fn plant_traps(dir: &std::path::Path, registry: &Registry) {
        let tree = dir.join("repositories");
        let _ = std::fs::remove_dir_all(&tree);
        std::fs::write(&tree, b"not a folder").unwrap();
        sqlx::query(
            "INSERT INTO artifacts (repo, digest, name, version, kind, architecture, linked_at, record)
             VALUES ('trap/a', $1, 'trap/a', '1.0.0', 'map', 'x86_64', 0, 'not json')",
        )
        .bind(format!("sha256:{}", "0".repeat(64)))
        .execute(registry.metadata().pool())
        .await
        .unwrap();
    }

    #[tokio::test]
    async fn a_later_start_neither_walks_the_link_tree_nor_reads_artifact_rows() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path());
        // A new store: both steps run (over nothing) and are recorded.
        let first = open_registry(&config, None).await.unwrap();
        plant_traps(dir.path(), &first).await;
        drop(first);
        let again = open_registry(&config, None)
            .await
            .expect("a start on an imported, filled store must not walk or scan");
        // The trapped row is still there, untouched (no facets written).
        let facets: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM artifact_facets WHERE repo = 'trap/a'")
                .fetch_one(again.metadata().pool())
                .await
                .unwrap();
        assert_eq!(facets, 0);
        // The control: without its `meta` row each step runs and trips,
        // so the start above really skipped them.
        sqlx::query("DELETE FROM meta WHERE key = 'artifact_facets_filled'")
            .execute(again.metadata().pool())
            .await
            .unwrap();
        let e = open_registry(&config, None)
            .await
            .err()
            .expect("the fill ran");
        assert!(e.to_string().contains("cannot fill artifact facets"), "{e}");
        sqlx::query("DELETE FROM meta WHERE key = 'link_tree_imported'")
            .execute(again.metadata().pool())
            .await
            .unwrap();
        let e = open_registry(&config, None)
            .await
            .err()
            .expect("the walk ran");
        assert!(e.to_string().contains("cannot import the link tree"), "{e}");
    }
}
