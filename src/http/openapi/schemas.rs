//! The schemas the document adds to what the types derive: the grammars
//! the parsers check (ids, names, versions, host ids, channels, waits) as named string
//! schemas, the REST error bodies (one per status, its `error` enum
//! generated from the REST error table) and the `/token` OCI envelope (its
//! `code` enum from the OCI table).

use std::borrow::Cow;
use std::collections::BTreeSet;

use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Schema, SchemaType, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

use crate::artifacts::model::KINDS;
use crate::http::error::{OciErrorCode, RestErrorCode};

/// `Digest::parse`: the only digests this registry takes.
pub const DIGEST_PATTERN: &str = "^sha256:[0-9a-f]{64}$";
/// `RepoName::parse` (distribution-spec name grammar; at most 255 characters).
pub const REPOSITORY_PATTERN: &str =
    r"^[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*$";
/// `Tag::parse`: a version becomes the OCI tag.
pub const VERSION_PATTERN: &str = "^[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}$";
/// The create's architecture check.
pub const ARCHITECTURE_PATTERN: &str = "^[A-Za-z0-9_-]{1,32}$";
/// `HostId::parse`.
pub const HOST_ID_PATTERN: &str = "^[A-Za-z0-9._:-]{1,253}$";
/// What the create's base64 decoder takes (`artifacts::payload`): whole
/// groups, then an optional last group of 2 or 3 symbols, padded or not,
/// whose unused bits are zero (the decoder refuses others).
pub const BASE64_PATTERN: &str =
    "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/][AQgw](==)?|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=?)?$";
/// `fleet::watch::parse_wait`: seconds (`30`, `30s`), milliseconds
/// (`500ms`) or minutes (`1m`), at most 60 s (the parser also takes
/// leading zeros).
pub const WAIT_PATTERN: &str =
    "^(([0-9]|[1-5][0-9]|60)s?|([0-9]{1,4}|[1-5][0-9]{4}|60000)ms|[01]m)$";
/// The create's tag check: 1-128 bytes.
pub const MAX_TAG_BYTES: usize = 128;

fn pattern(p: &str, max: Option<usize>, description: &str) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(p))
        .max_length(max)
        .description(Some(description))
        .into()
}

/// Declares a named string schema (a component the operations and the
/// create body reference).
macro_rules! string_schema {
    ($(#[$doc:meta])* $ty:ident, $name:literal, $schema:expr) => {
        $(#[$doc])*
        pub struct $ty;
        impl PartialSchema for $ty {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }
        impl ToSchema for $ty {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

string_schema!(
    /// An artifact id: its manifest digest.
    ArtifactId,
    "ArtifactId",
    pattern(DIGEST_PATTERN, None, "The artifact's manifest digest, `sha256:<64 hex>`.")
);
string_schema!(
    /// A repository name.
    RepositoryName,
    "RepositoryName",
    pattern(
        REPOSITORY_PATTERN,
        Some(crate::oci::name::MAX_NAME_LEN),
        "An OCI repository name: lower case components separated by `/`, at most 255 characters."
    )
);
string_schema!(
    /// A version (an OCI tag).
    Version,
    "Version",
    pattern(VERSION_PATTERN, None, "The version; it becomes an OCI tag.")
);
string_schema!(
    /// A declared architecture.
    Architecture,
    "Architecture",
    pattern(
        ARCHITECTURE_PATTERN,
        None,
        "The target architecture, e.g. `x86_64`, `aarch64` (the OCI platform is derived from it)."
    )
);
string_schema!(
    /// A host id.
    HostIdSchema,
    "HostId",
    pattern(HOST_ID_PATTERN, None, "A host id: 1-253 characters of `[A-Za-z0-9._:-]`.")
);
string_schema!(
    /// A channel: an OCI tag of the repository.
    Channel,
    "Channel",
    pattern(
        VERSION_PATTERN,
        None,
        "A channel: an OCI tag of the repository that names no version of it."
    )
);
string_schema!(
    /// A label selector.
    SelectorText,
    "Selector",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .max_length(Some(crate::fleet::selector::MAX_SELECTOR_BYTES))
        .description(Some(
            "A Kubernetes label selector: comma-separated requirements `k=v`, `k==v`, `k!=v`, `k in (v1,v2)`, `k notin (v1,v2)`, `k`, `!k` (at most 64; the empty selector matches every registered host)."
        ))
        .into()
);
string_schema!(
    /// A long-poll's `?wait=`.
    Wait,
    "Wait",
    pattern(
        WAIT_PATTERN,
        None,
        "How long to hold the request while `If-None-Match` names the current answer: `30`, `30s`, `500ms`, `1m`; at most 60 s."
    )
);
string_schema!(
    /// A deployment report's state.
    DeploymentState,
    "DeploymentState",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(crate::fleet::service::STATES))
        .description(Some("What the agent did with the artifact."))
        .into()
);
string_schema!(
    /// A create's payload.
    Payload,
    "Payload",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(BASE64_PATTERN))
        .min_length(Some(1))
        .content_encoding("base64")
        .description(Some(
            "The payload, base64 (padded or not): an eBPF object, a pre-packed tar.zst (stored as is), or any file (packed as a one-entry tar.zst)."
        ))
        .into()
);
string_schema!(
    /// One of an artifact's tags.
    ArtifactTag,
    "ArtifactTag",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_TAG_BYTES))
        .description(Some("A free-form tag, 1-128 bytes."))
        .into()
);
string_schema!(
    /// What an artifact is.
    ArtifactKind,
    "ArtifactKind",
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(KINDS))
        .description(Some("What the artifact is."))
        .into()
);

