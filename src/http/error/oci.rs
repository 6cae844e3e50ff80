//! The OCI wire error: every error code with its HTTP status in one table
//! (`status()` and `as_str()`, single `match`es), the spec's
//! `{"errors":[...]}` envelope serialized with serde, and the conversion of
//! every domain error a `/v2` (or `/token`) request can meet.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::{log_internal, public_message, ErrorHeaders};
use crate::http::auth::AuthRefusal;
use crate::http::limits::LimitRefusal;
use crate::http::BodyReadError;
use crate::oci::{DigestError, ManifestError, NameError};
use crate::registry::RegistryError;
use crate::signing::SigningError;
use crate::storage::StorageError;

/// Every error an OCI route can answer with. A few variants share a spec
/// code but need their own status (range errors are 416, oversized bodies
/// 413, slow bodies 408, a full disk 507).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciErrorCode {
    BlobUnknown,
    BlobUploadInvalid,
    BlobUploadUnknown,
    DigestInvalid,
    ManifestBlobUnknown,
    ManifestInvalid,
    ManifestUnknown,
    NameInvalid,
    NameUnknown,
    SizeInvalid,
    Unauthorized,
    Denied,
    /// `UNSUPPORTED` answered with 405: the method is not supported there.
    Unsupported,
    /// `UNSUPPORTED` answered with 400: a parameter given twice, not
    /// decodable, or not one the endpoint accepts.
    ParameterInvalid,
    /// `UNSUPPORTED` answered with 415: a body of the wrong media type.
    MediaTypeUnsupported,
    TooManyRequests,
    /// `PAGINATION_NUMBER_INVALID` (a distribution extension): bad `n`.
    PaginationNumberInvalid,
    /// `BLOB_UPLOAD_INVALID` answered with 416: a chunk or range out of order.
    RangeInvalid,
    /// `MANIFEST_INVALID` answered with 413: the manifest is over the cap.
    ManifestTooLarge,
    /// `SIZE_INVALID` answered with 413: a body over its cap.
    BodyTooLarge,
    /// `BLOB_UPLOAD_INVALID` answered with 408: an upload body too slow
    /// (the client restarts from the acknowledged offset).
    UploadTooSlow,
    /// `SIZE_INVALID` answered with 408: another body too slow (fewer
    /// bytes came than declared).
    BodyTooSlow,
    /// `UNKNOWN` answered with 507: the store is out of space.
    StorageFull,
    /// `UNAVAILABLE` answered with 503: a service the request needs (the
    /// signer) failed.
    Unavailable,
    /// `UNKNOWN` answered with 500: a bug or a store fault.
    Unknown,
}

impl OciErrorCode {
    /// Every code, each once (the tests' `documented` rows give the
    /// order); the OpenAPI document lists `/token`'s codes from it.
    pub const ALL: [OciErrorCode; 25] = {
        use OciErrorCode::*;
        [
            BlobUnknown,
            BlobUploadInvalid,
            BlobUploadUnknown,
            DigestInvalid,
            ManifestBlobUnknown,
            ManifestInvalid,
            ManifestUnknown,
            NameInvalid,
            NameUnknown,
            SizeInvalid,
            Unauthorized,
            Denied,
            Unsupported,
            ParameterInvalid,
            MediaTypeUnsupported,
            TooManyRequests,
            PaginationNumberInvalid,
            RangeInvalid,
            ManifestTooLarge,
            BodyTooLarge,
            UploadTooSlow,
            BodyTooSlow,
            StorageFull,
            Unavailable,
            Unknown,
        ]
    };

