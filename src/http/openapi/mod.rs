//! `GET /openapi.json`: the OpenAPI 3.1 document of the REST API (and of
//! `/healthz`, `/token` and itself), built once from the code: the request
//! and response types derive their schemas (`utoipa::ToSchema`), each REST
//! route has its documented operation (`paths`, named by the route), every
//! error response's body is generated from the REST error table
//! (`schemas`), and the tests check the operations against the REST route
//! table (`rest::endpoint::PATHS`) both ways, so the document cannot drift
//! from what the server answers.
//!
//! The document is public, also with authentication on: it describes the
//! code (which the README describes too) and holds no data of the
//! registry, no user, no repository and no secret.

mod fleet_paths;
mod paths;
pub mod schemas;

use std::sync::OnceLock;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use utoipa::openapi::path::Operation;
use utoipa::openapi::schema::{OneOfBuilder, Schema};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use super::RouteName;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "bpf-registry REST API",
        description = "The REST facade of bpf-registry (the original artifact service), generated from the server's code. The OCI distribution API under `/v2` is the OCI distribution-spec's and is not described here. Every error is `{\"error\":\"<code>\",\"message\":\"...\"}` with a code of the REST error table (the OCI envelope for `/token`). With authentication off every operation is open; with it on, Basic credentials or a bearer token from `/token` (or none, for what anonymous callers may do)."
    ),
    paths(
        paths::artifacts_list,
        paths::artifacts_create,
        paths::for_host,
        paths::artifacts_get,
        paths::artifacts_delete,
        paths::artifacts_binary,
        paths::hosts_list,
        paths::hosts_add,
        paths::hosts_remove,
        paths::signatures_list,
        paths::signatures_verify,
        fleet_paths::selectors_list,
        fleet_paths::selectors_add,
        fleet_paths::selectors_remove,
        fleet_paths::rollout,
        fleet_paths::hosts_registry,
        fleet_paths::host_register,
        fleet_paths::host_get,
        fleet_paths::host_delete,
        fleet_paths::host_desired,
        fleet_paths::host_deployments,
        fleet_paths::host_report,
        fleet_paths::channel_get,
        fleet_paths::channel_set,
        fleet_paths::channel_rollback,
        paths::public_key,
        paths::healthz,
        paths::openapi,
        paths::token_get,
        paths::token_post,
    ),
    components(schemas(
        schemas::ArtifactId,
        schemas::RepositoryName,
        schemas::HostIdSchema,
        schemas::ArtifactKind,
        schemas::Version,
        schemas::Architecture,
        schemas::Payload,
        schemas::ArtifactTag,
        schemas::Channel,
        schemas::SelectorText,
        schemas::Wait,
        schemas::DeploymentState,
    )),
    modifiers(&Grammar, &ErrorBodies, &Security),
    tags(
        (name = "artifacts", description = "eBPF artifacts: create, read, list, delete"),
        (name = "hosts", description = "Host associations"),
        (name = "fleet", description = "Registered hosts, host selectors, desired sets, deployment reports and rollouts"),
        (name = "channels", description = "Channels: movable tags a host association or selector can follow"),
        (name = "signing", description = "Signatures and the signing key"),
        (name = "auth", description = "Bearer tokens"),
        (name = "operations", description = "Health and this document"),
    )
)]
struct ApiDoc;

/// The document, built from the code.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// Every operation of the document, with its path and method.
fn operations_mut(
    doc: &mut utoipa::openapi::OpenApi,
) -> impl Iterator<Item = (&String, &'static str, &mut Operation)> {
    doc.paths.paths.iter_mut().flat_map(|(path, item)| {
        [
            ("get", item.get.as_mut()),
            ("put", item.put.as_mut()),
            ("post", item.post.as_mut()),
            ("delete", item.delete.as_mut()),
            ("patch", item.patch.as_mut()),
            ("head", item.head.as_mut()),
            ("options", item.options.as_mut()),
            ("trace", item.trace.as_mut()),
        ]
        .into_iter()
        .filter_map(move |(m, op)| op.map(|op| (path, m, op)))
    })
}

fn reference(name: &str) -> RefOr<Schema> {
    RefOr::Ref(Ref::from_schema_name(name))
}

/// The create body's fields and the other bodies' ids, names and channels
/// reference the grammar schemas the parsers check (`schemas`), keeping
/// their own descriptions.
struct Grammar;

