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
use crate::artifacts::limits::Limit;
use crate::artifacts::{ArtifactError, FleetRefusal};
use crate::http::auth::AuthRefusal;
use crate::http::limits::LimitRefusal;
use crate::http::rest::endpoint::RouteError;
use crate::registry::RegistryError;

/// The REST error table: each code's variant, wire code and status, in
/// one place. It defines [`RestErrorCode`], its `as_str()` and `status()`,
/// and [`RestErrorCode::ALL`], which the OpenAPI document's `error` enums
/// are generated from (`http::openapi`): a code added here is documented.
macro_rules! rest_error_table {
    ($( $(#[$doc:meta])* $variant:ident => $wire:literal, $status:ident; )*) => {
        /// Every error a REST route can answer with.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum RestErrorCode {
            $( $(#[$doc])* $variant, )*
        }

        impl RestErrorCode {
            /// Every code, in table order.
            pub const ALL: &'static [RestErrorCode] = &[$(RestErrorCode::$variant),*];

            pub fn status(self) -> StatusCode {
                match self {
                    $(RestErrorCode::$variant => StatusCode::$status,)*
                }
            }

            pub fn as_str(self) -> &'static str {
                match self {
                    $(RestErrorCode::$variant => $wire,)*
                }
            }
        }
    };
}

rest_error_table! {
    InvalidRequest => "invalid_request", BAD_REQUEST;
    InvalidJson => "invalid_json", BAD_REQUEST;
    InvalidBase64 => "invalid_base64", BAD_REQUEST;
    InvalidName => "invalid_name", BAD_REQUEST;
    InvalidEbpf => "invalid_ebpf", BAD_REQUEST;
    /// A pre-packed archive breaks the archive rules.
    InvalidArtifact => "invalid_artifact", BAD_REQUEST;
    InvalidId => "invalid_id", BAD_REQUEST;
    InvalidHostId => "invalid_host_id", BAD_REQUEST;
    /// A host selector that does not parse (label-selector syntax).
    InvalidSelector => "invalid_selector", BAD_REQUEST;
    /// Host labels that break the label rules.
    InvalidLabels => "invalid_labels", BAD_REQUEST;
    /// A host registration body without its facts or with bad ones.
    InvalidHost => "invalid_host", BAD_REQUEST;
    /// A `wait` that is not a duration or is over 60 s.
    InvalidWait => "invalid_wait", BAD_REQUEST;
    /// `requirements` of a create that do not parse or cannot hold.
    InvalidRequirements => "invalid_requirements", BAD_REQUEST;
    Unauthorized => "unauthorized", UNAUTHORIZED;
    Denied => "denied", FORBIDDEN;
    /// No such artifact, association or route.
    NotFound => "not_found", NOT_FOUND;
    HostNotFound => "host_not_found", NOT_FOUND;
    SelectorNotFound => "selector_not_found", NOT_FOUND;
    ChannelNotFound => "channel_not_found", NOT_FOUND;
    VersionNotFound => "version_not_found", NOT_FOUND;
    MethodNotAllowed => "method_not_allowed", METHOD_NOT_ALLOWED;
    /// A body cut for its pace.
    RequestTimeout => "request_timeout", REQUEST_TIMEOUT;
    /// A write by an id that names several copies the caller may read.
    AmbiguousId => "ambiguous_id", CONFLICT;
    VersionExists => "version_exists", CONFLICT;
    /// A rollback of a channel with no earlier version.
    NoPreviousVersion => "no_previous_version", CONFLICT;
    /// A channel named like a version of the repository (or the reverse).
    ChannelIsVersion => "channel_is_version", CONFLICT;
    PayloadTooLarge => "payload_too_large", PAYLOAD_TOO_LARGE;
    /// A list or field of a create over its cap (`artifacts::limits`):
    /// counts are 400, sizes 413; the message names the limit.
    TooManyHosts => "too_many_hosts", BAD_REQUEST;
    TooManyTags => "too_many_tags", BAD_REQUEST;
    MetadataTooLarge => "metadata_too_large", PAYLOAD_TOO_LARGE;
    DescriptionTooLarge => "description_too_large", PAYLOAD_TOO_LARGE;
    KernelVersionTooLarge => "kernel_version_too_large", PAYLOAD_TOO_LARGE;
    ConfigTooLarge => "config_too_large", PAYLOAD_TOO_LARGE;
    ManifestTooLarge => "manifest_too_large", PAYLOAD_TOO_LARGE;
    BodyTooLarge => "body_too_large", PAYLOAD_TOO_LARGE;
    UnsupportedMediaType => "unsupported_media_type", UNSUPPORTED_MEDIA_TYPE;
    RangeNotSatisfiable => "range_not_satisfiable", RANGE_NOT_SATISFIABLE;
    TooManyRequests => "too_many_requests", TOO_MANY_REQUESTS;
    /// Every long-poll place is taken (`BPF_REGISTRY_MAX_WATCHERS`).
    TooManyWatchers => "too_many_watchers", TOO_MANY_REQUESTS;
    /// The create memory budget had no room in time: load, not a fault
    /// (nothing was read or stored; retry after `Retry-After`).
    ServerBusy => "server_busy", SERVICE_UNAVAILABLE;
    /// The connection cap is reached (`http::limits::connections`, which
    /// answers before any request is read): load, not a fault.
    TooManyConnections => "too_many_connections", SERVICE_UNAVAILABLE;
    /// A configured signer could not sign: nothing was stored.
    SigningUnavailable => "signing_unavailable", SERVICE_UNAVAILABLE;
    StorageFull => "storage_full", INSUFFICIENT_STORAGE;
    /// A bug or a store fault.
    InternalError => "internal_error", INTERNAL_SERVER_ERROR;
}

impl RestErrorCode {
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
            A::InvalidRequirements(_) => C::InvalidRequirements,
            A::NotFound(_) => C::NotFound,
            A::AmbiguousId { .. } => C::AmbiguousId,
            A::VersionExists { .. } => C::VersionExists,
            A::TooLarge { .. } | A::ArchiveTooLarge { .. } => C::PayloadTooLarge,
            A::OverLimit { limit, .. } => match limit {
                Limit::Hosts => C::TooManyHosts,
                Limit::Tags => C::TooManyTags,
                Limit::Metadata => C::MetadataTooLarge,
                Limit::Description => C::DescriptionTooLarge,
                Limit::KernelVersion => C::KernelVersionTooLarge,
                Limit::Config => C::ConfigTooLarge,
                Limit::Manifest => C::ManifestTooLarge,
                Limit::HostBody => C::BodyTooLarge,
            },
            A::SigningUnavailable(_) => C::SigningUnavailable,
            A::ServerBusy { .. } => C::ServerBusy,
            A::Fleet { kind, .. } => match kind {
                FleetRefusal::InvalidSelector => C::InvalidSelector,
                FleetRefusal::InvalidLabels => C::InvalidLabels,
                FleetRefusal::InvalidHost => C::InvalidHost,
                FleetRefusal::InvalidWait => C::InvalidWait,
                FleetRefusal::HostNotFound => C::HostNotFound,
                FleetRefusal::SelectorNotFound => C::SelectorNotFound,
                FleetRefusal::ChannelNotFound => C::ChannelNotFound,
                FleetRefusal::VersionNotFound => C::VersionNotFound,
                FleetRefusal::NoPreviousVersion => C::NoPreviousVersion,
                FleetRefusal::ChannelIsVersion => C::ChannelIsVersion,
                FleetRefusal::TooManyWatchers => C::TooManyWatchers,
            },
            A::Internal(_) => C::InternalError,
            A::Registry(RegistryError::Storage(s)) if s.is_storage_full() => C::StorageFull,
            A::Registry(RegistryError::Metadata(m)) if m.is_storage_full() => C::StorageFull,
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
            A::ServerBusy { retry_after_secs } => ErrorHeaders::RetryAfter(*retry_after_secs),
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::error::with_request_id;
    use crate::http::limits::BodyCut;
    use crate::oci::{Digest, RepoName};
    use crate::storage::StorageError;
    use std::sync::Arc;
    use std::time::Duration;

    /// The README's REST error table: (position in `ALL`, wire code,
    /// status). An exhaustive match: a new code does not compile until its
    /// documented row is written here.
    fn documented(c: RestErrorCode) -> (usize, &'static str, u16) {
        use RestErrorCode::*;
        match c {
            InvalidRequest => (0, "invalid_request", 400),
            InvalidJson => (1, "invalid_json", 400),
            InvalidBase64 => (2, "invalid_base64", 400),
            InvalidName => (3, "invalid_name", 400),
            InvalidEbpf => (4, "invalid_ebpf", 400),
            InvalidArtifact => (5, "invalid_artifact", 400),
            InvalidId => (6, "invalid_id", 400),
            InvalidHostId => (7, "invalid_host_id", 400),
            InvalidSelector => (8, "invalid_selector", 400),
            InvalidLabels => (9, "invalid_labels", 400),
            InvalidHost => (10, "invalid_host", 400),
            InvalidWait => (11, "invalid_wait", 400),
            InvalidRequirements => (12, "invalid_requirements", 400),
            Unauthorized => (13, "unauthorized", 401),
            Denied => (14, "denied", 403),
            NotFound => (15, "not_found", 404),
            HostNotFound => (16, "host_not_found", 404),
            SelectorNotFound => (17, "selector_not_found", 404),
            ChannelNotFound => (18, "channel_not_found", 404),
            VersionNotFound => (19, "version_not_found", 404),
            MethodNotAllowed => (20, "method_not_allowed", 405),
            RequestTimeout => (21, "request_timeout", 408),
            AmbiguousId => (22, "ambiguous_id", 409),
            VersionExists => (23, "version_exists", 409),
            NoPreviousVersion => (24, "no_previous_version", 409),
            ChannelIsVersion => (25, "channel_is_version", 409),
            PayloadTooLarge => (26, "payload_too_large", 413),
            TooManyHosts => (27, "too_many_hosts", 400),
            TooManyTags => (28, "too_many_tags", 400),
            MetadataTooLarge => (29, "metadata_too_large", 413),
            DescriptionTooLarge => (30, "description_too_large", 413),
            KernelVersionTooLarge => (31, "kernel_version_too_large", 413),
            ConfigTooLarge => (32, "config_too_large", 413),
            ManifestTooLarge => (33, "manifest_too_large", 413),
            BodyTooLarge => (34, "body_too_large", 413),
            UnsupportedMediaType => (35, "unsupported_media_type", 415),
            RangeNotSatisfiable => (36, "range_not_satisfiable", 416),
            TooManyRequests => (37, "too_many_requests", 429),
            TooManyWatchers => (38, "too_many_watchers", 429),
            ServerBusy => (39, "server_busy", 503),
            TooManyConnections => (40, "too_many_connections", 503),
            SigningUnavailable => (41, "signing_unavailable", 503),
            StorageFull => (42, "storage_full", 507),
            InternalError => (43, "internal_error", 500),
        }
    }

    #[test]
    fn every_code_answers_its_documented_status_and_wire_code() {
        // `ALL` is generated with the enum, so it holds every variant.
        for (i, c) in RestErrorCode::ALL.iter().enumerate() {
            let (pos, wire, status) = documented(*c);
            assert_eq!(pos, i, "{c:?} is listed once, in order");
            assert_eq!(c.as_str(), wire, "{c:?}");
            assert_eq!(c.status().as_u16(), status, "{c:?}");
        }
    }

    #[test]
    fn internal_codes_are_5xx_and_client_codes_are_4xx() {
        for &c in RestErrorCode::ALL {
            let status = c.status();
            let load = matches!(
                c,
                RestErrorCode::ServerBusy | RestErrorCode::TooManyConnections
            );
            if c.is_internal() || load {
                // Load (503), neither a fault nor a mistake.
                assert!(status.is_server_error(), "{c:?} is internal: {status}");
            } else {
                assert!(status.is_client_error(), "{c:?} is the client's: {status}");
            }
        }
    }

    fn digest() -> Digest {
        Digest::parse("sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")
            .unwrap()
    }

    fn storage(os: Option<i32>) -> RegistryError {
        let source = match os {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::other("secret /data/blobs/sha256/ab/cd detail"),
        };
        RegistryError::Storage(StorageError::Io {
            path: "blobs/sha256/ab/cd".into(),
            source,
        })
    }

    /// Whether an artifact error is the client's mistake (an exhaustive
    /// match: a new variant must be classified here).
    fn is_client_mistake(e: &ArtifactError) -> bool {
        use ArtifactError as A;
        match e {
            A::InvalidRequest(_)
            | A::InvalidJson(_)
            | A::UnsupportedMediaType
            | A::InvalidBase64(_)
            | A::InvalidName(_)
            | A::InvalidEbpf(_)
            | A::InvalidArtifact(_)
            | A::InvalidId(_)
            | A::InvalidHostId(_)
            | A::InvalidRequirements(_)
            | A::NotFound(_)
            | A::AmbiguousId { .. }
            | A::VersionExists { .. }
            | A::TooLarge { .. }
            | A::ArchiveTooLarge { .. }
            | A::OverLimit { .. } => true,
            // Too many watchers is load like too many requests: a 429.
            A::Fleet { .. } => true,
            // Load, not a fault: a 503 with its own message (checked below).
            A::ServerBusy { .. } => false,
            A::SigningUnavailable(_) | A::Internal(_) => false,
            A::Registry(RegistryError::RangeNotSatisfiable { .. } | RegistryError::Body(_)) => true,
            A::Registry(_) => false,
        }
    }

    fn every_artifact_error() -> Vec<ArtifactError> {
        use ArtifactError as A;
        vec![
            A::InvalidRequest("x".into()),
            A::InvalidJson("x".into()),
            A::UnsupportedMediaType,
            A::InvalidBase64("x".into()),
            A::InvalidName("x".into()),
            A::InvalidEbpf("x".into()),
            A::InvalidArtifact("x".into()),
            A::InvalidId("x".into()),
            A::InvalidHostId("x".into()),
            A::InvalidRequirements("x".into()),
            A::fleet(crate::artifacts::FleetRefusal::InvalidSelector, "x"),
            A::fleet(crate::artifacts::FleetRefusal::TooManyWatchers, "x"),
            A::NotFound("x".into()),
            A::AmbiguousId {
                id: digest(),
                repositories: vec![RepoName::parse("a").unwrap()],
            },
            A::VersionExists {
                name: "a".into(),
                version: "1".into(),
                architecture: "x86_64".into(),
            },
            A::TooLarge { max: 1 },
            A::ArchiveTooLarge { max: 1 },
            A::OverLimit {
                limit: Limit::Hosts,
                max: 1,
                actual: Some(2),
            },
            A::OverLimit {
                limit: Limit::Description,
                max: 1,
                actual: None,
            },
            A::SigningUnavailable("vault secret-token refused".into()),
            A::Internal("secret invariant".into()),
            A::Registry(storage(None)),
            A::Registry(storage(Some(28))),
            A::Registry(RegistryError::Internal("secret join error".into())),
            A::Registry(RegistryError::BlobUnknown(digest())),
            A::Registry(RegistryError::RangeNotSatisfiable { total: 3 }),
            A::Registry(RegistryError::Body("reset".into())),
        ]
    }

    #[test]
    fn artifact_errors_map_by_whose_fault_they_are_and_hide_internal_detail() {
        let busy = RestError::from(ArtifactError::ServerBusy {
            retry_after_secs: 5,
        });
        assert_eq!(busy.code.status().as_u16(), 503);
        assert!(!busy.code.is_internal());
        assert!(busy.message.contains("retry in 5 s"), "{}", busy.message);
        for e in every_artifact_error() {
            let client = is_client_mistake(&e);
            let shown = format!("{e}");
            let w = RestError::from(e);
            assert_eq!(w.code.is_internal(), !client, "{shown}");
            if client {
                assert!(w.code.status().is_client_error(), "{shown}: {:?}", w.code);
            } else {
                assert!(w.code.status().is_server_error(), "{shown}: {:?}", w.code);
                let body = String::from_utf8(w.body()).unwrap();
                assert!(!body.contains("secret"), "{body}");
            }
        }
        assert_eq!(
            RestError::from(ArtifactError::Registry(storage(Some(28)))).code,
            RestErrorCode::StorageFull
        );
    }

    #[tokio::test]
    async fn an_internal_failure_names_the_request_id_and_not_the_cause() {
        let e = with_request_id(Arc::from("req-9"), async {
            RestError::from(ArtifactError::Internal("decode task panicked".into()))
        })
        .await;
        assert_eq!(e.code, RestErrorCode::InternalError);
        assert!(e.message.contains("req-9"), "{}", e.message);
        assert!(!e.message.contains("panicked"), "{}", e.message);
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    async fn json(r: Response) -> serde_json::Value {
        let body = http_body_util::BodyExt::collect(r.into_body())
            .await
            .unwrap()
            .to_bytes();
        serde_json::from_slice(&body).unwrap()
    }

    #[tokio::test]
    async fn each_error_adds_its_own_headers_and_fields() {
        let r = ArtifactError::Registry(RegistryError::RangeNotSatisfiable { total: 3 })
            .into_response();
        assert_eq!(r.status(), 416);
        assert_eq!(header(&r, "content-range"), Some("bytes */3"));

        let r = RestError::of_route(
            RouteError::MethodNotAllowed { allow: "GET,HEAD" },
            "PUT",
            "/artifacts",
        )
        .into_response();
        assert_eq!(
            (r.status().as_u16(), header(&r, "allow")),
            (405, Some("GET,HEAD"))
        );

        let r = RestError::from(LimitRefusal::Busy).into_response();
        assert_eq!(
            (r.status().as_u16(), header(&r, "retry-after")),
            (429, Some("1"))
        );
        let r = RestError::from(AuthRefusal::Throttled { retry_after: 5 }).into_response();
        assert_eq!(
            (r.status().as_u16(), header(&r, "retry-after")),
            (429, Some("5"))
        );

        let r = RestError::from(AuthRefusal::Unauthenticated {
            message: "authentication required",
            scope: None,
            challenges: vec![
                HeaderValue::from_static("Bearer realm=\"x\""),
                HeaderValue::from_static("Basic realm=\"y\""),
            ],
        })
        .into_response();
        assert_eq!(r.status(), 401);
        let challenges: Vec<_> = r.headers().get_all("www-authenticate").iter().collect();
        assert_eq!(challenges.len(), 2);

        let r = RestError::from(LimitRefusal::BodyCut {
            cut: BodyCut::Stalled(Duration::from_millis(1500)),
            upload: false,
            close_connection: true,
        })
        .into_response();
        assert_eq!(
            (r.status().as_u16(), header(&r, "connection")),
            (408, Some("close"))
        );
        assert_eq!(json(r).await["detail"]["idle_timeout_ms"], 1500);

        let r = ArtifactError::AmbiguousId {
            id: digest(),
            repositories: vec![RepoName::parse("a").unwrap(), RepoName::parse("b").unwrap()],
        }
        .into_response();
        assert_eq!(r.status(), 409);
        let v = json(r).await;
        assert_eq!(v["error"], "ambiguous_id");
        assert_eq!(v["repositories"], serde_json::json!(["a", "b"]));
    }
}
