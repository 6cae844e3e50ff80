//! The document against the code it describes: the REST route table,
//! the error table, the list query and the parsers' grammars.

use std::collections::BTreeSet;

use axum::http::Method;
use serde_json::Value;

use super::schemas::{self, rest_error_name};
use crate::artifacts::{HostId, ListQuery};
use crate::http::error::RestErrorCode;
use crate::http::rest::endpoint::{RestEndpoint, RouteError, PATHS};
use crate::oci::{Digest, RepoName, Tag};

/// The paths the document has besides the REST route table's.
const OTHER_PATHS: [&str; 3] = ["/healthz", "/openapi.json", "/token"];

const ID: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

fn doc() -> Value {
    serde_json::to_value(super::document()).unwrap()
}

/// A template with a valid value in each of its parameters.
fn instantiate(template: &str) -> String {
    template
        .replace("{id}", ID)
        .replace("{artifact_id}", ID)
        .replace("{selector_id}", ID)
        .replace("{host_id}", "node-1")
        .replace("{name}", "team/tools")
        .replace("{channel}", "stable")
}

fn documented_methods(doc: &Value, path: &str) -> BTreeSet<String> {
    doc["paths"][path]
        .as_object()
        .map(|item| {
            item.keys()
                .filter(|k| {
                    [
                        "get", "put", "post", "delete", "patch", "head", "options", "trace",
                    ]
                    .contains(&k.as_str())
                })
                .map(|k| k.to_uppercase())
                .collect()
        })
        .unwrap_or_default()
}

fn operations(doc: &Value) -> Vec<(String, String, Value)> {
    let mut out = Vec::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op.get("responses").is_some() {
                out.push((path.clone(), method.clone(), op.clone()));
            }
        }
    }
    out
}

#[test]
fn the_document_is_openapi_3_1() {
    assert_eq!(doc()["openapi"], "3.1.0");
}

#[test]
fn every_route_of_the_rest_table_is_documented_and_nothing_else() {
    let doc = doc();
    let mut rest_paths = BTreeSet::new();
    for (template, allow) in PATHS {
        rest_paths.insert(template.to_string());
        // HEAD is answered wherever GET is; the document lists GET.
        let table: BTreeSet<String> = allow
            .split(',')
            .filter(|m| *m != "HEAD")
            .map(str::to_string)
            .collect();
        assert_eq!(
            documented_methods(&doc, template),
            table,
            "{template}: the documented methods are the route table's"
        );
        let path = instantiate(template);
        for m in &table {
            let method: Method = m.parse().unwrap();
            let ep = match RestEndpoint::parse(&method, &path, None) {
                Ok(ep) => ep,
                Err(e) => panic!("{m} {path}: {e:?}"),
            };
            let op = &doc["paths"][template][m.to_lowercase()];
            assert_eq!(
                op["operationId"],
                ep.route(),
                "{m} {template}: the operation is named by its route"
            );
        }
        for m in ["GET", "POST", "PUT", "DELETE", "PATCH"] {
            if !table.contains(m) {
                let method: Method = m.parse().unwrap();
                assert!(
                    matches!(
                        RestEndpoint::parse(&method, &path, None),
                        Err(RouteError::MethodNotAllowed { .. })
                    ),
                    "{m} {path} is not a route"
                );
            }
        }
    }
    let documented: BTreeSet<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    let mut expected = rest_paths;
    expected.extend(OTHER_PATHS.iter().map(|p| p.to_string()));
    assert_eq!(
        documented, expected,
        "no path is documented that is not served"
    );
}

#[test]
fn operation_ids_are_unique() {
    let doc = doc();
    let ids: Vec<String> = operations(&doc)
        .iter()
        .map(|(_, _, op)| op["operationId"].as_str().unwrap().to_string())
        .collect();
    let unique: BTreeSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "{ids:?}");
}

