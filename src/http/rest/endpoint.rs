//! The REST routes, in one table: `(method, path, query)` is parsed once
//! into a [`RestEndpoint`] that carries every path and query value,
//! validated, and says what it needs of the caller ([`RestEndpoint::needs`]).
//! The authorization and the handlers both work from this value; nothing
//! else matches REST paths.
//!
//! A query parameter given twice is a 400 (`invalid_request`), never
//! "the first here, the last there"; unknown parameters are ignored, as
//! the seed service did.

use crate::http::endpoint::query::{Query as StrictQuery, QueryError, MAX_PARAMETERS};
use axum::http::Method;
use percent_encoding::percent_decode_str;

use crate::artifacts::{ArtifactError, HostId, ListQuery};
use crate::auth::Action;
use crate::oci::{Digest, RepoName};

pub use super::fleet_endpoint::{ChannelOp, FleetEndpoint, FleetNeeds, HostOp};

/// An artifact id as a request names it: the manifest digest, and the
/// repository when the caller chose one (`?repository=`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdRef {
    pub digest: Digest,
    pub repository: Option<RepoName>,
}

/// One REST request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RestEndpoint {
    /// `GET /artifacts`
    List { query: ListQuery },
    /// `POST /artifacts` (the body is decoded by the handler)
    Create,
    /// `GET /artifacts/for-host/{host_id}[?wait=]`
    ForHost {
        host: HostId,
        wait: Option<std::time::Duration>,
    },
    /// `/hosts...` and `/channels...` (see `fleet_endpoint`).
    Fleet(FleetEndpoint),
    /// `GET /signing/public-key[?version=N]`
    PublicKey { version: Option<u32> },
    /// `/artifacts/{id}[/...]`: one operation on the artifact an id names.
    Artifact { id: IdRef, op: ArtifactOp },
}

/// What is done to the artifact an id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactOp {
    /// `GET /artifacts/{id}`
    Get,
    /// `DELETE /artifacts/{id}`
    Delete,
    /// `GET /artifacts/{id}/binary`
    Binary,
    /// `GET /artifacts/{id}/hosts`
    Hosts,
    /// `POST /artifacts/{id}/hosts` with `{"host_id": ...}`
    AddHost,
    /// `DELETE /artifacts/{id}/hosts/{host_id}`
    RemoveHost { host: HostId },
    /// `GET /artifacts/{id}/signatures`
    Signatures,
    /// `GET /artifacts/{id}/verify`
    Verify,
    /// `GET /artifacts/{id}/selectors`
    Selectors,
    /// `POST /artifacts/{id}/selectors` with `{"selector": ...}`
    AddSelector,
    /// `DELETE /artifacts/{id}/selectors/{selector_id}`
    RemoveSelector { selector_id: Digest },
    /// `GET /artifacts/{id}/rollout[?limit=&cursor=]`
    Rollout {
        limit: usize,
        cursor: Option<String>,
    },
}

impl ArtifactOp {
    /// Reads pull, host associations push, `DELETE` delete.
    pub fn action(&self) -> Action {
        match self {
            ArtifactOp::Get
            | ArtifactOp::Binary
            | ArtifactOp::Hosts
            | ArtifactOp::Signatures
            | ArtifactOp::Verify
            | ArtifactOp::Selectors
            | ArtifactOp::Rollout { .. } => Action::Pull,
            ArtifactOp::AddHost
            | ArtifactOp::RemoveHost { .. }
            | ArtifactOp::AddSelector
            | ArtifactOp::RemoveSelector { .. } => Action::Push,
            ArtifactOp::Delete => Action::Delete,
        }
    }
}

