//! `GET /healthz`: 200 when the store accepts writes, 503 otherwise.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::json;

use super::{json_response, AppState, RouteName};

pub async fn healthz(State(state): State<AppState>) -> Response {
    let writable = state.registry.probe_writable().await;
    let (status, text) = match &writable {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(e) => {
            tracing::warn!(error = %e, "health check: store not writable");
            (StatusCode::SERVICE_UNAVAILABLE, "unavailable")
        }
    };
    let mut r = json_response(
        status,
        &json!({
            "status": text,
            "version": env!("CARGO_PKG_VERSION"),
            "data_dir_writable": writable.is_ok(),
        }),
    );
    r.extensions_mut().insert(RouteName("healthz"));
    r
}
