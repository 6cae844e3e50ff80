//! bpf-registry: an OCI distribution v1.1 registry for eBPF artifacts.
//!
//! Modules, in dependency order (arrows only point down):
//! - [`oci`]: pure types: digests, names, references, media types, manifests.
//! - [`storage`]: the backend trait, every storage path, the filesystem backend.
//! - [`registry`]: HTTP-free services: blobs, uploads, manifests, tags, referrers.
//! - [`error`]: the one OCI wire error table.
//! - [`http`]: the axum router and handlers.
//! - [`config`]: typed configuration from `BPF_REGISTRY_*` variables.

#![deny(clippy::unwrap_used, clippy::expect_used)]
#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used))]

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

/// Builds the application state for a config (opens the store).
pub fn build_state(config: Config) -> std::io::Result<http::AppState> {
    let backend = FsBackend::open(&config.data_dir)?;
    let limits = Limits {
        max_manifest_bytes: config.max_manifest_bytes,
        max_upload_sessions: config.max_upload_sessions,
    };
    let registry = Arc::new(Registry::new(Arc::new(backend), limits));
    Ok(http::AppState {
        registry,
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
    let state = build_state(config)?;
    axum::serve(listener, app(state)).with_graceful_shutdown(shutdown).await
}
