//! The documented fleet operations: selectors and rollout (by artifact
//! id), the host registry, desired sets, deployments and channels, each
//! named by its route (`RestEndpoint::route`, `FleetEndpoint::route`).
//! Like `paths`, the functions only carry their `#[utoipa::path]`; error
//! bodies come from the REST error table.
#![allow(dead_code)] // documentation only: never called

use utoipa::IntoParams;

use super::paths::CopyParams;
use super::schemas::{ArtifactId, Channel, HostIdSchema, RepositoryName, SelectorText, Wait};
use crate::fleet::hosts::{HostBody as HostFacts, HostJson, HostList as HostPage};
use crate::fleet::service::{
    ChannelBody, ChannelJson, DeploymentBody, DeploymentJson, DeploymentsJson, DesiredJson,
    RolloutJson, SelectorJson,
};
use crate::http::rest::fleet_handlers::{SelectorBody, SelectorList};

/// `GET /hosts` filters.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct HostsParams {
    /// Only hosts whose labels match this selector (`label=env=prod`).
    #[param(value_type = Option<SelectorText>)]
    label: Option<String>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page (a host id).
    #[param(value_type = Option<HostIdSchema>)]
    cursor: Option<String>,
}

/// `GET /artifacts/{id}/rollout` paging.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct RolloutParams {
    /// Hosts per page (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// The `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// A long-poll's hold.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct WaitParams {
    /// Hold the request (only while `If-None-Match` names the current
    /// answer) until the answer changes (200) or the time is up (304).
    #[param(value_type = Option<Wait>)]
    wait: Option<String>,
}

/// The answer the client has.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct IfNoneMatch {
    /// The `ETag` of the answer the client has (a list, weak tags and `*`
    /// are taken): 304 while it is still the answer.
    #[param(rename = "If-None-Match")]
    if_none_match: Option<String>,
}

