//! The errors of the HTTP edge: one wire table per dialect, and what they
//! share.
//!
//! - [`oci`]: the `/v2` dialect (and `/token`): [`OciErrorCode`], whose
//!   `status()` and `as_str()` are the table, the spec's
//!   `{"errors":[...]}` envelope, and the conversions from every domain
//!   error (`RegistryError`, `SigningError`, name and digest errors, auth
//!   refusals, limit refusals).
//! - [`rest`]: the REST dialect: [`RestErrorCode`] and
//!   `{"error":"<code>","message":"..."}`, converted from `ArtifactError`,
//!   route errors, auth and limit refusals.
//!
//! Services return domain errors only; the conversion into a wire error,
//! its status and its headers happen here. Each wire error adds its own
//! headers ([`ErrorHeaders`]): `Retry-After` on a 429, `Content-Range` on a
//! 416 read, `Location` and `Range` on an out-of-order chunk,
//! `WWW-Authenticate` on a 401, `Allow` on a 405, `Connection: close` on a
//! 408 over HTTP/1.
//!
//! A client mistake and an internal failure are different codes. An
//! internal failure (a 5xx) is logged once, when it is answered, with the
//! request id of [`request_id`]; its answer carries a fixed message and
//! that request id, never the detail.

pub mod oci;
pub mod rest;

use std::future::Future;
use std::sync::Arc;

use axum::http::{header, HeaderMap, HeaderValue};

pub use oci::{OciError, OciErrorCode};
pub use rest::{RestError, RestErrorCode};

use super::limits::RETRY_AFTER_SECS;

tokio::task_local! {
    /// The id of the request being served (set by the request log).
    static REQUEST_ID: Arc<str>;
}

/// Runs `f` (a request's handling) with `id` as its request id.
pub(crate) async fn with_request_id<F: Future>(id: Arc<str>, f: F) -> F::Output {
    REQUEST_ID.scope(id, f).await
}

/// The id of the request being served; `None` outside a request.
pub fn request_id() -> Option<Arc<str>> {
    REQUEST_ID.try_with(Arc::clone).ok()
}

/// Which error dialect answers a path: the OCI envelope under `/v2`, the
/// REST shape everywhere else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Oci,
    Rest,
}

impl Dialect {
    pub fn of_path(path: &str) -> Dialect {
        if super::endpoint::is_v2_path(path) {
            Dialect::Oci
        } else {
            Dialect::Rest
        }
    }

    /// The answer to `e` in this dialect.
    pub fn answer<E>(self, e: E) -> axum::response::Response
    where
        OciError: From<E>,
        RestError: From<E>,
    {
        use axum::response::IntoResponse;
        match self {
            Dialect::Oci => OciError::from(e).into_response(),
            Dialect::Rest => RestError::from(e).into_response(),
        }
    }
}

/// The headers a wire error carries besides its body (Garage's
/// `add_http_headers`), whatever its dialect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum ErrorHeaders {
    #[default]
    None,
    /// A 429 or 503: `Retry-After: <seconds>`.
    RetryAfter(u64),
    /// A 416 on a read: `Content-Range: bytes */<total>` (RFC 9110
    /// §15.5.17).
    UnsatisfiedRange { total: u64 },
    /// A 416 on an out-of-order chunk: the upload's `Location` and the
    /// `Range` it holds, so the client can resume.
    UploadAt { location: String, offset: u64 },
    /// A 401: the `WWW-Authenticate` challenges, in order.
    Challenge(Vec<HeaderValue>),
    /// A 405: the methods the path has.
    Allow(&'static str),
    /// A 408 over HTTP/1: the connection is closed after the answer.
    CloseConnection,
}

impl ErrorHeaders {
    /// Adds the headers; `retry` is true for a 429, which always says when
    /// to retry (`RETRY_AFTER_SECS` unless the error knows better).
    fn write(&self, h: &mut HeaderMap, retry: bool) {
        let hv = |s: String| HeaderValue::from_str(&s).ok();
        match self {
            ErrorHeaders::None => {}
            // Written below for a 429; any other status (a 503 for load)
            // that carries one says it here.
            ErrorHeaders::RetryAfter(secs) => {
                h.insert(header::RETRY_AFTER, HeaderValue::from(*secs));
            }
            ErrorHeaders::UnsatisfiedRange { total } => {
                if let Some(v) = hv(format!("bytes */{total}")) {
                    h.insert(header::CONTENT_RANGE, v);
                }
            }
            ErrorHeaders::UploadAt { location, offset } => {
                if let Some(v) = hv(location.clone()) {
                    h.insert(header::LOCATION, v);
                }
                if let Some(v) = hv(format!("0-{}", offset.saturating_sub(1))) {
                    h.insert(header::RANGE, v);
                }
            }
            ErrorHeaders::Challenge(values) => {
                for v in values {
                    h.append(header::WWW_AUTHENTICATE, v.clone());
                }
            }
            ErrorHeaders::Allow(methods) => {
                h.insert(header::ALLOW, HeaderValue::from_static(methods));
            }
            ErrorHeaders::CloseConnection => {
                h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
        }
        if retry {
            let secs = match self {
                ErrorHeaders::RetryAfter(s) => *s,
                _ => RETRY_AFTER_SECS,
            };
            h.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
    }
}

/// The public message of an internal failure: its fixed text and the
/// request id to quote, never the detail.
fn public_message(text: &str) -> String {
    match request_id() {
        Some(id) => format!("{text} (request id {id})"),
        None => text.to_string(),
    }
}

/// Logs an internal failure as it is answered.
fn log_internal(code: &'static str, status: u16, detail: Option<&str>) {
    let id = request_id();
    tracing::error!(
        request_id = %id.as_deref().unwrap_or("-"),
        code,
        status,
        error = %detail.unwrap_or(""),
        "internal failure"
    );
}
