//! The fleet's REST routes (`/hosts...`, `/channels...`), parsed once
//! into a [`FleetEndpoint`] with every path and query value validated, and
//! what each needs of the caller. `endpoint` dispatches these prefixes
//! here; the artifact-scoped fleet routes (selectors, rollout) are
//! artifact operations there.

use std::time::Duration;

use axum::http::Method;

use super::endpoint::{segment, IdRef, Query, RouteError};
use crate::artifacts::{ArtifactError, FleetRefusal, HostId};
use crate::auth::{Action, HostAction};
use crate::fleet::selector::Selector;
use crate::fleet::watch::parse_wait;
use crate::oci::{RepoName, Tag};

/// One fleet request, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FleetEndpoint {
    /// `GET /hosts?label=<selector>&limit=&cursor=`
    Hosts {
        selector: Option<Selector>,
        limit: usize,
        cursor: Option<String>,
    },
    /// `/hosts/{host_id}[/...]`
    Host { host: HostId, op: HostOp },
    /// `/channels/{name}/{channel}[/rollback]`
    Channel {
        repo: RepoName,
        channel: Tag,
        op: ChannelOp,
    },
}

/// What is done to a host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostOp {
    /// `PUT /hosts/{host_id}`
    Register,
    /// `GET /hosts/{host_id}`
    Get,
    /// `DELETE /hosts/{host_id}`
    Delete,
    /// `GET /hosts/{host_id}/desired[?wait=]`
    Desired { wait: Option<Duration> },
    /// `GET /hosts/{host_id}/deployments`
    Deployments,
    /// `PUT /hosts/{host_id}/deployments/{artifact_id}[?repository=]`
    Report { id: IdRef },
}

/// What is done to a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelOp {
    Get,
    Set,
    Rollback,
}

/// What a fleet endpoint needs of the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FleetNeeds<'a> {
    /// A host action on the host; with `Some`, also pull on the copy the
    /// id resolves to.
    Host(&'a HostId, HostAction, Option<&'a IdRef>),
    /// A list of hosts, each shown if the caller may read it.
    HostList,
    /// A repository action.
    Repo(&'a RepoName, Action),
}

/// Hosts per page unless `limit` says otherwise.
const DEFAULT_LIMIT: usize = 100;

fn limit(q: &Query) -> Result<usize, RouteError> {
    match q.get("limit") {
        None => Ok(DEFAULT_LIMIT),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=crate::fleet::service::MAX_HOST_PAGE).contains(&n) => Ok(n),
            _ => Err(ArtifactError::InvalidRequest(format!(
                "invalid limit {:?}: 1 to {}",
                v.chars().take(20).collect::<String>(),
                crate::fleet::service::MAX_HOST_PAGE
            ))
            .into()),
        },
    }
}

/// `?wait=`, parsed.
pub(super) fn wait(q: &Query) -> Result<Option<Duration>, RouteError> {
    Ok(q.get("wait").map(|w| parse_wait(&w)).transpose()?)
}

fn cursor(q: &Query) -> Result<Option<String>, RouteError> {
    match q.get("cursor") {
        None => Ok(None),
        Some(c) => HostId::parse(&c).map(|h| Some(h.to_string())).map_err(|_| {
            ArtifactError::InvalidRequest("invalid cursor: pass next_cursor back as it is".into())
                .into()
        }),
    }
}

fn methods_not(allow: &'static str) -> RouteError {
    RouteError::MethodNotAllowed { allow }
}

/// Parses a `/hosts...` path (already split after `/hosts`).
fn parse_hosts(method: &Method, segs: &[&str], q: &Query) -> Result<FleetEndpoint, RouteError> {
    let read = method == Method::GET || method == Method::HEAD;
    let host = |s: &str| -> Result<HostId, RouteError> { Ok(HostId::parse(&segment(s)?)?) };
    Ok(match segs {
        [] if read => FleetEndpoint::Hosts {
            selector: match q.get("label") {
                None => None,
                Some(s) => Some(Selector::parse(&s).map_err(|e| {
                    ArtifactError::fleet(FleetRefusal::InvalidSelector, e.to_string())
                })?),
            },
            limit: limit(q)?,
            cursor: cursor(q)?,
        },
        [] => return Err(methods_not("GET,HEAD")),
        [h] => {
            let op = match *method {
                Method::GET | Method::HEAD => HostOp::Get,
                Method::PUT => HostOp::Register,
                Method::DELETE => HostOp::Delete,
                _ => return Err(methods_not("GET,HEAD,PUT,DELETE")),
            };
            FleetEndpoint::Host { host: host(h)?, op }
        }
        [h, "desired"] if read => FleetEndpoint::Host {
            host: host(h)?,
            op: HostOp::Desired { wait: wait(q)? },
        },
        [h, "deployments"] if read => FleetEndpoint::Host {
            host: host(h)?,
            op: HostOp::Deployments,
        },
        [_, "desired"] | [_, "deployments"] => return Err(methods_not("GET,HEAD")),
        [h, "deployments", id] if method == Method::PUT => FleetEndpoint::Host {
            host: host(h)?,
            op: HostOp::Report {
                id: super::endpoint::id_ref(&segment(id)?, q)?,
            },
        },
        [_, "deployments", _] => return Err(methods_not("PUT")),
        _ => return Err(RouteError::NoRoute),
    })
}