#[utoipa::path(
    get,
    path = "/artifacts/{id}/selectors",
    operation_id = "rest.selectors.list",
    tag = "fleet",
    summary = "The host selectors of an artifact",
    params(("id" = ArtifactId, Path, description = "The artifact id"), CopyParams),
    responses(
        (status = 200, description = "The selectors", body = SelectorList),
        (status = 400, description = "Not an id, not a repository name, or a parameter given twice"),
        (status = 401, description = "Bad credentials; or anonymous, and no copy the caller may pull"),
        (status = 404, description = "No such artifact (or none the caller may pull)"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn selectors_list() {}

#[utoipa::path(
    post,
    path = "/artifacts/{id}/selectors",
    operation_id = "rest.selectors.add",
    tag = "fleet",
    summary = "Assign an artifact to the hosts a label selector matches",
    description = "Stored as a referrer manifest of the artifact (its digest is the `selector_id`). With `channel`, the matching hosts follow that channel of the repository.",
    params(("id" = ArtifactId, Path, description = "The artifact id"), CopyParams),
    request_body(content = SelectorBody, content_type = "application/json"),
    responses(
        (status = 201, description = "Added", body = SelectorJson,
            links(
                ("remove" = (operation_id = "rest.selectors.remove", parameters(("id" = "$response.body#/artifact_id"), ("selector_id" = "$response.body#/selector_id"), ("repository" = "$response.body#/repository")))),
                ("list" = (operation_id = "rest.selectors.list", parameters(("id" = "$response.body#/artifact_id"), ("repository" = "$response.body#/repository")))),
            )),
        (status = 200, description = "The same selector again: the existing one", body = SelectorJson),
        (status = 400, description = "Not an id, a missing or invalid `selector`, an invalid `channel`, a body that is not the JSON object or is over 64 KiB, or a parameter given twice"),
        (status = 401, description = "Bad credentials, or a token without the scope"),
        (status = 403, description = "No push on the copy's repository"),
        (status = 404, description = "No such artifact (or none the caller may pull)"),
        (status = 408, description = "The body came too slowly"),
        (status = 409, description = "The id is in several repositories the caller may read: name one with `?repository=`"),
        (status = 415, description = "`Content-Type` is not `application/json`"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
        (status = 507, description = "The store is full"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn selectors_add() {}

#[utoipa::path(
    delete,
    path = "/artifacts/{id}/selectors/{selector_id}",
    operation_id = "rest.selectors.remove",
    tag = "fleet",
    summary = "Remove a host selector",
    params(
        ("id" = ArtifactId, Path, description = "The artifact id"),
        ("selector_id" = ArtifactId, Path, description = "The selector's `selector_id`"),
        CopyParams
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Not an id, not a repository name, or a parameter given twice"),
        (status = 401, description = "Bad credentials, or a token without the scope"),
        (status = 403, description = "No push on the copy's repository"),
        (status = 404, description = "No such artifact (or none the caller may pull), or the artifact has no such selector"),
        (status = 409, description = "The id is in several repositories the caller may read: name one with `?repository=`"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
        (status = 507, description = "The store is full"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn selectors_remove() {}

#[utoipa::path(
    get,
    path = "/artifacts/{id}/rollout",
    operation_id = "rest.rollout",
    tag = "fleet",
    summary = "Where an artifact is desired and what the hosts report",
    description = "`desired` counts the registered hosts whose desired set holds the artifact; `pending` those of them with no report (or `unloaded`). `hosts` lists the desired hosts and the reporting ones, by host id, a page at a time.",
    params(("id" = ArtifactId, Path, description = "The artifact id"), RolloutParams, CopyParams),
    responses(
        (status = 200, description = "The rollout", body = RolloutJson),
        (status = 400, description = "Not an id, not a repository name, a bad `limit` or `cursor`, or a parameter given twice"),
        (status = 401, description = "Bad credentials; or anonymous, and no copy the caller may pull"),
        (status = 404, description = "No such artifact (or none the caller may pull)"),
        (status = 409, description = "The id is in several repositories the caller may read: name one with `?repository=`"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn rollout() {}

#[utoipa::path(
    get,
    path = "/hosts",
    operation_id = "rest.hosts.registry",
    tag = "fleet",
    summary = "List the registered hosts",
    description = "By host id, a page at a time; only the hosts the caller may read (filtered before paging).",
    params(HostsParams),
    responses(
        (status = 200, description = "One page", body = HostPage,
            links(
                ("first" = (operation_id = "rest.host.get", parameters(("host_id" = "$response.body#/hosts/0/host_id")))),
            )),
        (status = 400, description = "A bad `label` selector, `limit` or `cursor`, or a parameter given twice"),
        (status = 401, description = "Bad credentials, or an anonymous caller who may read no host"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn hosts_registry() {}

#[utoipa::path(
    put,
    path = "/hosts/{host_id}",
    operation_id = "rest.host.register",
    tag = "fleet",
    summary = "Register a host, or update its facts",
    description = "What an agent says of its host: architecture (`amd64` and `arm64` are stored as `x86_64` and `aarch64`), kernel release, BTF, labels. Resolution matches selectors against the labels and requirements against the facts.",
    params(("host_id" = HostIdSchema, Path, description = "The host")),
    request_body(content = HostFacts, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = HostJson,
            links(
                ("get" = (operation_id = "rest.host.get", parameters(("host_id" = "$response.body#/host_id")))),
                ("desired" = (operation_id = "rest.host.desired", parameters(("host_id" = "$response.body#/host_id")))),
                ("deployments" = (operation_id = "rest.host.deployments", parameters(("host_id" = "$response.body#/host_id")))),
                ("delete" = (operation_id = "rest.host.delete", parameters(("host_id" = "$response.body#/host_id")))),
            )),
        (status = 200, description = "Updated", body = HostJson),
        (status = 400, description = "Not a host id; a missing `architecture` or `kernel_release`, or a fact over 256 bytes; invalid labels; a body that is not the JSON object or is over 64 KiB; or a parameter given twice"),
        (status = 401, description = "Bad credentials, or none where the policy needs them"),
        (status = 403, description = "No `report` grant on the host"),
        (status = 408, description = "The body came too slowly"),
        (status = 415, description = "`Content-Type` is not `application/json`"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
        (status = 507, description = "The store is full"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn host_register() {}

/// A read or delete of one registered host.
macro_rules! host_path {
    ($method:ident, $path:literal, $op:literal, $summary:literal, $grant:literal, $fn:ident,
     [$( $param:tt )*], $( $extra:tt )*) => {
        #[utoipa::path(
            $method,
            path = $path,
            operation_id = $op,
            tag = "fleet",
            summary = $summary,
            params(("host_id" = HostIdSchema, Path, description = "The host"), $( $param )*),
            responses(
                $( $extra )*
                (status = 401, description = "Bad credentials, or none where the policy needs them"),
                (status = 403, description = $grant),
                (status = 404, description = "The host is not registered"),
                (status = 500, description = "Internal failure"),
                (status = 503, description = "The connection cap is reached"),
            ),
            security((), ("basic" = []), ("bearer" = []))
        )]
        fn $fn() {}
    };
}

host_path!(
    get,
    "/hosts/{host_id}",
    "rest.host.get",
    "A registered host",
    "No `read` grant on the host",
    host_get,
    [],
    (status = 200, description = "The host", body = HostJson),
    (
        status = 400,
        description = "Not a host id, or a parameter given twice"
    ),
    (
        status = 429,
        description = "Over the concurrent request cap, or too many failed logins"
    ),
);

host_path!(
    delete,
    "/hosts/{host_id}",
    "rest.host.delete",
    "Unregister a host",
    "No `delete` grant on the host",
    host_delete,
    [],
    (
        status = 204,
        description = "Deleted: its facts, labels and deployment reports (not its associations)"
    ),
    (
        status = 400,
        description = "Not a host id, or a parameter given twice"
    ),
    (
        status = 429,
        description = "Over the concurrent request cap, or too many failed logins"
    ),
    (status = 507, description = "The store is full"),
);

host_path!(get, "/hosts/{host_id}/desired", "rest.host.desired", "What a host should run", "No `read` grant on the host", host_desired,
    [WaitParams, IfNoneMatch],
    (status = 200, description = "Per assigned name the version resolution chose for the host, and the newer versions it passed over with why (only repositories the caller may pull)", body = DesiredJson,
        headers(
            ("ETag" = String, description = "Strong: the first 32 hex of the body's sha256, quoted"),
            ("Cache-Control" = String, description = "`no-cache`"),
        )),
    (status = 304, description = "`If-None-Match` names the answer (with `wait`: it did not change in time)",
        headers(
            ("ETag" = String, description = "The answer's ETag"),
            ("Cache-Control" = String, description = "`no-cache`"),
        )),
    (status = 400, description = "Not a host id, a bad `wait`, or a parameter given twice"),
    (status = 429, description = "Over the concurrent request cap, too many failed logins, or too many long-polls held"),
);

host_path!(get, "/hosts/{host_id}/deployments", "rest.host.deployments", "What a host reported", "No `read` grant on the host", host_deployments,
    [],
    (status = 200, description = "The last report per artifact and the last 100 reports (only repositories the caller may pull)", body = DeploymentsJson),
    (status = 400, description = "Not a host id, or a parameter given twice"),
    (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
);

#[utoipa::path(
    put,
    path = "/hosts/{host_id}/deployments/{artifact_id}",
    operation_id = "rest.host.report",
    tag = "fleet",
    summary = "Report an artifact's state on a host",
    params(
        ("host_id" = HostIdSchema, Path, description = "The host"),
        ("artifact_id" = ArtifactId, Path, description = "The artifact id"),
        CopyParams
    ),
    request_body(content = DeploymentBody, content_type = "application/json"),
    responses(
        (status = 200, description = "Recorded", body = DeploymentJson,
            links(
                ("deployments" = (operation_id = "rest.host.deployments", parameters(("host_id" = "$response.body#/host_id")))),
                ("rollout" = (operation_id = "rest.rollout", parameters(("id" = "$response.body#/artifact_id"), ("repository" = "$response.body#/repository")))),
            )),
        (status = 400, description = "Not a host id or an artifact id; a bad `state`, `message` or `attach_point`; a body that is not the JSON object or is over 64 KiB; or a parameter given twice"),
        (status = 401, description = "Bad credentials, or none where the policy needs them"),
        (status = 403, description = "No `report` grant on the host"),
        (status = 404, description = "The host is not registered, or no such artifact (or none the caller may pull)"),
        (status = 408, description = "The body came too slowly"),
        (status = 409, description = "The id is in several repositories the caller may read: name one with `?repository=`"),
        (status = 415, description = "`Content-Type` is not `application/json`"),
        (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
        (status = 500, description = "Internal failure"),
        (status = 503, description = "The connection cap is reached"),
        (status = 507, description = "The store is full"),
    ),
    security((), ("basic" = []), ("bearer" = []))
)]
fn host_report() {}

/// A channel's operations share their path parameters and most answers.
macro_rules! channel_path {
    ($method:ident, $path:literal, $op:literal, $summary:literal, $grant:literal, $fn:ident,
     [$( $body:tt )*], $( $extra:tt )*) => {
        #[utoipa::path(
            $method,
            path = $path,
            operation_id = $op,
            tag = "channels",
            summary = $summary,
            params(
                ("name" = RepositoryName, Path, description = "The repository (its `/` may be sent as is or as `%2F`)"),
                ("channel" = Channel, Path, description = "The channel"),
            ),
            $( $body )*
            responses(
                $( $extra )*
                (status = 401, description = "Bad credentials, or none where the policy needs them"),
                (status = 403, description = $grant),
                (status = 429, description = "Over the concurrent request cap, or too many failed logins"),
                (status = 500, description = "Internal failure"),
                (status = 503, description = "The connection cap is reached"),
            ),
            security((), ("basic" = []), ("bearer" = []))
        )]
        fn $fn() {}
    };
}

channel_path!(
    get,
    "/channels/{name}/{channel}",
    "rest.channel.get",
    "A channel: the version it points at and its history",
    "No pull on the repository",
    channel_get,
    [],
    (
        status = 200,
        description = "The channel",
        body = ChannelJson,
        links(
            ("rollback" = (
                operation_id = "rest.channel.rollback",
                parameters(
                    ("name" = "$response.body#/name"),
                    ("channel" = "$response.body#/channel")
                )
            )),
        )
    ),
    (
        status = 400,
        description = "Not a repository name or not a channel (an OCI tag)"
    ),
    (
        status = 404,
        description = "The repository has no such channel"
    ),
);

channel_path!(put, "/channels/{name}/{channel}", "rest.channel.set", "Point a channel at a version", "No push on the repository", channel_set,
    [request_body(content = ChannelBody, content_type = "application/json"),],
    (status = 200, description = "Moved: the OCI tag `{channel}` now names what the version's tag does", body = ChannelJson,
        links(
            ("get" = (operation_id = "rest.channel.get", parameters(("name" = "$response.body#/name"), ("channel" = "$response.body#/channel")))),
            ("rollback" = (operation_id = "rest.channel.rollback", parameters(("name" = "$response.body#/name"), ("channel" = "$response.body#/channel")))),
        )),
    (status = 400, description = "Not a repository name or not a channel; a missing `version`; a body that is not the JSON object or is over 64 KiB"),
    (status = 404, description = "The repository has no such version"),
    (status = 408, description = "The body came too slowly"),
    (status = 409, description = "The channel is the version of an artifact of the repository"),
    (status = 415, description = "`Content-Type` is not `application/json`"),
    (status = 507, description = "The store is full"),
);

channel_path!(
    post,
    "/channels/{name}/{channel}/rollback",
    "rest.channel.rollback",
    "Move a channel back to its previous version",
    "No push on the repository",
    channel_rollback,
    [],
    (
        status = 200,
        description = "Moved back (rollbacks pop the moves like a stack)",
        body = ChannelJson
    ),
    (
        status = 400,
        description = "Not a repository name or not a channel"
    ),
    (
        status = 404,
        description = "The repository has no such channel"
    ),
    (
        status = 409,
        description = "No previous version to go back to"
    ),
    (status = 507, description = "The store is full"),
);