#[test]
fn every_error_response_has_the_body_of_its_status_from_the_error_table() {
    let doc = doc();
    let schemas = &doc["components"]["schemas"];
    // Each status's schema lists exactly the table's codes of that status.
    let mut listed = BTreeSet::new();
    for (status, codes) in schemas::rest_statuses() {
        let e = &schemas[rest_error_name(status)]["properties"]["error"]["enum"];
        let e: Vec<&str> = e
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(e, codes, "{status}");
        listed.extend(e);
    }
    let all: BTreeSet<&str> = RestErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(listed, all, "every code of the table is in the document");
    for (path, method, op) in operations(&doc) {
        let token = path == "/token";
        for (status, response) in op["responses"].as_object().unwrap() {
            let code: u16 = status.parse().unwrap();
            if code < 400 || (path == "/healthz" && code == 503) {
                continue;
            }
            let schema = &response["content"]["application/json"]["schema"];
            let refs: Vec<&str> = match schema.get("oneOf") {
                Some(list) => list
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| s["$ref"].as_str().unwrap())
                    .collect(),
                None => vec![schema["$ref"].as_str().unwrap_or("")],
            };
            for r in &refs {
                let name = r.trim_start_matches("#/components/schemas/");
                assert!(
                    schemas.get(name).is_some(),
                    "{method} {path} {status}: {r} is defined"
                );
            }
            let rest = format!("#/components/schemas/{}", rest_error_name(code));
            let oci = format!("#/components/schemas/{}", schemas::OCI_ERROR);
            if token {
                assert!(
                    refs.contains(&oci.as_str()),
                    "{method} {path} {status}: {refs:?}"
                );
            } else {
                assert_eq!(refs, [rest.as_str()], "{method} {path} {status}");
            }
        }
    }
}