    pub fn status(self) -> StatusCode {
        use OciErrorCode::*;
        match self {
            BlobUnknown | BlobUploadUnknown | ManifestUnknown | NameUnknown => {
                StatusCode::NOT_FOUND
            }
            BlobUploadInvalid
            | DigestInvalid
            | ManifestBlobUnknown
            | ManifestInvalid
            | NameInvalid
            | SizeInvalid
            | ParameterInvalid
            | PaginationNumberInvalid => StatusCode::BAD_REQUEST,
            Unauthorized => StatusCode::UNAUTHORIZED,
            Denied => StatusCode::FORBIDDEN,
            Unsupported => StatusCode::METHOD_NOT_ALLOWED,
            MediaTypeUnsupported => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TooManyRequests => StatusCode::TOO_MANY_REQUESTS,
            RangeInvalid => StatusCode::RANGE_NOT_SATISFIABLE,
            ManifestTooLarge | BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            UploadTooSlow | BodyTooSlow => StatusCode::REQUEST_TIMEOUT,
            StorageFull => StatusCode::INSUFFICIENT_STORAGE,
            Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            Unknown => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        use OciErrorCode::*;
        match self {
            BlobUnknown => "BLOB_UNKNOWN",
            BlobUploadInvalid | RangeInvalid | UploadTooSlow => "BLOB_UPLOAD_INVALID",
            BlobUploadUnknown => "BLOB_UPLOAD_UNKNOWN",
            DigestInvalid => "DIGEST_INVALID",
            ManifestBlobUnknown => "MANIFEST_BLOB_UNKNOWN",
            ManifestInvalid | ManifestTooLarge => "MANIFEST_INVALID",
            ManifestUnknown => "MANIFEST_UNKNOWN",
            NameInvalid => "NAME_INVALID",
            NameUnknown => "NAME_UNKNOWN",
            SizeInvalid | BodyTooLarge | BodyTooSlow => "SIZE_INVALID",
            Unauthorized => "UNAUTHORIZED",
            Denied => "DENIED",
            Unsupported | ParameterInvalid | MediaTypeUnsupported => "UNSUPPORTED",
            TooManyRequests => "TOOMANYREQUESTS",
            PaginationNumberInvalid => "PAGINATION_NUMBER_INVALID",
            Unavailable => "UNAVAILABLE",
            StorageFull | Unknown => "UNKNOWN",
        }
    }

    /// An internal failure, not the client's mistake: logged with the
    /// request id, answered with a fixed message.
    pub fn is_internal(self) -> bool {
        use OciErrorCode::*;
        matches!(self, StorageFull | Unavailable | Unknown)
    }

    /// What the client is told of an internal failure.
    fn public_text(self) -> &'static str {
        match self {
            OciErrorCode::StorageFull => "the registry's storage is full",
            OciErrorCode::Unavailable => "a service the registry needs is unavailable; retry later",
            _ => "internal error",
        }
    }
}

/// An OCI error as sent on the wire.
#[derive(Debug, Clone)]
pub struct OciError {
    pub code: OciErrorCode,
    /// What the client reads: for an internal failure a fixed text and
    /// the request id.
    pub message: String,
    pub detail: Option<serde_json::Value>,
    headers: ErrorHeaders,
    /// An internal failure's cause, for the log only.
    cause: Option<String>,
}

#[derive(Serialize)]
struct Envelope<'a> {
    errors: [EnvelopeEntry<'a>; 1],
}

#[derive(Serialize)]
struct EnvelopeEntry<'a> {
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a serde_json::Value>,
}

impl OciError {
    /// An error with its message. For an internal code the message is
    /// the cause, logged and not returned.
    pub fn new(code: OciErrorCode, message: impl Into<String>) -> Self {
        if code.is_internal() {
            return Self::failure(code, code.public_text(), message.into());
        }
        OciError {
            code,
            message: message.into(),
            detail: None,
            headers: ErrorHeaders::None,
            cause: None,
        }
    }

