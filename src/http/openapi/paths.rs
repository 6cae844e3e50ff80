//! The documented operations, one per REST route (its `operationId` is the
//! route's name, `RestEndpoint::route`), plus `/healthz`, `/token` and
//! `/openapi.json` (the fleet's are in `fleet_paths`). The functions only carry their `#[utoipa::path]`; the
//! handlers are the REST dispatch (`http::rest`). Error responses name
//! their statuses here; their bodies are filled in from the REST error
//! table (`schemas::rest_error`). The tests check this list against the
//! route table (`rest::endpoint::PATHS`) both ways.
#![allow(dead_code)] // documentation only: never called

use utoipa::IntoParams;

use super::fleet_paths::{IfNoneMatch, WaitParams};
use super::schemas::{ArtifactId, HostIdSchema, RepositoryName};
use crate::artifacts::model::CreateRequest;
use crate::artifacts::ArtifactJson;
use crate::http::auth::TokenAnswer;
use crate::http::health::Health;
use crate::http::rest::response::{
    ArtifactList, HostAdded, HostArtifacts, HostBody, HostList, SignatureList, VerifyAnswer,
};

/// `GET /artifacts` filters; each given at most once (twice: 400).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// The repository (the artifact's `name`), exactly.
    name: Option<String>,
    version: Option<String>,
    /// `program`, `map` or `tracepoint` (any other value matches nothing).
    #[param(rename = "type")]
    kind: Option<String>,
    architecture: Option<String>,
    kernel_version: Option<String>,
    /// One of the artifact's `tags`.
    tag: Option<String>,
    /// Only artifacts associated with this host.
    #[param(value_type = Option<HostIdSchema>)]
    host: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page (opaque, base64url).
    #[param(pattern = "^[A-Za-z0-9_-]*$")]
    cursor: Option<String>,
}

/// The copy an id names, when it is in several repositories.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CopyParams {
    /// Picks the copy in this repository (see "What an id means").
    #[param(value_type = Option<RepositoryName>)]
    repository: Option<String>,
}

/// `GET /signing/public-key` query.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct KeyParams {
    /// A key version (default: the latest).
    #[param(minimum = 0, maximum = 4294967295_u64)]
    version: Option<u64>,
}

/// `GET /token` query (Docker token spec).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TokenParams {
    /// `bpf-registry` (or empty).
    service: Option<String>,
    /// `repository:<name>:<actions>`; may be given more than once.
    scope: Option<Vec<String>>,
    /// `true`: also issue a refresh token (with Basic credentials).
    offline_token: Option<String>,
}

/// The OAuth2 grants `POST /token` takes.
#[derive(utoipa::ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum Grant {
    /// With `username` and `password`.
    Password,
    /// With `refresh_token`.
    RefreshToken,
}

/// `POST /token` form (OAuth2).
#[derive(utoipa::ToSchema)]
pub struct TokenForm {
    grant_type: Grant,
    #[schema(value_type = String, required = false)]
    username: Option<String>,
    #[schema(value_type = String, required = false)]
    password: Option<String>,
    #[schema(value_type = String, required = false)]
    refresh_token: Option<String>,
    #[schema(value_type = String, required = false)]
    service: Option<String>,
    /// Space separated scopes.
    #[schema(value_type = String, required = false)]
    scope: Option<String>,
    /// `offline`: also issue a refresh token.
    #[schema(value_type = String, required = false)]
    access_type: Option<String>,
}