/// The name of the REST error schema for a status.
pub fn rest_error_name(status: u16) -> String {
    format!("RestError{status}")
}

/// The name of the `/token` error envelope schema.
pub const OCI_ERROR: &str = "OciError";

/// Every status of the REST error table, each with the codes answered
/// with it, in table order.
pub fn rest_statuses() -> Vec<(u16, Vec<&'static str>)> {
    let statuses: BTreeSet<u16> = RestErrorCode::ALL
        .iter()
        .map(|c| c.status().as_u16())
        .collect();
    statuses
        .into_iter()
        .map(|s| {
            let codes = RestErrorCode::ALL
                .iter()
                .filter(|c| c.status().as_u16() == s)
                .map(|c| c.as_str())
                .collect();
            (s, codes)
        })
        .collect()
}

/// `{"error":"<code>","message":"..."}` for one status: `error` is one of
/// the table's codes of that status.
pub fn rest_error(status: u16, codes: &[&'static str]) -> RefOr<Schema> {
    ObjectBuilder::new()
        .description(Some(format!(
            "A REST error answered with {status}: `error` is the machine-readable code."
        )))
        .property(
            "error",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes.iter().copied())),
        )
        .required("error")
        .property(
            "message",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some("For people; a 5xx names the request id only.")),
        )
        .required("message")
        .property(
            "repositories",
            ArrayBuilder::new()
                .items(ObjectBuilder::new().schema_type(Type::String))
                .description(Some(
                    "`ambiguous_id`: the repositories holding the id that the caller may read.",
                )),
        )
        .property(
            "detail",
            ObjectBuilder::new()
                .schema_type(Type::Object)
                .description(Some("`request_timeout`: the numbers of the cut body.")),
        )
        .into()
}

/// The OCI envelope `/token` answers its own errors with.
pub fn oci_error() -> RefOr<Schema> {
    let mut codes: Vec<&'static str> = OciErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    codes.sort_unstable();
    codes.dedup();
    let entry = ObjectBuilder::new()
        .property(
            "code",
            ObjectBuilder::new()
                .schema_type(Type::String)
                .enum_values(Some(codes)),
        )
        .required("code")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message")
        .property(
            "detail",
            ObjectBuilder::new().schema_type(SchemaType::AnyValue),
        );
    ObjectBuilder::new()
        .description(Some(
            "The OCI distribution error envelope (the dialect of `/v2` and `/token`).",
        ))
        .property(
            "errors",
            ArrayBuilder::new().items(entry).min_items(Some(1)),
        )
        .required("errors")
        .into()
}