    /// An internal failure: `public` is what the client reads (with the
    /// request id), `cause` goes to the log.
    pub fn failure(code: OciErrorCode, public: &str, cause: impl Into<String>) -> Self {
        OciError {
            code,
            message: public_message(public),
            detail: None,
            headers: ErrorHeaders::None,
            cause: Some(cause.into()),
        }
    }

    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }

    fn with_headers(mut self, headers: ErrorHeaders) -> Self {
        self.headers = headers;
        self
    }

    /// The headers this error adds to its answer.
    pub fn headers(&self) -> &ErrorHeaders {
        &self.headers
    }

    /// An error of an upload session at `location`: a chunk out of order
    /// also says where the upload stands (`Location`, `Range`).
    pub fn of_upload(e: RegistryError, location: String) -> Self {
        let at = match &e {
            RegistryError::RangeInvalid { offset, .. } => Some(*offset),
            _ => None,
        };
        let err = OciError::from(e);
        match at {
            Some(offset) => err.with_headers(ErrorHeaders::UploadAt { location, offset }),
            None => err,
        }
    }

    /// A capped body that could not be read; `too_large` is the code for
    /// one over its `max` bytes.
    pub fn of_body(e: BodyReadError, too_large: OciErrorCode, max: u64) -> Self {
        match e {
            BodyReadError::TooLarge => {
                OciError::new(too_large, format!("body is over the {max}-byte cap"))
            }
            BodyReadError::Broken(m) => OciError::new(
                OciErrorCode::SizeInvalid,
                format!("body could not be read: {m}"),
            ),
        }
    }

    /// The spec's JSON envelope.
    pub fn body(&self) -> Vec<u8> {
        let env = Envelope {
            errors: [EnvelopeEntry {
                code: self.code.as_str(),
                message: &self.message,
                detail: self.detail.as_ref(),
            }],
        };
        serde_json::to_vec(&env)
            .unwrap_or_else(|_| br#"{"errors":[{"code":"UNKNOWN","message":"error"}]}"#.to_vec())
    }
}

impl IntoResponse for OciError {
    fn into_response(self) -> Response {
        let status = self.code.status();
        if self.code.is_internal() {
            log_internal(self.code.as_str(), status.as_u16(), self.cause.as_deref());
        }
        let mut r = (status, self.body()).into_response();
        let h = r.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(
            crate::http::v2::API_VERSION_HEADER,
            HeaderValue::from_static("registry/2.0"),
        );
        self.headers
            .write(h, self.code == OciErrorCode::TooManyRequests);
        r
    }
}

impl From<NameError> for OciError {
    fn from(e: NameError) -> Self {
        match e {
            NameError::InvalidName(_) => OciError::new(OciErrorCode::NameInvalid, e.to_string()),
            NameError::InvalidTag(_) => OciError::new(OciErrorCode::ManifestInvalid, e.to_string()),
            NameError::Digest(d) => d.into(),
        }
    }
}

impl From<DigestError> for OciError {
    fn from(e: DigestError) -> Self {
        OciError::new(OciErrorCode::DigestInvalid, e.to_string())
    }
}

impl From<ManifestError> for OciError {
    fn from(e: ManifestError) -> Self {
        OciError::new(OciErrorCode::ManifestInvalid, e.to_string())
    }
}

impl From<StorageError> for OciError {
    fn from(e: StorageError) -> Self {
        let code = if e.is_storage_full() {
            OciErrorCode::StorageFull
        } else {
            OciErrorCode::Unknown
        };
        OciError::new(code, e.to_string())
    }
}

impl From<RegistryError> for OciError {
    fn from(e: RegistryError) -> Self {
        use OciErrorCode as C;
        use RegistryError as R;
        let e = match e {
            R::Storage(s) => return s.into(),
            R::Metadata(m) if m.is_storage_full() => {
                return OciError::new(OciErrorCode::StorageFull, m.to_string())
            }
            other => other,
        };
        let code = match &e {
            R::Storage(_) | R::Internal(_) | R::Metadata(_) => C::Unknown,
            R::Body(_) => C::BlobUploadInvalid,
            R::Manifest(_) => C::ManifestInvalid,
            R::BlobUnknown(_) => C::BlobUnknown,
            R::NameUnknown(_) => C::NameUnknown,
            R::ManifestUnknown(_) | R::NotAcceptable { .. } => C::ManifestUnknown,
            R::ManifestBlobUnknown(_) | R::ManifestChildUnknown(_) => C::ManifestBlobUnknown,
            R::ManifestTooLarge { .. } => C::ManifestTooLarge,
            R::DigestMismatch { .. } | R::DigestInvalid(_) => C::DigestInvalid,
            R::UploadUnknown => C::BlobUploadUnknown,
            R::RangeInvalid { .. } | R::RangeNotSatisfiable { .. } => C::RangeInvalid,
            R::SizeInvalid(_) => C::SizeInvalid,
            R::BodyTooLarge { .. } => C::BodyTooLarge,
            R::TooManyUploads { .. } => C::TooManyRequests,
        };
        let headers = match &e {
            R::RangeNotSatisfiable { total } => ErrorHeaders::UnsatisfiedRange { total: *total },
            _ => ErrorHeaders::None,
        };
        OciError::new(code, e.to_string()).with_headers(headers)
    }
}