/// What an endpoint needs of the caller before it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs<'a> {
    /// Nothing (the signing public key is public).
    Open,
    /// A list: each entry is kept only if the caller may pull its
    /// repository.
    ListPull,
    /// Push on the repository the body names (decoded by the handler).
    PushOnBody,
    /// `action` on the copy the id resolves to, among those the caller may
    /// pull.
    OnCopy(&'a IdRef, Action),
    /// What a fleet endpoint needs.
    Fleet(FleetNeeds<'a>),
}

/// Why a request is not a REST endpoint.
#[derive(Debug)]
pub enum RouteError {
    /// No such path: 404 `not_found`.
    NoRoute,
    /// The path exists for other methods: 405 with `Allow`.
    MethodNotAllowed { allow: &'static str },
    /// A path or query value that does not parse: its 4xx.
    Invalid(ArtifactError),
}

impl From<ArtifactError> for RouteError {
    fn from(e: ArtifactError) -> Self {
        RouteError::Invalid(e)
    }
}

/// Whether `path` is one of the routes whose callers the auth middleware
/// authenticates: `/artifacts` and below (the signing public key is open).
pub fn authenticates(path: &str) -> bool {
    ["/artifacts", "/hosts", "/channels"]
        .iter()
        .any(|p| path == *p || path.strip_prefix(p).is_some_and(|r| r.starts_with('/')))
}

/// The query's parameters, each given at most once: the strict decoder
/// every dialect shares.
pub(super) struct Query(StrictQuery);

impl Query {
    pub(super) fn parse(q: Option<&str>) -> Result<Query, RouteError> {
        StrictQuery::parse(q, &[]).map(Query).map_err(|e| {
            let message = match e {
                QueryError::Repeated { key } => format!(
                    "query parameter {:?} is given more than once",
                    key.chars().take(40).collect::<String>()
                ),
                QueryError::TooMany => format!("more than {MAX_PARAMETERS} query parameters"),
                QueryError::BadName | QueryError::BadValue { .. } => {
                    "malformed query string: not valid percent-encoded UTF-8".to_string()
                }
            };
            ArtifactError::InvalidRequest(message).into()
        })
    }

    pub(super) fn get(&self, k: &str) -> Option<String> {
        self.0.get(k).map(str::to_string)
    }
}

pub(super) fn segment(s: &str) -> Result<String, RouteError> {
    percent_decode_str(s)
        .decode_utf8()
        .map(|c| c.into_owned())
        .map_err(|_| ArtifactError::InvalidRequest("the path is not UTF-8".into()).into())
}

pub(super) fn id_ref(id: &str, q: &Query) -> Result<IdRef, RouteError> {
    let digest =
        Digest::parse(id).map_err(|_| ArtifactError::InvalidId(id.chars().take(100).collect()))?;
    let repository = match q.get("repository") {
        None => None,
        Some(r) => Some(RepoName::parse(&r).map_err(|e| {
            ArtifactError::InvalidName(format!(
                "invalid repository {:?}: {e}",
                r.chars().take(300).collect::<String>()
            ))
        })?),
    };
    Ok(IdRef { digest, repository })
}

fn key_version(q: &Query) -> Result<Option<u32>, RouteError> {
    match q.get("version") {
        None => Ok(None),
        Some(v) => v.parse::<u32>().map(Some).map_err(|_| {
            ArtifactError::InvalidRequest(format!(
                "invalid version {:?}: expected a key version number",
                v.chars().take(40).collect::<String>()
            ))
            .into()
        }),
    }
}

/// Every REST path, as an OpenAPI path template, with the methods it has
/// (`HEAD` wherever `GET` is): the one table [`RestEndpoint::parse`]
/// answers 404 and 405 from, tried in order (`for-host` before `{id}`).
/// The OpenAPI document (`http::openapi`) is checked against it: every
/// path and method here is documented, and nothing else is.
pub const PATHS: [(&str, &str); 19] = [
    ("/artifacts", "GET,HEAD,POST"),
    ("/artifacts/for-host/{host_id}", "GET,HEAD"),
    ("/artifacts/{id}", "GET,HEAD,DELETE"),
    ("/artifacts/{id}/binary", "GET,HEAD"),
    ("/artifacts/{id}/hosts", "GET,HEAD,POST"),
    ("/artifacts/{id}/hosts/{host_id}", "DELETE"),
    ("/artifacts/{id}/signatures", "GET,HEAD"),
    ("/artifacts/{id}/verify", "GET,HEAD"),
    ("/artifacts/{id}/selectors", "GET,HEAD,POST"),
    ("/artifacts/{id}/selectors/{selector_id}", "DELETE"),
    ("/artifacts/{id}/rollout", "GET,HEAD"),
    ("/signing/public-key", "GET,HEAD"),
    // Parsed by `fleet_endpoint` (a channel's name may span segments).
    ("/hosts", "GET,HEAD"),
    ("/hosts/{host_id}", "GET,HEAD,PUT,DELETE"),
    ("/hosts/{host_id}/desired", "GET,HEAD"),
    ("/hosts/{host_id}/deployments", "GET,HEAD"),
    ("/hosts/{host_id}/deployments/{artifact_id}", "PUT"),
    ("/channels/{name}/{channel}", "GET,HEAD,PUT"),
    ("/channels/{name}/{channel}/rollback", "POST"),
];

/// Whether the raw path's segments fit a template: same count, each
/// literal equal, each `{name}` any (non-empty) segment.
fn fits(template: &str, segs: &[&str]) -> bool {
    let parts: Vec<&str> = template.split('/').skip(1).collect();
    parts.len() == segs.len()
        && parts
            .iter()
            .zip(segs)
            .all(|(t, s)| (t.starts_with('{') && t.ends_with('}')) || t == s)
}

/// The methods of the path (from [`PATHS`]), or `None` for no route.
fn allowed(path: &str) -> Option<&'static str> {
    let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
    if segs.iter().any(|s| s.is_empty()) {
        return None;
    }
    PATHS
        .iter()
        .find(|(template, _)| fits(template, &segs))
        .map(|(_, allow)| *allow)
}

impl RestEndpoint {
    /// Parses a request line. `path` is the raw (percent-encoded) path.
    pub fn parse(method: &Method, path: &str, query: Option<&str>) -> Result<Self, RouteError> {
        if let Some(fleet) = FleetEndpoint::parse(method, path, query) {
            return fleet.map(RestEndpoint::Fleet);
        }
        let read = method == Method::GET || method == Method::HEAD;
        // Which methods the path has, before any value is parsed (as a
        // router answers 405 before it extracts).
        let allow = allowed(path).ok_or(RouteError::NoRoute)?;
        let is = |m: &Method| method == m || (m == Method::GET && method == Method::HEAD);
        let known = allow
            .split(',')
            .any(|m| m.parse::<Method>().is_ok_and(|m| is(&m)));
        if !known {
            return Err(RouteError::MethodNotAllowed { allow });
        }
        if path == "/signing/public-key" {
            let q = Query::parse(query)?;
            return Ok(RestEndpoint::PublicKey {
                version: key_version(&q)?,
            });
        }
        let segs: Vec<&str> = match path.strip_prefix("/artifacts") {
            Some("") => Vec::new(),
            Some(rest) => rest.trim_start_matches('/').split('/').collect(),
            None => return Err(RouteError::NoRoute),
        };
        let q = Query::parse(query)?;
        let ep = match segs.as_slice() {
            [] if read => RestEndpoint::List {
                query: ListQuery::parse(&|k| q.get(k))?,
            },
            [] => RestEndpoint::Create,
            ["for-host", host] => RestEndpoint::ForHost {
                host: HostId::parse(&segment(host)?)?,
                wait: super::fleet_endpoint::wait(&q)?,
            },
            [id, tail @ ..] => {
                let id = id_ref(&segment(id)?, &q)?;
                let op = match (tail, read) {
                    ([], true) => ArtifactOp::Get,
                    ([], false) => ArtifactOp::Delete,
                    (["binary"], _) => ArtifactOp::Binary,
                    (["signatures"], _) => ArtifactOp::Signatures,
                    (["verify"], _) => ArtifactOp::Verify,
                    (["hosts"], true) => ArtifactOp::Hosts,
                    (["hosts"], false) => ArtifactOp::AddHost,
                    (["hosts", host], _) => ArtifactOp::RemoveHost {
                        host: HostId::parse(&segment(host)?)?,
                    },
                    (["selectors"], true) => ArtifactOp::Selectors,
                    (["selectors"], false) => ArtifactOp::AddSelector,
                    (["selectors", sid], _) => ArtifactOp::RemoveSelector {
                        selector_id: Digest::parse(&segment(sid)?).map_err(|_| {
                            ArtifactError::fleet(
                                crate::artifacts::FleetRefusal::SelectorNotFound,
                                "a selector id is sha256:<64 hex>",
                            )
                        })?,
                    },
                    (["rollout"], _) => ArtifactOp::Rollout {
                        limit: match q.get("limit") {
                            None => 100,
                            Some(v) => match v.parse::<usize>() {
                                Ok(n) if (1..=1000).contains(&n) => n,
                                _ => {
                                    return Err(ArtifactError::InvalidRequest(
                                        "invalid limit: 1 to 1000".into(),
                                    )
                                    .into())
                                }
                            },
                        },
                        cursor: q.get("cursor"),
                    },
                    _ => return Err(RouteError::NoRoute),
                };
                RestEndpoint::Artifact { id, op }
            }
        };
        Ok(ep)
    }

    /// The route's constant name, for the request log.
    pub fn route(&self) -> &'static str {
        match self {
            RestEndpoint::List { .. } => "rest.artifacts.list",
            RestEndpoint::Create => "rest.artifacts.create",
            RestEndpoint::ForHost { .. } => "rest.for_host",
            RestEndpoint::Fleet(f) => f.route(),
            RestEndpoint::PublicKey { .. } => "rest.signing.public_key",
            RestEndpoint::Artifact { op, .. } => match op {
                ArtifactOp::Get => "rest.artifacts.get",
                ArtifactOp::Delete => "rest.artifacts.delete",
                ArtifactOp::Binary => "rest.artifacts.binary",
                ArtifactOp::Hosts => "rest.hosts.list",
                ArtifactOp::AddHost => "rest.hosts.add",
                ArtifactOp::RemoveHost { .. } => "rest.hosts.remove",
                ArtifactOp::Signatures => "rest.signatures.list",
                ArtifactOp::Verify => "rest.signatures.verify",
                ArtifactOp::Selectors => "rest.selectors.list",
                ArtifactOp::AddSelector => "rest.selectors.add",
                ArtifactOp::RemoveSelector { .. } => "rest.selectors.remove",
                ArtifactOp::Rollout { .. } => "rest.rollout",
            },
        }
    }

    /// What the endpoint needs of the caller.
    pub fn needs(&self) -> Needs<'_> {
        match self {
            RestEndpoint::PublicKey { .. } => Needs::Open,
            RestEndpoint::List { .. } | RestEndpoint::ForHost { .. } => Needs::ListPull,
            RestEndpoint::Create => Needs::PushOnBody,
            RestEndpoint::Artifact { id, op } => Needs::OnCopy(id, op.action()),
            RestEndpoint::Fleet(f) => Needs::Fleet(f.needs()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn parse(m: Method, path: &str, q: Option<&str>) -> Result<RestEndpoint, RouteError> {
        RestEndpoint::parse(&m, path, q)
    }

    fn id(repo: Option<&str>) -> IdRef {
        IdRef {
            digest: Digest::parse(D).unwrap(),
            repository: repo.map(|r| RepoName::parse(r).unwrap()),
        }
    }

    fn art(repo: Option<&str>, op: ArtifactOp) -> RestEndpoint {
        RestEndpoint::Artifact { id: id(repo), op }
    }

    #[test]
    fn every_route_parses_into_its_endpoint() {
        let host = HostId::parse("node-1").unwrap();
        let cases = [
            (Method::GET, "/artifacts".to_string(), None, RestEndpoint::List { query: ListQuery::default() }),
            (Method::HEAD, "/artifacts".to_string(), None, RestEndpoint::List { query: ListQuery::default() }),
            (Method::POST, "/artifacts".to_string(), None, RestEndpoint::Create),
            (Method::GET, format!("/artifacts/{D}"), None, art(None, ArtifactOp::Get)),
            (Method::GET, "/artifacts/sha256%3A2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae".into(), None, art(None, ArtifactOp::Get)),
            (Method::DELETE, format!("/artifacts/{D}"), Some("repository=team/x"), art(Some("team/x"), ArtifactOp::Delete)),
            (Method::GET, format!("/artifacts/{D}/binary"), None, art(None, ArtifactOp::Binary)),
            (Method::GET, format!("/artifacts/{D}/hosts"), None, art(None, ArtifactOp::Hosts)),
            (Method::POST, format!("/artifacts/{D}/hosts"), Some("repository=a"), art(Some("a"), ArtifactOp::AddHost)),
            (Method::DELETE, format!("/artifacts/{D}/hosts/node-1"), None, art(None, ArtifactOp::RemoveHost { host: host.clone() })),
            (Method::GET, "/artifacts/for-host/node-1".into(), None, RestEndpoint::ForHost { host, wait: None }),
            (Method::GET, format!("/artifacts/{D}/signatures"), None, art(None, ArtifactOp::Signatures)),
            (Method::GET, format!("/artifacts/{D}/verify"), Some("other=1"), art(None, ArtifactOp::Verify)),
            (Method::GET, "/signing/public-key".into(), Some("version=3"), RestEndpoint::PublicKey { version: Some(3) }),
        ];
        for (m, path, q, want) in cases {
            match parse(m.clone(), &path, q) {
                Ok(ep) => assert_eq!(ep, want, "{m} {path}"),
                Err(e) => panic!("{m} {path}: {e:?}"),
            }
        }
        let list = parse(Method::GET, "/artifacts", Some("name=a%2Fb&limit=5&host=h")).unwrap();
        let RestEndpoint::List { query } = list else {
            panic!("not a list")
        };
        assert_eq!(query.name.as_deref(), Some("a/b"));
        assert_eq!(query.limit, 5);
        assert_eq!(query.host, Some(HostId::parse("h").unwrap()));
    }

    #[test]
    fn what_each_endpoint_needs() {
        let del = parse(Method::DELETE, &format!("/artifacts/{D}"), None).unwrap();
        assert_eq!(del.needs(), Needs::OnCopy(&id(None), Action::Delete));
        let add = parse(Method::POST, &format!("/artifacts/{D}/hosts"), None).unwrap();
        assert_eq!(add.needs(), Needs::OnCopy(&id(None), Action::Push));
        let get = parse(Method::GET, &format!("/artifacts/{D}/binary"), None).unwrap();
        assert_eq!(get.needs(), Needs::OnCopy(&id(None), Action::Pull));
        assert_eq!(RestEndpoint::Create.needs(), Needs::PushOnBody);
        assert_eq!(
            parse(Method::GET, "/artifacts", None).unwrap().needs(),
            Needs::ListPull
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        let no_route = [
            "/artifacts/",
            "/artifacts//binary",
            "/artifactsx",
            &format!("/artifacts/{D}/nope"),
            &format!("/artifacts/{D}/hosts/h/x"),
            "/artifacts/for-host/h/x",
        ];
        for p in no_route {
            assert!(
                matches!(parse(Method::GET, p, None), Err(RouteError::NoRoute)),
                "{p}"
            );
        }
        assert!(matches!(
            parse(Method::PUT, "/artifacts", None),
            Err(RouteError::MethodNotAllowed {
                allow: "GET,HEAD,POST"
            })
        ));
        assert!(matches!(
            parse(Method::POST, "/artifacts/not-an-id", None),
            Err(RouteError::MethodNotAllowed { .. })
        ));
        let invalid = [
            (
                Method::GET,
                "/artifacts/not-an-id".to_string(),
                None,
                "invalid_id",
            ),
            (
                Method::GET,
                "/artifacts/for-host".to_string(),
                None,
                "invalid_id",
            ),
            (
                Method::GET,
                "/artifacts/for-host/a%20b".to_string(),
                None,
                "invalid_host_id",
            ),
            (
                Method::DELETE,
                format!("/artifacts/{D}/hosts/a%2Fb"),
                None,
                "invalid_host_id",
            ),
            (
                Method::GET,
                format!("/artifacts/{D}"),
                Some("repository=Bad"),
                "invalid_name",
            ),
            (
                Method::DELETE,
                format!("/artifacts/{D}"),
                Some("repository=a&repository=b"),
                "invalid_request",
            ),
            (
                Method::GET,
                "/artifacts".to_string(),
                Some("limit=1&limit=2"),
                "invalid_request",
            ),
            (
                Method::GET,
                "/artifacts".to_string(),
                Some("limit=0"),
                "invalid_request",
            ),
            (
                Method::GET,
                "/artifacts".to_string(),
                Some("cursor=!"),
                "invalid_request",
            ),
            (
                Method::GET,
                "/signing/public-key".to_string(),
                Some("version=x"),
                "invalid_request",
            ),
            (
                Method::GET,
                "/artifacts/%FF".to_string(),
                None,
                "invalid_request",
            ),
        ];
        for (m, p, q, code) in invalid {
            match parse(m.clone(), &p, q) {
                Err(RouteError::Invalid(e)) => assert_eq!(
                    crate::http::error::RestError::from(e).code.as_str(),
                    code,
                    "{m} {p} {q:?}"
                ),
                other => panic!("{m} {p} {q:?}: {other:?}"),
            }
        }
    }

    proptest::proptest! {
        #[test]
        fn any_request_line_parses_or_is_refused_without_panicking(
            tail in "[a-z0-9:%/._ -]{0,90}",
            query in "[a-z0-9=&%/._+-]{0,60}",
            m in 0usize..6,
        ) {
            let methods = [Method::GET, Method::HEAD, Method::POST, Method::DELETE, Method::PUT, Method::PATCH];
            let path = format!("/artifacts{tail}");
            if let Ok(ep) = RestEndpoint::parse(&methods[m], &path, Some(&query)) {
                // A parsed endpoint always names its route and its needs.
                let _ = (ep.route(), ep.needs());
            }
        }
    }
}
