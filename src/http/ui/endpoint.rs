//! The console's routes, in one table: `(method, path, query)` is parsed
//! once into a [`UiEndpoint`] carrying every value the page needs,
//! validated (repository names, digests, host ids, the list filters and
//! cursor); the authorization and the page handlers work from it.

use axum::http::Method;

use crate::artifacts::{ArtifactError, HostId, ListQuery};
use crate::http::endpoint::query::{percent_decode, Query, QueryError};
use crate::http::rest::endpoint::IdRef;
use crate::oci::{Digest, RepoName};

/// Artifacts per page of a list (`limit` may ask for 1..=200).
pub const PAGE_SIZE: usize = 50;
pub const MAX_PAGE_SIZE: usize = 200;
/// Tags per page of a repository.
pub const TAG_PAGE_SIZE: usize = 50;
/// The longest search text.
pub const MAX_SEARCH_CHARS: usize = 128;

/// The list page's search and filters, as the form sent them (empty
/// fields are absent), and the [`ListQuery`] they mean.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Filters {
    /// A part of the artifact's name (its repository).
    pub search: Option<String>,
    pub kind: Option<String>,
    pub architecture: Option<String>,
    /// The exact repository.
    pub repository: Option<String>,
    pub tag: Option<String>,
    pub limit: Option<usize>,
}

impl Filters {
    /// The form fields, to build links to other pages of the same list.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut v = Vec::new();
        let fields = [
            ("q", &self.search),
            ("type", &self.kind),
            ("architecture", &self.architecture),
            ("repository", &self.repository),
            ("tag", &self.tag),
        ];
        for (k, val) in fields {
            if let Some(val) = val {
                v.push((k, val.clone()));
            }
        }
        if let Some(n) = self.limit {
            v.push(("limit", n.to_string()));
        }
        v
    }

    /// Whether `repo` matches the search text.
    pub fn matches_search(&self, repo: &RepoName) -> bool {
        self.search
            .as_deref()
            .is_none_or(|s| repo.as_str().contains(&s.to_ascii_lowercase()))
    }
}

/// One console request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UiEndpoint {
    /// `GET /ui/`: repositories and artifacts, searched and filtered.
    Index { filters: Filters, query: ListQuery },
    /// `GET /ui/artifacts/{id}[?repository=]`
    Artifact { id: IdRef },
    /// `GET /ui/hosts/{host_id}[?cursor=]`
    Host { host: HostId, query: ListQuery },
    /// `GET /ui/repositories/{name}[?last=&cursor=]`
    Repository {
        repo: RepoName,
        /// The tags page starts after this tag.
        last_tag: Option<String>,
        query: ListQuery,
    },
    /// `GET /ui/static/{file}`: the embedded stylesheet and script.
    Static { asset: Asset },
}

/// The embedded files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Asset {
    Css,
    Js,
    Icon,
}

/// Why a request is not a console page.
#[derive(Debug)]
pub enum UiRouteError {
    NoRoute,
    MethodNotAllowed,
    Invalid(ArtifactError),
}

impl From<ArtifactError> for UiRouteError {
    fn from(e: ArtifactError) -> Self {
        UiRouteError::Invalid(e)
    }
}

fn invalid(message: String) -> UiRouteError {
    ArtifactError::InvalidRequest(message).into()
}

fn query(raw: Option<&str>) -> Result<Query, UiRouteError> {
    Query::parse(raw, &[]).map_err(|e| match e {
        QueryError::Repeated { key } => invalid(format!(
            "query parameter {:?} is given more than once",
            key.chars().take(40).collect::<String>()
        )),
        QueryError::TooMany => invalid("too many query parameters".into()),
        QueryError::BadName | QueryError::BadValue { .. } => {
            invalid("malformed query string: not valid percent-encoded UTF-8".into())
        }
    })
}