impl From<SigningError> for OciError {
    fn from(e: SigningError) -> Self {
        match e {
            SigningError::Registry(r) => r.into(),
            SigningError::NotFound(m) => OciError::new(OciErrorCode::ManifestUnknown, m),
            SigningError::Disabled | SigningError::Unavailable(_) => OciError::failure(
                OciErrorCode::Unavailable,
                "eBPF artifact manifests are signed when stored and the signer is unavailable; nothing was stored, retry later",
                e.to_string(),
            ),
        }
    }
}

impl From<AuthRefusal> for OciError {
    fn from(r: AuthRefusal) -> Self {
        let scope = |s: Option<String>| s.map(|s| serde_json::json!({ "scope": s }));
        match r {
            AuthRefusal::Unauthenticated {
                message,
                scope: s,
                challenges,
            } => OciError {
                detail: scope(s),
                ..OciError::new(OciErrorCode::Unauthorized, message)
            }
            .with_headers(ErrorHeaders::Challenge(challenges)),
            AuthRefusal::Denied { scope: s } => OciError {
                detail: scope(s),
                ..OciError::new(OciErrorCode::Denied, AuthRefusal::DENIED_MESSAGE)
            },
            AuthRefusal::Throttled { retry_after } => OciError::new(
                OciErrorCode::TooManyRequests,
                AuthRefusal::throttled_message(retry_after),
            )
            .with_headers(ErrorHeaders::RetryAfter(retry_after)),
        }
    }
}