impl Modify for Grammar {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let Some(components) = doc.components.as_mut() else {
            return;
        };
        let fields: [(&str, &str, &str); 13] = [
            ("CreateRequest", "name", "RepositoryName"),
            ("CreateRequest", "version", "Version"),
            ("CreateRequest", "type", "ArtifactKind"),
            ("CreateRequest", "architecture", "Architecture"),
            ("CreateRequest", "data", "Payload"),
            ("CreateRequest", "tags", "ArtifactTag"),
            ("CreateRequest", "hosts", "HostId"),
            ("HostBody", "host_id", "HostId"),
            ("HostBody", "channel", "Channel"),
            ("SelectorBody", "selector", "Selector"),
            ("SelectorBody", "channel", "Channel"),
            ("ChannelBody", "version", "Version"),
            ("DeploymentBody", "state", "DeploymentState"),
        ];
        for (schema, field, grammar) in fields {
            let Some(RefOr::T(Schema::Object(obj))) = components.schemas.get_mut(schema) else {
                continue;
            };
            let Some(prop) = obj.properties.get_mut(field) else {
                continue;
            };
            match prop {
                // A list of such values (`hosts`).
                RefOr::T(Schema::Array(arr)) => arr.items = reference(grammar).into(),
                RefOr::T(Schema::Object(o)) => {
                    let mut r = Ref::from_schema_name(grammar);
                    r.description = o.description.take().unwrap_or_default();
                    *prop = RefOr::Ref(r);
                }
                _ => {}
            }
        }
    }
}

/// Every error response (a status of 400 or more without a body of its
/// own) gets its body: the REST error of that status, whose `error` enum is
/// the table's codes of that status; `/token`'s the OCI envelope (or the
/// REST error the request limits answer with, 408 and 429).
struct ErrorBodies;

impl Modify for ErrorBodies {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let statuses = schemas::rest_statuses();
        let components = doc.components.get_or_insert_with(Default::default);
        for (status, codes) in &statuses {
            components.schemas.insert(
                schemas::rest_error_name(*status),
                schemas::rest_error(*status, codes),
            );
        }
        components
            .schemas
            .insert(schemas::OCI_ERROR.to_string(), schemas::oci_error());
        let known = |s: u16| statuses.iter().any(|(t, _)| *t == s);
        for (_, _, op) in operations_mut(doc) {
            let oci = op
                .operation_id
                .as_deref()
                .is_some_and(|id| id.starts_with("token."));
            for (status, response) in op.responses.responses.iter_mut() {
                let Ok(code) = status.parse::<u16>() else {
                    continue;
                };
                let RefOr::T(response) = response else {
                    continue;
                };
                if code < 400 || !response.content.is_empty() {
                    continue;
                }
                let rest = reference(&schemas::rest_error_name(code));
                let schema = match (oci, known(code)) {
                    (false, _) => rest,
                    (true, true) if matches!(code, 408 | 429 | 503) => OneOfBuilder::new()
                        .item(reference(schemas::OCI_ERROR))
                        .item(rest)
                        .into(),
                    (true, _) => reference(schemas::OCI_ERROR),
                };
                response.content.insert(
                    "application/json".to_string(),
                    RefOr::T(ContentBuilder::new().schema(Some(schema)).build()),
                );
            }
        }
    }
}

/// The two ways to authenticate when authentication is on.
struct Security;

impl Modify for Security {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let mut basic = Http::new(HttpAuthScheme::Basic);
        basic.description =
            Some("A user of the htpasswd file (`BPF_REGISTRY_AUTH_HTPASSWD`).".to_string());
        let mut bearer = Http::new(HttpAuthScheme::Bearer);
        bearer.bearer_format = Some("JWT".to_string());
        bearer.description = Some("An ES256 token from `GET /token` or `POST /token`.".to_string());
        components
            .security_schemes
            .insert("basic".to_string(), RefOr::T(SecurityScheme::Http(basic)));
        components
            .security_schemes
            .insert("bearer".to_string(), RefOr::T(SecurityScheme::Http(bearer)));
    }
}

/// The document as served: serialized once.
fn document_bytes() -> Bytes {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    JSON.get_or_init(|| {
        serde_json::to_vec(&document())
            .map(Bytes::from)
            .unwrap_or_default()
    })
    .clone()
}

/// `GET /openapi.json`
pub async fn serve() -> Response {
    let mut r = (StatusCode::OK, document_bytes()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.extensions_mut().insert(RouteName("openapi"));
    r
}

#[cfg(test)]
mod tests;
