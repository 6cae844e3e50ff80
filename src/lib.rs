//! bpf-registry: an OCI distribution v1.1 registry for eBPF artifacts.
//!
//! Modules, in dependency order (arrows only point down):
//! - [`oci`]: pure types: digests, names, references, media types, manifests.
//! - [`storage`]: the backend trait, every storage path, the filesystem backend.
//! - [`registry`]: HTTP-free services: blobs, uploads, manifests, tags, referrers.
//! - [`artifacts`]: the eBPF domain: REST model, packing, ELF inspection, host index.
//! - [`error`]: the one OCI wire error table.
//! - [`http`]: the axum router and handlers.
//! - [`config`]: typed configuration from `BPF_REGISTRY_*` variables.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

pub mod artifacts;
pub mod config;
pub mod error;
pub mod http;
pub mod oci;
pub mod registry;
pub mod storage;

use std::future::Future;
use std::sync::Arc;

use config::Config;
use registry::{Limits, Registry};
use storage::FsBackend;

/// Builds the application state for a config: opens the store and
/// rebuilds the derived artifact index from it.
pub async fn build_state(config: Config) -> std::io::Result<http::AppState> {
    let backend = FsBackend::open(&config.data_dir)?;
    let limits = Limits {
        max_manifest_bytes: config.max_manifest_bytes,
        max_upload_sessions: config.max_upload_sessions,
    };
    let backend: Arc<dyn storage::Backend> = Arc::new(backend);
    let registry = Arc::new(Registry::new(backend.clone(), limits));
    let index = Arc::new(artifacts::ArtifactIndex::new(backend));
    let started = std::time::Instant::now();
    let (artifact_count, association_count) = index
        .rebuild(&registry)
        .await
        .map_err(|e| std::io::Error::other(format!("cannot index the store: {e}")))?;
    tracing::info!(
        artifacts = artifact_count,
        associations = association_count,
        duration_ms = started.elapsed().as_millis() as u64,
        "artifact index rebuilt"
    );
    registry.add_listener(index.clone());
    let artifacts = Arc::new(artifacts::ArtifactService::new(
        registry.clone(),
        index,
        config.max_artifact_bytes,
    ));
    Ok(http::AppState {
        registry,
        artifacts,
        config: Arc::new(config),
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
    let state = build_state(config).await?;
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
