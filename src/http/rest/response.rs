//! REST success answers: JSON bodies serialized straight to bytes, and the
//! route name left for the request log. Errors answer through the
//! dialect's one table, `http::error::rest`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::artifacts::ArtifactError;
use crate::http::RouteName;

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