/// A form field: an empty one is absent.
fn field(q: &Query, k: &str) -> Option<String> {
    q.get(k).filter(|v| !v.is_empty()).map(str::to_string)
}

fn repo_name(s: &str) -> Result<RepoName, UiRouteError> {
    RepoName::parse(s).map_err(|e| {
        ArtifactError::InvalidName(format!(
            "invalid repository {:?}: {e}",
            s.chars().take(300).collect::<String>()
        ))
        .into()
    })
}

/// A page's limit and cursor, with the filters `filters` give.
fn list_query(
    q: &Query,
    filters: &Filters,
    host: Option<HostId>,
) -> Result<ListQuery, UiRouteError> {
    let get = |k: &str| -> Option<String> {
        match k {
            "name" => filters.repository.clone(),
            "type" => filters.kind.clone(),
            "architecture" => filters.architecture.clone(),
            "tag" => filters.tag.clone(),
            "limit" => Some(filters.limit.unwrap_or(PAGE_SIZE).to_string()),
            "cursor" => field(q, "cursor"),
            _ => None,
        }
    };
    let mut lq = ListQuery::parse(&get)?;
    lq.host = host;
    Ok(lq)
}

fn filters(q: &Query) -> Result<Filters, UiRouteError> {
    let search = field(q, "q")
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty());
    if search
        .as_ref()
        .is_some_and(|s| s.chars().count() > MAX_SEARCH_CHARS)
    {
        return Err(invalid(format!(
            "the search text is longer than {MAX_SEARCH_CHARS} characters"
        )));
    }
    let limit = match field(q, "limit") {
        None => None,
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => Some(n),
            _ => {
                return Err(invalid(format!(
                    "invalid limit {:?}: expected 1..={MAX_PAGE_SIZE}",
                    v.chars().take(40).collect::<String>()
                )))
            }
        },
    };
    let repository = field(q, "repository");
    if let Some(r) = &repository {
        repo_name(r)?;
    }
    Ok(Filters {
        search,
        kind: field(q, "type"),
        architecture: field(q, "architecture"),
        repository,
        tag: field(q, "tag"),
        limit,
    })
}

impl UiEndpoint {
    /// Parses a request under `/ui`.
    pub fn parse(
        method: &Method,
        path: &str,
        raw_query: Option<&str>,
    ) -> Result<Self, UiRouteError> {
        let rest = path.strip_prefix("/ui/").ok_or(UiRouteError::NoRoute)?;
        let q = query(raw_query)?;
        let decoded =
            percent_decode(rest).ok_or_else(|| invalid("the path is not UTF-8".into()))?;
        let ep = if decoded.is_empty() {
            let filters = filters(&q)?;
            let query = list_query(&q, &filters, None)?;
            UiEndpoint::Index { filters, query }
        } else if let Some(id) = decoded.strip_prefix("artifacts/") {
            let digest = Digest::parse(id)
                .map_err(|_| ArtifactError::InvalidId(id.chars().take(100).collect()))?;
            let repository = field(&q, "repository").map(|r| repo_name(&r)).transpose()?;
            UiEndpoint::Artifact {
                id: IdRef { digest, repository },
            }
        } else if let Some(h) = decoded.strip_prefix("hosts/") {
            let host = HostId::parse(h)?;
            let query = list_query(&q, &Filters::default(), Some(host.clone()))?;
            UiEndpoint::Host { host, query }
        } else if let Some(r) = decoded.strip_prefix("repositories/") {
            let repo = repo_name(r)?;
            let filters = Filters {
                repository: Some(repo.to_string()),
                ..Filters::default()
            };
            let query = list_query(&q, &filters, None)?;
            UiEndpoint::Repository {
                repo,
                last_tag: field(&q, "last"),
                query,
            }
        } else {
            match decoded.as_str() {
                "static/console.css" => UiEndpoint::Static { asset: Asset::Css },
                "static/console.js" => UiEndpoint::Static { asset: Asset::Js },
                "static/favicon.svg" => UiEndpoint::Static { asset: Asset::Icon },
                _ => return Err(UiRouteError::NoRoute),
            }
        };
        if method != Method::GET && method != Method::HEAD {
            return Err(UiRouteError::MethodNotAllowed);
        }
        Ok(ep)
    }

