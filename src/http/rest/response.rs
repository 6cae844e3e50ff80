//! REST answers: the one error mapping of the dialect
//! (`{"error":"<code>","message":"..."}` with the status of
//! `ArtifactError::status`, plus each error's own fields and headers) and
//! the JSON success bodies.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::endpoint::RouteError;
use crate::artifacts::ArtifactError;
use crate::http::{json_response, RouteName};

impl IntoResponse for ArtifactError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let message = if let ArtifactError::ServerBusy { .. } = &self {
            // Load, not a fault: logged where it is decided.
            self.to_string()
        } else if status.is_server_error() {
            tracing::error!(error = %self, "rest request failed");
            match self.code() {
                "storage_full" => "the registry's storage is full".to_string(),
                "signing_unavailable" => {
                    "the artifact could not be signed (the signer is unavailable); nothing was stored, retry later"
                        .to_string()
                }
                _ => "internal error".to_string(),
            }
        } else {
            self.to_string()
        };
        let mut body = json!({ "error": self.code(), "message": message });
        // The repositories the caller may choose from (all readable by it).
        if let ArtifactError::AmbiguousId { repositories, .. } = &self {
            body["repositories"] =
                json!(repositories.iter().map(|r| r.as_str()).collect::<Vec<_>>());
        }
        let mut r = json_response(status, &body);
        if let ArtifactError::ServerBusy { retry_after_secs } = &self {
            r.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        // A 416 says how long the file is (RFC 9110 §15.5.17).
        if let ArtifactError::Registry(crate::registry::RegistryError::RangeNotSatisfiable {
            total,
        }) = self
        {
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{total}")) {
                r.headers_mut().insert(header::CONTENT_RANGE, v);
            }
        }
        r
    }
}

/// 404 for an unknown path, 405 (with `Allow`) for a known path's wrong
/// method, else the value's 4xx.
pub fn route_error(e: RouteError, method: &str, path: &str) -> Response {
    match e {
        RouteError::NoRoute => json_response(
            StatusCode::NOT_FOUND,
            &json!({ "error": "not_found", "message": format!("no route for {method} {}", path.chars().take(200).collect::<String>()) }),
        ),
        RouteError::MethodNotAllowed { allow } => {
            let mut r = json_response(
                StatusCode::METHOD_NOT_ALLOWED,
                &json!({ "error": "method_not_allowed", "message": format!("{method} is not allowed here; allowed: {allow}") }),
            );
            r.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static(allow));
            r
        }
        RouteError::Invalid(e) => e.into_response(),
    }
}

/// Leaves the route's name for the request log.
pub fn named(route: &'static str, mut r: Response) -> Response {
    r.extensions_mut().insert(RouteName(route));
    r
}

/// A JSON body, serialized straight to bytes.
pub fn json_ok<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut r = (status, body).into_response();
            r.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => {
            ArtifactError::Internal(format!("response not serializable: {e}")).into_response()
        }
    }
}

/// `json_ok` for a result.
pub fn respond<T: serde::Serialize>(status: StatusCode, r: Result<T, ArtifactError>) -> Response {
    match r {
        Ok(v) => json_ok(status, &v),
        Err(e) => e.into_response(),
    }
}