#[test]
fn list_parameters_are_the_ones_the_list_query_reads() {
    let asked = std::cell::RefCell::new(BTreeSet::new());
    ListQuery::parse(&|k| {
        asked.borrow_mut().insert(k.to_string());
        None
    })
    .unwrap();
    let doc = doc();
    let documented: BTreeSet<String> = doc["paths"]["/artifacts"]["get"]["parameters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(documented, asked.into_inner());
}

#[test]
fn every_link_names_an_operation_and_its_parameters() {
    let doc = doc();
    let ops = operations(&doc);
    let mut links = 0;
    for (path, method, op) in &ops {
        for (status, response) in op["responses"].as_object().unwrap() {
            let Some(l) = response.get("links").and_then(Value::as_object) else {
                continue;
            };
            for (name, link) in l {
                links += 1;
                let target = link["operationId"].as_str().unwrap();
                let Some((_, _, t)) = ops.iter().find(|(_, _, o)| o["operationId"] == target)
                else {
                    panic!("{method} {path} {status} link {name}: no operation {target}");
                };
                let params: BTreeSet<&str> = t["parameters"]
                    .as_array()
                    .map(|a| a.iter().map(|p| p["name"].as_str().unwrap()).collect())
                    .unwrap_or_default();
                for p in link["parameters"].as_object().unwrap().keys() {
                    assert!(
                        params.contains(p.as_str()),
                        "link {name}: {target} has no {p}"
                    );
                }
            }
        }
    }
    assert!(links >= 9, "the stateful links are there ({links})");
}

#[test]
fn the_security_schemes_are_basic_and_bearer() {
    let doc = doc();
    let s = &doc["components"]["securitySchemes"];
    assert_eq!(s["basic"]["scheme"], "basic");
    assert_eq!(s["bearer"]["scheme"], "bearer");
    // The key and the document are public; the artifacts routes take either.
    assert_eq!(
        doc["paths"]["/signing/public-key"]["get"]["security"],
        serde_json::json!([{}])
    );
    assert_eq!(
        doc["paths"]["/openapi.json"]["get"]["security"],
        serde_json::json!([{}])
    );
}

/// The create body's fields and the parameters reference the grammars.
#[test]
fn values_the_parsers_check_reference_their_grammar() {
    let doc = doc();
    let create = &doc["components"]["schemas"]["CreateRequest"]["properties"];
    for (field, grammar) in [
        ("name", "RepositoryName"),
        ("version", "Version"),
        ("type", "ArtifactKind"),
        ("architecture", "Architecture"),
    ] {
        assert_eq!(
            create[field]["$ref"],
            format!("#/components/schemas/{grammar}"),
            "{field}"
        );
    }
    assert_eq!(
        create["hosts"]["items"]["$ref"],
        "#/components/schemas/HostId"
    );
    assert_eq!(
        create["tags"]["items"]["$ref"],
        "#/components/schemas/ArtifactTag"
    );
    assert_eq!(create["data"]["$ref"], "#/components/schemas/Payload");
    // The fleet bodies and the long-polls' `wait`.
    let schemas = &doc["components"]["schemas"];
    for (schema, field, grammar) in [
        ("HostBody", "channel", "Channel"),
        ("SelectorBody", "selector", "Selector"),
        ("SelectorBody", "channel", "Channel"),
        ("ChannelBody", "version", "Version"),
        ("DeploymentBody", "state", "DeploymentState"),
    ] {
        assert_eq!(
            schemas[schema]["properties"][field]["$ref"],
            format!("#/components/schemas/{grammar}"),
            "{schema}.{field}"
        );
    }
    assert_eq!(
        schemas["DeploymentState"]["enum"],
        serde_json::json!(crate::fleet::service::STATES)
    );
    for path in ["/hosts/{host_id}/desired", "/artifacts/for-host/{host_id}"] {
        let op = &doc["paths"][path]["get"];
        let wait = op["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == "wait")
            .unwrap();
        assert_eq!(
            wait["schema"]["$ref"], "#/components/schemas/Wait",
            "{path}"
        );
        assert!(
            op["responses"]["304"]["headers"]["ETag"].is_object(),
            "{path}"
        );
        assert!(
            op["responses"]["200"]["headers"]["ETag"].is_object(),
            "{path}"
        );
    }
    let kinds = &doc["components"]["schemas"]["ArtifactKind"]["enum"];
    assert_eq!(kinds, &serde_json::json!(crate::artifacts::model::KINDS));
}

fn strategy(pattern: &str) -> proptest::string::RegexGeneratorStrategy<String> {
    let body = pattern.trim_start_matches('^').trim_end_matches('$');
    proptest::string::string_regex(body).unwrap()
}

proptest::proptest! {
    /// What a documented pattern allows, the parser takes: a client
    /// following the document is never refused for the value's shape.
    #[test]
    fn every_grammar_pattern_only_allows_what_the_parser_accepts(
        digest in strategy(schemas::DIGEST_PATTERN),
        repo in strategy(schemas::REPOSITORY_PATTERN),
        version in strategy(schemas::VERSION_PATTERN),
        host in strategy(schemas::HOST_ID_PATTERN),
        payload in strategy(schemas::BASE64_PATTERN),
        wait in strategy(schemas::WAIT_PATTERN),
        channel in strategy(schemas::VERSION_PATTERN),
    ) {
        proptest::prop_assert!(crate::fleet::watch::parse_wait(&wait).is_ok(), "{}", wait);
        proptest::prop_assert!(Tag::parse(&channel).is_ok(), "{}", channel);
        proptest::prop_assert!(Digest::parse(&digest).is_ok(), "{}", digest);
        if repo.len() <= crate::oci::name::MAX_NAME_LEN {
            proptest::prop_assert!(RepoName::parse(&repo).is_ok(), "{}", repo);
        }
        proptest::prop_assert!(Tag::parse(&version).is_ok(), "{}", version);
        proptest::prop_assert!(HostId::parse(&host).is_ok(), "{}", host);
        // The create's decoder: padded, else unpadded (`artifacts::payload`).
        use base64::Engine as _;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        let decodes = STANDARD.decode(&payload).is_ok() || STANDARD_NO_PAD.decode(&payload).is_ok();
        proptest::prop_assert!(decodes, "{}", payload);
    }
}