    /// The route template (the metrics label: never a name or a digest)
    /// and the request log's route name.
    pub fn route(&self) -> (&'static str, &'static str) {
        match self {
            UiEndpoint::Index { .. } => ("/ui/", "ui.index"),
            UiEndpoint::Artifact { .. } => ("/ui/artifacts/{id}", "ui.artifact"),
            UiEndpoint::Host { .. } => ("/ui/hosts/{host_id}", "ui.host"),
            UiEndpoint::Repository { .. } => ("/ui/repositories/{name}", "ui.repository"),
            UiEndpoint::Static { .. } => ("/ui/static/{file}", "ui.static"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae";

    fn parse(path: &str, q: Option<&str>) -> Result<UiEndpoint, UiRouteError> {
        UiEndpoint::parse(&Method::GET, path, q)
    }

    #[test]
    fn pages_parse_into_their_endpoints() {
        let Ok(UiEndpoint::Index { filters, query }) = parse(
            "/ui/",
            Some("q=Prog&type=map&architecture=&repository=team%2Fx&tag=v1&limit=5"),
        ) else {
            panic!("index")
        };
        assert_eq!(filters.search.as_deref(), Some("Prog"));
        assert_eq!(filters.architecture, None, "an empty field is no filter");
        assert_eq!(query.name.as_deref(), Some("team/x"));
        assert_eq!(query.kind.as_deref(), Some("map"));
        assert_eq!(query.tag.as_deref(), Some("v1"));
        assert_eq!(query.limit, 5);
        let Ok(UiEndpoint::Artifact { id }) =
            parse(&format!("/ui/artifacts/{D}"), Some("repository=a/b"))
        else {
            panic!("artifact")
        };
        assert_eq!(id.digest.to_string(), D);
        assert_eq!(id.repository.map(|r| r.to_string()).as_deref(), Some("a/b"));
        let Ok(UiEndpoint::Repository { repo, .. }) = parse("/ui/repositories/team/x", None) else {
            panic!("repository")
        };
        assert_eq!(repo.as_str(), "team/x");
        let Ok(UiEndpoint::Host { host, query }) = parse("/ui/hosts/node-1", None) else {
            panic!("host")
        };
        assert_eq!(query.host, Some(host));
        assert!(matches!(
            parse("/ui/static/console.js", None),
            Ok(UiEndpoint::Static { asset: Asset::Js })
        ));
    }

    #[test]
    fn bad_requests_are_refused() {
        for (p, q) in [
            ("/ui/artifacts/nope", None),
            ("/ui/repositories/Bad Name", None),
            ("/ui/hosts/a b", None),
            ("/ui/", Some("limit=0")),
            ("/ui/", Some("limit=201")),
            ("/ui/", Some("q=a&q=b")),
            ("/ui/", Some("cursor=!")),
            ("/ui/", Some("repository=UPPER")),
            ("/ui/%FF", None),
        ] {
            assert!(
                matches!(parse(p, q), Err(UiRouteError::Invalid(_))),
                "{p} {q:?}"
            );
        }
        for p in ["/ui/nope", "/ui/static/other.js", "/uix"] {
            assert!(matches!(parse(p, None), Err(UiRouteError::NoRoute)), "{p}");
        }
        assert!(matches!(
            UiEndpoint::parse(&Method::POST, "/ui/", None),
            Err(UiRouteError::MethodNotAllowed)
        ));
        let long = "a".repeat(MAX_SEARCH_CHARS + 1);
        assert!(parse("/ui/", Some(&format!("q={long}"))).is_err());
    }
}