#[utoipa::path(
    get,
    path = "/artifacts",
    operation_id = "rest.artifacts.list",
    tag = "artifacts",
    summary = "List artifacts",
    description = "Filtered, in a stable order (name, version, architecture, id), a page at a time. With authentication on, only artifacts the caller may pull are listed (filtered before paging).",
    params(ListParams),
    responses(
        (status = 200, description = "One page", body = ArtifactList,
            links(
                ("first" = (operation_id = "rest.artifacts.get", parameters(("id" = "$response.body#/artifacts/0/id"), ("repository" = "$response.body#/artifacts/0/name")))),
                ("first_hosts" = (operation_id = "rest.hosts.list", parameters(("id" = "$response.body#/artifacts/0/id"), ("repository" = "$response.body#/artifacts/0/name")))),
                ("first_binary" = (operation_id = "rest.artifacts.binary", parameters(("id" = "$response.body#/artifacts/0/id"), ("repository" = "$response.body#/artifacts/0/name")))),
            )),
        (status = 400, description = "A bad `limit`, `cursor` or `host`, or a parameter given twice"),
        (status = 401, description = "Bad credentials, or an anonymous caller who may pull nothing"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn artifacts_list() {}

#[utoipa::path(
    post,
    path = "/artifacts",
    operation_id = "rest.artifacts.create",
    tag = "artifacts",
    summary = "Create an artifact",
    description = "Stores `data` as the OCI layer of a new artifact version (an eBPF object's facts are recorded). The same name, version, architecture and content again is a replay (200).",
    request_body(content = CreateRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = ArtifactJson,
            headers(("Location" = String, description = "`/artifacts/{id}`")),
            links(
                ("get" = (operation_id = "rest.artifacts.get", parameters(("id" = "$response.body#/id"), ("repository" = "$response.body#/name")))),
                ("binary" = (operation_id = "rest.artifacts.binary", parameters(("id" = "$response.body#/id"), ("repository" = "$response.body#/name")))),
                ("hosts" = (operation_id = "rest.hosts.list", parameters(("id" = "$response.body#/id"), ("repository" = "$response.body#/name")))),
                ("add_host" = (operation_id = "rest.hosts.add", parameters(("id" = "$response.body#/id"), ("repository" = "$response.body#/name")))),
                ("signatures" = (operation_id = "rest.signatures.list", parameters(("id" = "$response.body#/id"), ("repository" = "$response.body#/name")))),
                ("verify" = (operation_id = "rest.signatures.verify", parameters(("id" = "$response.body#/id"), ("repository" = "$response.body#/name")))),
                ("delete" = (operation_id = "rest.artifacts.delete", parameters(("id" = "$response.body#/id"), ("repository" = "$response.body#/name")))),
            )
        ),
        (status = 200, description = "The same artifact again: the existing one", body = ArtifactJson,
            headers(("Location" = String, description = "`/artifacts/{id}`"))),
        (status = 400, description = "A missing or invalid field, `data` not base64, an eBPF object that contradicts the declared type or architecture, an archive that breaks the archive rules, too many hosts or tags"),
        (status = 401, description = "Bad credentials, or none where the policy needs them"),
        (status = 403, description = "No push on the repository"),
        (status = 408, description = "The body came too slowly"),
        (status = 409, description = "The version exists with other content"),
        (status = 413, description = "`data`, a field or what the create becomes is over its cap"),
        (status = 415, description = "`Content-Type` is not `application/json`"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The create memory budget stayed full (`Retry-After`), the signer is unavailable, or the connection cap is reached"),
        (status = 507, description = "The store is full"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn artifacts_create() {}

#[utoipa::path(
    get,
    path = "/artifacts/for-host/{host_id}",
    operation_id = "rest.for_host",
    tag = "hosts",
    summary = "Artifacts associated with a host",
    description = "The host's direct associations and, for a registered host, the artifacts of the selectors matching its labels (only repositories the caller may pull). A long-poll with `If-None-Match` and `wait`.",
    params(("host_id" = HostIdSchema, Path, description = "The host"), WaitParams, IfNoneMatch),
    responses(
        (status = 200, description = "The host's artifacts (empty for an unknown host)", body = HostArtifacts,
            headers(
                ("ETag" = String, description = "Strong: the first 32 hex of the body's sha256, quoted"),
                ("Cache-Control" = String, description = "`no-cache`"),
            ),
            links(
                ("remove" = (operation_id = "rest.hosts.remove", parameters(("id" = "$response.body#/artifacts/0/id"), ("host_id" = "$response.body#/host_id"), ("repository" = "$response.body#/artifacts/0/name")))),
            )),
        (status = 304, description = "`If-None-Match` names the answer (with `wait`: it did not change in time)",
            headers(
                ("ETag" = String, description = "The answer's ETag"),
                ("Cache-Control" = String, description = "`no-cache`"),
            )),
        (status = 400, description = "Not a host id, a bad `wait`, or a parameter given twice"),
        (status = 401, description = "Bad credentials, or an anonymous caller who may pull nothing"),
        (status = 429, description = "Over the concurrent request cap, too many failed logins, or too many long-polls held"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn for_host() {}

/// The responses every read by id shares, besides its 200.
macro_rules! by_id_path {
    ($method:ident, $path:literal, $op:literal, $tag:literal, $summary:literal, $fn:ident,
     [$( $param:tt )*], $( $extra:tt )*) => {
        #[utoipa::path(
            $method,
            path = $path,
            operation_id = $op,
            tag = $tag,
            summary = $summary,
            params(("id" = ArtifactId, Path, description = "The artifact id"), $( $param )* CopyParams),
            responses(
                $( $extra )*
                (status = 400, description = "Not an id, not a repository name, or a parameter given twice"),
                (status = 401, description = "Bad credentials; or anonymous, and no copy the caller may pull"),
                (status = 404, description = "No such artifact (or none the caller may pull)"),
                (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
                (status = 500, description = "Internal failure"),
                (status = 503, description = "The connection cap is reached, or the signer is unavailable"),
            ),
            security((), ("basic" = []), ("bearer" = []))
        )]
        fn $fn() {}
    };
}

by_id_path!(
    get,
    "/artifacts/{id}",
    "rest.artifacts.get",
    "artifacts",
    "Get an artifact",
    artifacts_get,
    [],
    (
        status = 200,
        description = "The artifact",
        body = ArtifactJson
    ),
);

by_id_path!(
    get,
    "/artifacts/{id}/hosts",
    "rest.hosts.list",
    "hosts",
    "The hosts of an artifact",
    hosts_list,
    [],
    (status = 200, description = "The hosts", body = HostList),
);

by_id_path!(
    get,
    "/artifacts/{id}/signatures",
    "rest.signatures.list",
    "signing",
    "Every stored signature of an artifact",
    signatures_list,
    [],
    (
        status = 200,
        description = "The signatures",
        body = SignatureList
    ),
);

by_id_path!(
    get,
    "/artifacts/{id}/verify",
    "rest.signatures.verify",
    "signing",
    "Check each signature against every key version",
    signatures_verify,
    [],
    (
        status = 200,
        description = "The verdicts",
        body = VerifyAnswer
    ),
);

by_id_path!(
    get,
    "/artifacts/{id}/binary",
    "rest.artifacts.binary",
    "artifacts",
    "Download the layer (tar.zst)",
    artifacts_binary,
    [
        (
            "Range" = Option<String>,
            Header,
            description = "`bytes=<start>-[<end>]` or `bytes=-<suffix>`: one range (206); one RFC 9110 says to ignore gives the whole file"
        ),
        (
            "If-None-Match" = Option<String>,
            Header,
            description = "The quoted layer digest (or `*`): 304 when it names the layer"
        ),
    ],
    (
        status = 200,
        description = "The layer",
        content(("application/vnd.oci.image.layer.v1.tar+zstd")),
        headers(
            ("ETag" = String, description = "The layer digest, quoted"),
            (
                "Content-Disposition" = String,
                description = "`attachment; filename=\"<name>-<version>.tar.zst\"`"
            ),
            (
                "Docker-Content-Digest" = String,
                description = "The layer digest"
            ),
            ("Accept-Ranges" = String, description = "`bytes`"),
        )
    ),
    (
        status = 206,
        description = "A range of the layer",
        content(("application/vnd.oci.image.layer.v1.tar+zstd")),
        headers((
            "Content-Range" = String,
            description = "`bytes <start>-<end>/<size>`"
        ))
    ),
    (
        status = 304,
        description = "`If-None-Match` names the layer"
    ),
    (
        status = 416,
        description = "A `Range` outside the file (`Content-Range: bytes */<size>`)"
    ),
);

/// A write by id: one copy must be visible, and the action allowed there.
macro_rules! write_by_id_path {
    ($method:ident, $path:literal, $op:literal, $tag:literal, $summary:literal, $fn:ident,
     [$( $param:tt )*], $( $extra:tt )*) => {
        #[utoipa::path(
            $method,
            path = $path,
            operation_id = $op,
            tag = $tag,
            summary = $summary,
            params(("id" = ArtifactId, Path, description = "The artifact id"), $( $param )* CopyParams),
            responses(
                $( $extra )*
                (status = 400, description = "Not an id, not a repository name, or a parameter given twice"),
                (status = 401, description = "Bad credentials, or a token without the scope"),
                (status = 403, description = "The action is not allowed on the copy's repository"),
                (status = 404, description = "No such artifact (or none the caller may pull)"),
                (status = 409, description = "The id is in several repositories the caller may read: name one with `?repository=`"),
                (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
                (status = 500, description = "Internal failure"),
                (status = 503, description = "The connection cap is reached"),
                (status = 507, description = "The store is full"),
            ),
            security((), ("basic" = []), ("bearer" = []))
        )]
        fn $fn() {}
    };
}

write_by_id_path!(delete, "/artifacts/{id}", "rest.artifacts.delete", "artifacts", "Delete an artifact (this copy)", artifacts_delete,
    [],
    (status = 204, description = "Deleted: the manifest, its tag or index entry, its host associations and signatures in this repository"),
);

/// `POST /artifacts/{id}/hosts`.
#[utoipa::path(
    post,
    path = "/artifacts/{id}/hosts",
    operation_id = "rest.hosts.add",
    tag = "hosts",
    summary = "Associate a host with an artifact",
    params(("id" = ArtifactId, Path, description = "The artifact id"), CopyParams),
    request_body(content = HostBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Associated", body = HostAdded,
            links(
                ("remove" = (operation_id = "rest.hosts.remove", parameters(("id" = "$response.body#/id"), ("host_id" = "$response.body#/host_id"), ("repository" = "$response.body#/repository")))),
                ("for_host" = (operation_id = "rest.for_host", parameters(("host_id" = "$response.body#/host_id")))),
            )),
        (status = 200, description = "Already associated", body = HostAdded),
        (status = 400, description = "Not an id, a missing or invalid `host_id`, the artifact has 1,000 hosts, or a parameter given twice"),
        (status = 401, description = "Bad credentials, or a token without the scope"),
        (status = 403, description = "No push on the copy's repository"),
        (status = 404, description = "No such artifact (or none the caller may pull)"),
        (status = 408, description = "The body came too slowly"),
        (status = 409, description = "The id is in several repositories the caller may read: name one with `?repository=`"),
        (status = 413, description = "The body is over 64 KiB"),
        (status = 415, description = "`Content-Type` is not `application/json`"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
        (status = 507, description = "The store is full"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn hosts_add() {}

write_by_id_path!(
    delete,
    "/artifacts/{id}/hosts/{host_id}",
    "rest.hosts.remove",
    "hosts",
    "Remove a host association",
    hosts_remove,
    [("host_id" = HostIdSchema, Path, description = "The host"),],
    (status = 204, description = "Removed"),
);

#[utoipa::path(
    get,
    path = "/signing/public-key",
    operation_id = "rest.signing.public_key",
    tag = "signing",
    summary = "The signing public key (PEM)",
    description = "Public: no credentials needed, with authentication on too.",
    params(KeyParams),
    responses(
        (status = 200, description = "The PEM public key",
            content(("application/x-pem-file")),
            headers(
                ("X-Signing-Key-Id" = String, description = "The key's id"),
                ("X-Signing-Key-Version" = String, description = "The version sent"),
                ("X-Signing-Algorithm" = String, description = "e.g. `ecdsa-p256-sha256`"),
            )),
        (status = 400, description = "A bad `version`, or a parameter given twice"),
        (status = 404, description = "Signing is off, or no such key version"),
        (status = 429, description = "Over the concurrent request cap"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The signer is unavailable, or the connection cap is reached"),
    ),
    security(())
)]
fn public_key() {}

#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "operations",
    summary = "Whether the store accepts writes",
    responses(
        (status = 200, description = "Healthy", body = Health),
        (status = 503, description = "The store does not accept writes", body = Health),
    ),
    security(())
)]
fn healthz() {}

#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    summary = "This document",
    description = "Public, also with authentication on: it is generated from the code and holds no data of the registry.",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content(("application/json"))),
        (status = 429, description = "Over the concurrent request cap"),
        (status = 503, description = "The connection cap is reached"),
    ),
    security(())
)]
fn openapi() {}