/// Parses a `/channels...` path: the repository is every segment but the
/// channel (and `rollback`), so nested names need no escaping.
fn parse_channels(method: &Method, segs: &[&str]) -> Result<FleetEndpoint, RouteError> {
    let rollback = method == Method::POST && segs.len() >= 3 && segs.last() == Some(&"rollback");
    let (name, channel, op) = if rollback {
        let n = segs.len();
        (&segs[..n - 2], segs[n - 2], ChannelOp::Rollback)
    } else {
        let op = match *method {
            Method::GET | Method::HEAD => ChannelOp::Get,
            Method::PUT => ChannelOp::Set,
            _ if segs.last() == Some(&"rollback") => return Err(methods_not("GET,HEAD,PUT,POST")),
            _ => return Err(methods_not("GET,HEAD,PUT")),
        };
        match segs.split_last() {
            Some((c, name)) if !name.is_empty() => (name, *c, op),
            _ => return Err(RouteError::NoRoute),
        }
    };
    let name: Vec<String> = name.iter().map(|s| segment(s)).collect::<Result<_, _>>()?;
    let name = name.join("/");
    let repo = RepoName::parse(&name).map_err(|e| {
        ArtifactError::InvalidName(format!(
            "invalid name {:?}: {e}",
            name.chars().take(300).collect::<String>()
        ))
    })?;
    let channel = segment(channel)?;
    let channel = Tag::parse(&channel).map_err(|e| {
        ArtifactError::InvalidRequest(format!(
            "invalid channel {:?}: {e}",
            channel.chars().take(130).collect::<String>()
        ))
    })?;
    Ok(FleetEndpoint::Channel { repo, channel, op })
}

impl FleetEndpoint {
    /// Parses `/hosts...` and `/channels...`; `None` for other paths.
    pub fn parse(
        method: &Method,
        path: &str,
        query: Option<&str>,
    ) -> Option<Result<FleetEndpoint, RouteError>> {
        let (hosts, rest) = if let Some(rest) = path.strip_prefix("/hosts") {
            (true, rest)
        } else if let Some(rest) = path.strip_prefix("/channels") {
            (false, rest)
        } else {
            return None;
        };
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        let segs: Vec<&str> = match rest {
            "" => Vec::new(),
            r => r[1..].split('/').collect(),
        };
        if segs.iter().any(|s| s.is_empty()) {
            return Some(Err(RouteError::NoRoute));
        }
        let q = match Query::parse(query) {
            Ok(q) => q,
            Err(e) => return Some(Err(e)),
        };
        Some(if hosts {
            parse_hosts(method, &segs, &q)
        } else if segs.len() < 2 {
            Err(RouteError::NoRoute)
        } else {
            parse_channels(method, &segs)
        })
    }

