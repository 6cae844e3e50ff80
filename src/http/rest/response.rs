//! REST success answers: the typed bodies (each a schema of the OpenAPI
//! document, `http::openapi`), serialized straight to bytes, and the route
//! name left for the request log. Errors answer through the dialect's one
//! table, `http::error::rest`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::artifacts::{ArtifactError, ArtifactJson};
use crate::http::RouteName;
use crate::signing::{SignatureRecord, Verification};

/// `GET /artifacts`: one page.
#[derive(Serialize, ToSchema)]
pub struct ArtifactList {
    pub artifacts: Vec<ArtifactJson>,
    /// The `cursor` of the next page; `null` on the last one.
    #[schema(required = true)]
    pub next_cursor: Option<String>,
}

/// `GET /artifacts/for-host/{host_id}`.
#[derive(Serialize, ToSchema)]
pub struct HostArtifacts {
    pub host_id: String,
    pub artifacts: Vec<ArtifactJson>,
}

/// `GET /artifacts/{id}/hosts`.
#[derive(Serialize, ToSchema)]
pub struct HostList {
    /// The artifact id.
    pub id: String,
    /// The repository of the copy the id resolved to.
    pub repository: String,
    pub hosts: Vec<String>,
}

/// `POST /artifacts/{id}/hosts`.
#[derive(Serialize, ToSchema)]
pub struct HostAdded {
    pub id: String,
    pub repository: String,
    /// The host just associated (or already associated, on a replay).
    pub host_id: String,
    /// Every host of the artifact after the add.
    pub hosts: Vec<String>,
}

/// `POST /artifacts/{id}/hosts` body.
#[derive(serde::Deserialize, ToSchema)]
pub struct HostBody {
    /// A host id: 1-253 characters of `[A-Za-z0-9._:-]`.
    #[schema(value_type = String, required = true)]
    pub host_id: Option<String>,
    /// A channel (an OCI tag) of the artifact's repository the host
    /// follows: resolution then answers the version the channel points
    /// at.
    #[serde(default)]
    pub channel: Option<String>,
}

/// `GET /artifacts/{id}/signatures`.
#[derive(Serialize, ToSchema)]
pub struct SignatureList {
    pub id: String,
    pub repository: String,
    pub signatures: Vec<SignatureRecord>,
}

/// `GET /artifacts/{id}/verify`.
#[derive(Serialize, ToSchema)]
pub struct VerifyAnswer {
    pub id: String,
    pub repository: String,
    #[serde(flatten)]
    pub verification: Verification,
}

/// Leaves the route's name for the request log.
pub fn named(route: &'static str, mut r: Response) -> Response {
    r.extensions_mut().insert(RouteName(route));
    r
}

/// A JSON body, serialized straight to bytes.
pub fn json_ok<T: Serialize>(status: StatusCode, value: &T) -> Response {
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
pub fn respond<T: Serialize>(status: StatusCode, r: Result<T, ArtifactError>) -> Response {
    match r {
        Ok(v) => json_ok(status, &v),
        Err(e) => e.into_response(),
    }
}
