//! The REST wire error: every code of the dialect with its HTTP status in
//! one table (`status()` and `as_str()`), the
//! `{"error":"<code>","message":"..."}` body (plus an error's own fields)
//! serialized with serde, and the conversion of every domain error a REST
//! request can meet (`ArtifactError`, route errors, auth and limit
//! refusals).

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{log_internal, public_message, ErrorHeaders};
use crate::artifacts::ArtifactError;
use crate::http::auth::AuthRefusal;
use crate::http::limits::LimitRefusal;
use crate::http::rest::endpoint::RouteError;
use crate::registry::RegistryError;

/// Every error a REST route can answer with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestErrorCode {
    InvalidRequest,
    InvalidJson,
    InvalidBase64,
    InvalidName,
    InvalidEbpf,
    /// A pre-packed archive breaks the archive rules.
    InvalidArtifact,
    InvalidId,
    InvalidHostId,
    Unauthorized,
    Denied,
    /// No such artifact, association or route.
    NotFound,
    MethodNotAllowed,
    /// A body cut for its pace.
    RequestTimeout,
    /// A write by an id that names several copies the caller may read.
    AmbiguousId,
    VersionExists,
    PayloadTooLarge,
    UnsupportedMediaType,
    RangeNotSatisfiable,
    TooManyRequests,
    /// A configured signer could not sign: nothing was stored.
    SigningUnavailable,
    StorageFull,
    /// A bug or a store fault.
    InternalError,
}

impl RestErrorCode {
    pub fn status(self) -> StatusCode {
        use RestErrorCode::*;
        match self {
            InvalidRequest | InvalidJson | InvalidBase64 | InvalidName | InvalidEbpf
            | InvalidArtifact | InvalidId | InvalidHostId => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Denied => StatusCode::FORBIDDEN,
            NotFound => StatusCode::NOT_FOUND,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            AmbiguousId | VersionExists => StatusCode::CONFLICT,
            PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            RangeNotSatisfiable => StatusCode::RANGE_NOT_SATISFIABLE,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            InternalError => StatusCode::INTERNAL_SERVER_ERROR,
            SigningUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    pub fn as_str(self) -> &'static str {
        use RestErrorCode::*;
        match self {
            InvalidRequest => "invalid_request",
            InvalidJson => "invalid_json",
            InvalidBase64 => "invalid_base64",
            InvalidName => "invalid_name",
            InvalidEbpf => "invalid_ebpf",
            InvalidArtifact => "invalid_artifact",
            InvalidId => "invalid_id",
            InvalidHostId => "invalid_host_id",
            Unauthorized => "unauthorized",
            Denied => "denied",
            NotFound => "not_found",
            MethodNotAllowed => "method_not_allowed",
            RequestTimeout => "request_timeout",
            AmbiguousId => "ambiguous_id",
            VersionExists => "version_exists",
            PayloadTooLarge => "payload_too_large",
            UnsupportedMediaType => "unsupported_media_type",
            RangeNotSatisfiable => "range_not_satisfiable",
            TooManyRequests => "too_many_requests",
            SigningUnavailable => "signing_unavailable",
            StorageFull => "storage_full",
            InternalError => "internal_error",
        }
    }

    /// An internal failure, not the client's mistake: logged with the
    /// request id, answered with a fixed message.
    pub fn is_internal(self) -> bool {
        use RestErrorCode::*;
        matches!(self, SigningUnavailable | StorageFull | InternalError)
    }

    /// What the client is told of an internal failure.
    fn public_text(self) -> &'static str {
        match self {
            RestErrorCode::StorageFull => "the registry's storage is full",
            RestErrorCode::SigningUnavailable => {
                "the artifact could not be signed (the signer is unavailable); nothing was stored, retry later"
            }
            _ => "internal error",
        }
    }
}

/// A REST error as sent on the wire.
#[derive(Debug, Clone)]
pub struct RestError {
    pub code: RestErrorCode,
    /// What the client reads: for an internal failure a fixed text and
    /// the request id.
    pub message: String,
    /// `ambiguous_id`: the repositories the caller may choose from (all
    /// readable by it).
    repositories: Option<Vec<String>>,
    /// Machine-readable facts of the error (a slow body's numbers).
    detail: Option<serde_json::Value>,
    headers: ErrorHeaders,
    /// An internal failure's cause, for the log only.
    cause: Option<String>,
}

#[derive(Serialize)]
struct Body<'a> {
    error: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    repositories: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

impl RestError {
    /// An error with its message. For an internal code the message is
    /// the cause, logged and not returned.
    pub fn new(code: RestErrorCode, message: impl Into<String>) -> Self {
        let message = message.into();
        let (message, cause) = if code.is_internal() {
            (public_message(code.public_text()), Some(message))
        } else {
            (message, None)
        };
        RestError {
            code,
            message,
            repositories: None,
            detail: None,
            headers: ErrorHeaders::None,
            cause,
        }
    }