#[utoipa::path(
    get,
    path = "/token",
    operation_id = "token.get",
    tag = "auth",
    summary = "Get a bearer token (Docker token spec)",
    description = "With Basic credentials for a user's token, without for an anonymous one. The token grants what was asked and the policy allows. Errors are the OCI envelope. Answers 404 when authentication is off.",
    params(TokenParams),
    responses(
        (status = 200, description = "A token", body = TokenAnswer,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "An unknown `service`, or a parameter other than `scope` given twice"),
        (status = 401, description = "Wrong user name or password"),
        (status = 404, description = "Authentication is off"),
        (status = 429, description = "Too many failed logins, or over the concurrent request cap"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
    ),
    security((), ("basic" = []))
)]
fn token_get() {}

#[utoipa::path(
    post,
    path = "/token",
    operation_id = "token.post",
    tag = "auth",
    summary = "Get a bearer token (OAuth2 password or refresh grant)",
    description = "Errors are the OCI envelope. Answers 404 when authentication is off.",
    request_body(content = TokenForm, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "A token", body = TokenAnswer,
            headers(("Cache-Control" = String, description = "`no-store`"))),
        (status = 400, description = "A missing or unknown grant, field or `service`, or a field given twice"),
        (status = 401, description = "Wrong password, or an invalid refresh token"),
        (status = 404, description = "Authentication is off"),
        (status = 408, description = "The body came too slowly"),
        (status = 415, description = "Not a form"),
        (status = 429, description = "Too many failed logins, or over the concurrent request cap"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
    ),
    security(())
)]
fn token_post() {}