impl From<LimitRefusal> for OciError {
    fn from(r: LimitRefusal) -> Self {
        match r {
            LimitRefusal::Busy => {
                OciError::new(OciErrorCode::TooManyRequests, LimitRefusal::BUSY_MESSAGE)
            }
            LimitRefusal::BodyCut {
                cut,
                upload,
                close_connection,
            } => {
                let code = if upload {
                    OciErrorCode::UploadTooSlow
                } else {
                    OciErrorCode::BodyTooSlow
                };
                let e = OciError::new(code, cut.to_string()).with_detail(cut.detail());
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
    use crate::oci::Digest;
    use crate::registry::UploadCap;
    use std::sync::Arc;
    use std::time::Duration;

    const ALL: [OciErrorCode; 25] = OciErrorCode::ALL;

    /// The README's OCI error table (and the codes its prose names):
    /// (position in `ALL`, wire code, status). An exhaustive match: a new
    /// code does not compile until its documented row is written here.
    fn documented(c: OciErrorCode) -> (usize, &'static str, u16) {
        use OciErrorCode::*;
        match c {
            BlobUnknown => (0, "BLOB_UNKNOWN", 404),
            BlobUploadInvalid => (1, "BLOB_UPLOAD_INVALID", 400),
            BlobUploadUnknown => (2, "BLOB_UPLOAD_UNKNOWN", 404),
            DigestInvalid => (3, "DIGEST_INVALID", 400),
            ManifestBlobUnknown => (4, "MANIFEST_BLOB_UNKNOWN", 400),
            ManifestInvalid => (5, "MANIFEST_INVALID", 400),
            ManifestUnknown => (6, "MANIFEST_UNKNOWN", 404),
            NameInvalid => (7, "NAME_INVALID", 400),
            NameUnknown => (8, "NAME_UNKNOWN", 404),
            SizeInvalid => (9, "SIZE_INVALID", 400),
            Unauthorized => (10, "UNAUTHORIZED", 401),
            Denied => (11, "DENIED", 403),
            Unsupported => (12, "UNSUPPORTED", 405),
            ParameterInvalid => (13, "UNSUPPORTED", 400),
            MediaTypeUnsupported => (14, "UNSUPPORTED", 415),
            TooManyRequests => (15, "TOOMANYREQUESTS", 429),
            PaginationNumberInvalid => (16, "PAGINATION_NUMBER_INVALID", 400),
            RangeInvalid => (17, "BLOB_UPLOAD_INVALID", 416),
            ManifestTooLarge => (18, "MANIFEST_INVALID", 413),
            BodyTooLarge => (19, "SIZE_INVALID", 413),
            UploadTooSlow => (20, "BLOB_UPLOAD_INVALID", 408),
            BodyTooSlow => (21, "SIZE_INVALID", 408),
            StorageFull => (22, "UNKNOWN", 507),
            Unavailable => (23, "UNAVAILABLE", 503),
            Unknown => (24, "UNKNOWN", 500),
        }
    }

    #[test]
    fn every_code_answers_its_documented_status_and_wire_code() {
        for (i, c) in ALL.iter().enumerate() {
            let (pos, wire, status) = documented(*c);
            assert_eq!(pos, i, "{c:?} is listed once, in order");
            assert_eq!(c.as_str(), wire, "{c:?}");
            assert_eq!(c.status().as_u16(), status, "{c:?}");
        }
    }

    #[test]
    fn internal_codes_are_5xx_and_client_codes_are_4xx() {
        for c in ALL {
            let status = c.status();
            if c.is_internal() {
                assert!(status.is_server_error(), "{c:?} is internal: {status}");
            } else {
                assert!(status.is_client_error(), "{c:?} is the client's: {status}");
            }
        }
    }

    fn io(kind: std::io::ErrorKind, os: Option<i32>) -> StorageError {
        let source = match os {
            Some(code) => std::io::Error::from_raw_os_error(code),
            None => std::io::Error::new(kind, "secret /data/blobs/sha256/ab/cd detail"),
        };
        StorageError::Io {
            path: "blobs/sha256/ab/cd".into(),
            source,
        }
    }

    /// Whether a registry error is the client's mistake (an exhaustive
    /// match: a new variant must be classified here).
    fn is_client_mistake(e: &RegistryError) -> bool {
        use RegistryError as R;
        match e {
            R::Storage(_) | R::Internal(_) | R::Metadata(_) => false,
            R::Manifest(_)
            | R::BlobUnknown(_)
            | R::NameUnknown(_)
            | R::ManifestUnknown(_)
            | R::ManifestBlobUnknown(_)
            | R::ManifestChildUnknown(_)
            | R::ManifestTooLarge { .. }
            | R::DigestMismatch { .. }
            | R::DigestInvalid(_)
            | R::UploadUnknown
            | R::RangeInvalid { .. }
            | R::RangeNotSatisfiable { .. }
            | R::SizeInvalid(_)
            | R::BodyTooLarge { .. }
            | R::Body(_)
            | R::TooManyUploads { .. }
            | R::NotAcceptable { .. } => true,
        }
    }

    fn every_registry_error() -> Vec<RegistryError> {
        use RegistryError as R;
        let d = Digest::parse(
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        )
        .unwrap();
        vec![
            R::Storage(io(std::io::ErrorKind::PermissionDenied, None)),
            R::Storage(StorageError::TooLarge("secret/path".into(), 10)),
            R::Internal("secret worker panic".into()),
            R::Manifest(ManifestError::SchemaVersion),
            R::BlobUnknown(d.clone()),
            R::NameUnknown(crate::oci::RepoName::parse("a/b").unwrap()),
            R::ManifestUnknown("latest".into()),
            R::ManifestBlobUnknown(d.clone()),
            R::ManifestChildUnknown(d.clone()),
            R::ManifestTooLarge { size: 9, max: 8 },
            R::DigestMismatch {
                expected: d.clone(),
                actual: d.clone(),
            },
            R::DigestInvalid("x".into()),
            R::UploadUnknown,
            R::RangeInvalid { offset: 4, got: 9 },
            R::RangeNotSatisfiable { total: 10 },
            R::SizeInvalid("x".into()),
            R::BodyTooLarge { max: 8 },
            R::Body("reset".into()),
            R::TooManyUploads {
                cap: UploadCap::RegistryWide,
                limit: 3,
            },
            R::NotAcceptable {
                digest: d,
                media_type: "x".into(),
            },
        ]
    }

    #[test]
    fn registry_errors_map_by_whose_fault_they_are_and_hide_internal_detail() {
        for e in every_registry_error() {
            let client = is_client_mistake(&e);
            let shown = format!("{e}");
            let w = OciError::from(e);
            if client {
                assert!(w.code.status().is_client_error(), "{shown}: {:?}", w.code);
            } else {
                assert!(w.code.status().is_server_error(), "{shown}: {:?}", w.code);
                let body = String::from_utf8(w.body()).unwrap();
                assert!(!body.contains("secret"), "{body}");
            }
        }
        let full = OciError::from(RegistryError::Storage(io(
            std::io::ErrorKind::Other,
            Some(28),
        )));
        assert_eq!(full.code, OciErrorCode::StorageFull);
    }

    #[test]
    fn signing_errors_are_unavailable_without_their_detail() {
        let e = OciError::from(SigningError::Unavailable("vault token secret-123".into()));
        assert_eq!(e.code.status().as_u16(), 503);
        assert!(!String::from_utf8(e.body()).unwrap().contains("secret-123"));
        let e = OciError::from(SigningError::NotFound("no such key".into()));
        assert_eq!(e.code, OciErrorCode::ManifestUnknown);
    }

    #[tokio::test]
    async fn an_internal_failure_names_the_request_id_and_not_the_cause() {
        let e = with_request_id(Arc::from("req-7"), async {
            OciError::from(RegistryError::Internal("worker died".into()))
        })
        .await;
        assert_eq!(e.code, OciErrorCode::Unknown);
        assert!(e.message.contains("req-7"), "{}", e.message);
        assert!(!e.message.contains("worker died"), "{}", e.message);
    }

    fn answer(e: OciError) -> Response {
        e.into_response()
    }

    fn header<'a>(r: &'a Response, name: &str) -> Option<&'a str> {
        r.headers().get(name).and_then(|v| v.to_str().ok())
    }

    #[test]
    fn each_error_adds_its_own_headers() {
        let r = answer(RegistryError::RangeNotSatisfiable { total: 10 }.into());
        assert_eq!(r.status(), 416);
        assert_eq!(header(&r, "content-range"), Some("bytes */10"));
        assert_eq!(
            header(&r, "docker-distribution-api-version"),
            Some("registry/2.0")
        );

        let r = answer(OciError::of_upload(
            RegistryError::RangeInvalid { offset: 5, got: 9 },
            "/v2/a/blobs/uploads/u".into(),
        ));
        assert_eq!(r.status(), 416);
        assert_eq!(header(&r, "location"), Some("/v2/a/blobs/uploads/u"));
        assert_eq!(header(&r, "range"), Some("0-4"));
        // Another upload error says nothing of where the upload is.
        let r = answer(OciError::of_upload(
            RegistryError::UploadUnknown,
            "/v2/a/blobs/uploads/u".into(),
        ));
        assert_eq!((r.status().as_u16(), header(&r, "location")), (404, None));

        let r = answer(
            RegistryError::TooManyUploads {
                cap: UploadCap::PerUser,
                limit: 2,
            }
            .into(),
        );
        assert_eq!(r.status(), 429);
        assert_eq!(header(&r, "retry-after"), Some("1"));

        let r = answer(AuthRefusal::Throttled { retry_after: 7 }.into());
        assert_eq!(
            (r.status().as_u16(), header(&r, "retry-after")),
            (429, Some("7"))
        );

        let r = answer(
            AuthRefusal::Unauthenticated {
                message: "authentication required",
                scope: Some("repository:a:pull".into()),
                challenges: vec![HeaderValue::from_static("Bearer realm=\"x\"")],
            }
            .into(),
        );
        assert_eq!(r.status(), 401);
        assert_eq!(header(&r, "www-authenticate"), Some("Bearer realm=\"x\""));

        let cut = BodyCut::Stalled(Duration::from_secs(1));
        let slow = |upload, close_connection| {
            answer(
                LimitRefusal::BodyCut {
                    cut: cut.clone(),
                    upload,
                    close_connection,
                }
                .into(),
            )
        };
        let r = slow(true, true);
        assert_eq!(r.status(), 408);
        assert_eq!(header(&r, "connection"), Some("close"));
        let r = slow(false, false);
        assert_eq!((r.status().as_u16(), header(&r, "connection")), (408, None));
    }
}
