//! `GET /healthz`: 200 when the store accepts writes, 503 otherwise.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde::Serialize;
use utoipa::ToSchema;

use super::{json_response, AppState, RouteName};

/// Whether the store accepts writes.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Unavailable,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    pub status: HealthStatus,
    /// The server's version.
    pub version: &'static str,
    pub data_dir_writable: bool,
}

pub async fn healthz(State(state): State<AppState>) -> Response {
    let writable = state.registry.probe_writable().await;
    let (code, status) = match &writable {
        Ok(()) => (StatusCode::OK, HealthStatus::Ok),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store not writable");
            (StatusCode::SERVICE_UNAVAILABLE, HealthStatus::Unavailable)
        }
    };
    let mut r = json_response(
        code,
        &Health {
            status,
            version: env!("CARGO_PKG_VERSION"),
            data_dir_writable: writable.is_ok(),
        },
    );
    r.extensions_mut().insert(RouteName("healthz"));
    r
}