    fn with_headers(mut self, headers: ErrorHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// The headers this error adds to its answer.
    pub fn headers(&self) -> &ErrorHeaders {
        &self.headers
    }

    /// 404 for a path no route has.
    pub fn no_route(method: &str, path: &str) -> Self {
        let path: String = path.chars().take(200).collect();
        RestError::new(
            RestErrorCode::NotFound,
            format!("no route for {method} {path}"),
        )
    }

    /// A request that is not a REST endpoint: 404 for an unknown path, 405
    /// (with `Allow`) for a known path's wrong method, else the value's 4xx.
    pub fn of_route(e: RouteError, method: &str, path: &str) -> Self {
        match e {
            RouteError::NoRoute => RestError::no_route(method, path),
            RouteError::MethodNotAllowed { allow } => RestError::new(
                RestErrorCode::MethodNotAllowed,
                format!("{method} is not allowed here; allowed: {allow}"),
            )
            .with_headers(ErrorHeaders::Allow(allow)),
            RouteError::Invalid(e) => e.into(),
        }
    }

    pub fn body(&self) -> Vec<u8> {
        let body = Body {
            error: self.code.as_str(),
            message: &self.message,
            repositories: self.repositories.as_deref(),
            detail: self.detail.as_ref(),
        };
        serde_json::to_vec(&body).unwrap_or_else(|_| {
            br#"{"error":"internal_error","message":"internal error"}"#.to_vec()
        })
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if self.code.is_internal() {
            log_internal(self.code.as_str(), status.as_u16(), self.cause.as_deref());
        }
        let mut r = (status, self.body()).into_response();
        let h = r.headers_mut();
        h.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        self.headers
            .write(h, self.code == RestErrorCode::TooManyRequests);
        r
    }
}

/// The artifact service's errors answer in this dialect wherever they are
/// returned.
impl IntoResponse for ArtifactError {
    fn into_response(self) -> Response {
        RestError::from(self).into_response()
    }
}

impl From<ArtifactError> for RestError {
    fn from(e: ArtifactError) -> Self {
        use ArtifactError as A;
        use RestErrorCode as C;
        let code = match &e {
            A::InvalidRequest(_) => C::InvalidRequest,
            A::InvalidJson(_) => C::InvalidJson,
            A::UnsupportedMediaType => C::UnsupportedMediaType,
            A::InvalidBase64(_) => C::InvalidBase64,
            A::InvalidName(_) => C::InvalidName,
            A::InvalidEbpf(_) => C::InvalidEbpf,
            A::InvalidArtifact(_) => C::InvalidArtifact,
            A::InvalidId(_) => C::InvalidId,
            A::InvalidHostId(_) => C::InvalidHostId,
            A::NotFound(_) => C::NotFound,
            A::AmbiguousId { .. } => C::AmbiguousId,
            A::VersionExists { .. } => C::VersionExists,
            A::TooLarge { .. } | A::ArchiveTooLarge { .. } => C::PayloadTooLarge,
            A::SigningUnavailable(_) => C::SigningUnavailable,
            A::Internal(_) => C::InternalError,
            A::Registry(RegistryError::Storage(s)) if s.is_storage_full() => C::StorageFull,
            A::Registry(RegistryError::RangeNotSatisfiable { .. }) => C::RangeNotSatisfiable,
            A::Registry(RegistryError::Body(_)) => C::InvalidRequest,
            // Every other registry error under a REST request is the
            // service's fault (the facade validated what it wrote).
            A::Registry(_) => C::InternalError,
        };
        let headers = match &e {
            A::Registry(RegistryError::RangeNotSatisfiable { total }) => {
                ErrorHeaders::UnsatisfiedRange { total: *total }
            }
            _ => ErrorHeaders::None,
        };
        let repositories = match &e {
            A::AmbiguousId { repositories, .. } => Some(
                repositories
                    .iter()
                    .map(|r| r.as_str().to_string())
                    .collect(),
            ),
            _ => None,
        };
        RestError {
            repositories,
            ..RestError::new(code, e.to_string()).with_headers(headers)
        }
    }
}

impl From<AuthRefusal> for RestError {
    fn from(r: AuthRefusal) -> Self {
        match r {
            AuthRefusal::Unauthenticated {
                message,
                challenges,
                ..
            } => RestError::new(RestErrorCode::Unauthorized, message)
                .with_headers(ErrorHeaders::Challenge(challenges)),
            AuthRefusal::Denied { .. } => {
                RestError::new(RestErrorCode::Denied, AuthRefusal::DENIED_MESSAGE)
            }
            AuthRefusal::Throttled { retry_after } => RestError::new(
                RestErrorCode::TooManyRequests,
                AuthRefusal::throttled_message(retry_after),
            )
            .with_headers(ErrorHeaders::RetryAfter(retry_after)),
        }
    }
}

impl From<LimitRefusal> for RestError {
    fn from(r: LimitRefusal) -> Self {
        match r {
            LimitRefusal::Busy => {
                RestError::new(RestErrorCode::TooManyRequests, LimitRefusal::BUSY_MESSAGE)
            }
            LimitRefusal::BodyCut {
                cut,
                close_connection,
                ..
            } => {
                let e = RestError {
                    detail: Some(cut.detail()),
                    ..RestError::new(RestErrorCode::RequestTimeout, cut.to_string())
                };
                if close_connection {
                    e.with_headers(ErrorHeaders::CloseConnection)
                } else {
                    e
                }
            }
        }
    }
}