    pub fn route(&self) -> &'static str {
        match self {
            FleetEndpoint::Hosts { .. } => "rest.hosts.registry",
            FleetEndpoint::Host { op, .. } => match op {
                HostOp::Register => "rest.host.register",
                HostOp::Get => "rest.host.get",
                HostOp::Delete => "rest.host.delete",
                HostOp::Desired { .. } => "rest.host.desired",
                HostOp::Deployments => "rest.host.deployments",
                HostOp::Report { .. } => "rest.host.report",
            },
            FleetEndpoint::Channel { op, .. } => match op {
                ChannelOp::Get => "rest.channel.get",
                ChannelOp::Set => "rest.channel.set",
                ChannelOp::Rollback => "rest.channel.rollback",
            },
        }
    }

    /// The path template (for the metrics).
    pub fn template(&self) -> &'static str {
        match self {
            FleetEndpoint::Hosts { .. } => "/hosts",
            FleetEndpoint::Host { op, .. } => match op {
                HostOp::Register | HostOp::Get | HostOp::Delete => "/hosts/{host_id}",
                HostOp::Desired { .. } => "/hosts/{host_id}/desired",
                HostOp::Deployments => "/hosts/{host_id}/deployments",
                HostOp::Report { .. } => "/hosts/{host_id}/deployments/{artifact_id}",
            },
            FleetEndpoint::Channel { op, .. } => match op {
                ChannelOp::Rollback => "/channels/{name}/{channel}/rollback",
                _ => "/channels/{name}/{channel}",
            },
        }
    }

    pub fn needs(&self) -> FleetNeeds<'_> {
        match self {
            FleetEndpoint::Hosts { .. } => FleetNeeds::HostList,
            FleetEndpoint::Host { host, op } => match op {
                HostOp::Register => FleetNeeds::Host(host, HostAction::Report, None),
                HostOp::Report { id } => FleetNeeds::Host(host, HostAction::Report, Some(id)),
                HostOp::Get | HostOp::Desired { .. } | HostOp::Deployments => {
                    FleetNeeds::Host(host, HostAction::Read, None)
                }
                HostOp::Delete => FleetNeeds::Host(host, HostAction::Delete, None),
            },
            FleetEndpoint::Channel { repo, op, .. } => match op {
                ChannelOp::Get => FleetNeeds::Repo(repo, Action::Pull),
                ChannelOp::Set | ChannelOp::Rollback => FleetNeeds::Repo(repo, Action::Push),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(m: Method, p: &str, q: Option<&str>) -> Result<FleetEndpoint, RouteError> {
        FleetEndpoint::parse(&m, p, q).expect("a fleet path")
    }

    #[test]
    fn fleet_routes_parse() {
        let h = HostId::parse("node-1").unwrap();
        assert_eq!(
            parse(Method::PUT, "/hosts/node-1", None).unwrap(),
            FleetEndpoint::Host {
                host: h.clone(),
                op: HostOp::Register
            }
        );
        assert_eq!(
            parse(Method::GET, "/hosts/node-1/desired", Some("wait=30s")).unwrap(),
            FleetEndpoint::Host {
                host: h.clone(),
                op: HostOp::Desired {
                    wait: Some(Duration::from_secs(30))
                }
            }
        );
        let ch = parse(Method::POST, "/channels/team/tools/stable/rollback", None).unwrap();
        assert_eq!(
            ch,
            FleetEndpoint::Channel {
                repo: RepoName::parse("team/tools").unwrap(),
                channel: Tag::parse("stable").unwrap(),
                op: ChannelOp::Rollback
            }
        );
        // A channel named `rollback` is still a channel for GET and PUT.
        let get = parse(Method::GET, "/channels/team/rollback", None).unwrap();
        assert!(matches!(
            get,
            FleetEndpoint::Channel {
                op: ChannelOp::Get,
                ..
            }
        ));
        assert!(FleetEndpoint::parse(&Method::GET, "/hostsx", None).is_none());
        assert!(FleetEndpoint::parse(&Method::GET, "/artifacts", None).is_none());
    }

    #[test]
    fn bad_fleet_requests_are_refused() {
        let code = |r: Result<FleetEndpoint, RouteError>| match r {
            Err(RouteError::Invalid(e)) => crate::http::error::RestError::from(e).code.as_str(),
            Err(RouteError::NoRoute) => "no_route",
            Err(RouteError::MethodNotAllowed { .. }) => "405",
            Ok(_) => "ok",
        };
        assert_eq!(
            code(parse(Method::GET, "/hosts", Some("label=env%3D%3D%3Dx"))),
            "invalid_selector"
        );
        assert_eq!(
            code(parse(Method::GET, "/hosts/h/desired", Some("wait=61s"))),
            "invalid_wait"
        );
        assert_eq!(
            code(parse(Method::GET, "/hosts/a%20b", None)),
            "invalid_host_id"
        );
        assert_eq!(
            code(parse(Method::GET, "/hosts", Some("limit=0"))),
            "invalid_request"
        );
        assert_eq!(code(parse(Method::POST, "/hosts/h", None)), "405");
        assert_eq!(code(parse(Method::GET, "/hosts/h/nope", None)), "no_route");
        assert_eq!(code(parse(Method::GET, "/channels/x", None)), "no_route");
        assert_eq!(
            code(parse(Method::GET, "/channels/Bad/stable", None)),
            "invalid_name"
        );
        assert_eq!(
            code(parse(Method::PUT, "/channels/a/-bad", None)),
            "invalid_request"
        );
        assert_eq!(code(parse(Method::DELETE, "/channels/a/b", None)), "405");
    }
}
