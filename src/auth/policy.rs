//! The authorization policy: which users and groups may `pull`, `push` or
//! `delete` on which repositories, and `report`, `read` or `delete` on
//! which fleet hosts, given as name globs, plus what an anonymous caller
//! may do. Read from a TOML file (`BPF_REGISTRY_AUTH_POLICY`); every error
//! names its line.
//!
//! ```toml
//! [groups]
//! ci = ["ci-bot", "alice"]
//! ops = ["olga"]
//!
//! [[grant]]
//! groups = ["ci"]
//! repositories = ["bpf/**"]
//! actions = ["pull", "push"]
//!
//! [[grant]]
//! users = ["*"]                 # every authenticated user
//! repositories = ["**"]
//! actions = ["pull"]
//!
//! [[grant]]
//! users = ["agent-*"]           # one agent user per host...
//! hosts = ["{user}"]            # ...reports its own host only
//! actions = ["report"]          # report implies read
//!
//! [[grant]]
//! groups = ["ops"]
//! hosts = ["edge-*"]
//! actions = ["read", "delete"]
//!
//! [anonymous]
//! repositories = ["public/*"]
//! actions = ["pull"]
//!
//! [[grant]]
//! users = ["prometheus"]
//! metrics = true                # may read GET /metrics
//! ```
//!
//! A grant (and `[anonymous]`) names either `repositories` or `hosts`,
//! never both; its actions must be of that kind: `pull`, `push`, `delete`
//! on repositories, `report` (which implies `read`), `read`, `delete` on
//! hosts, `*` for all of them. `metrics = true` lets a grant's users and
//! groups read `GET /metrics` (besides the `BPF_REGISTRY_METRICS_TOKEN`
//! bearer token); such a grant may name no repositories, hosts and
//! actions. Anonymous callers are never granted metrics.
//!
//! `users` takes names and name globs: `*` alone is every authenticated
//! user, `agent-*` every user whose name starts with `agent-` (in a user
//! name `*` matches any run of characters); group members are plain
//! names.
//!
//! Globs: `*` matches within one path component (no `/`), `**` matches
//! across components (`bpf/**` is everything below `bpf/`, `**` is every
//! repository). Host globs follow the same rules (a host id has no `/`, so
//! both match any run of characters; A-Z a-z 0-9 `.` `_` `:` `-`, case
//! kept as host ids keep it) and may hold `{user}`, replaced by
//! the caller's user name taken literally (a user named `*` matches only
//! the host named `*`); `[anonymous]` cannot use `{user}`. Whatever
//! `[anonymous]` allows, every user may do too. Without a policy file
//! every authenticated user may do everything (metrics and every host
//! action included) and an anonymous caller nothing.

mod actions;
mod glob;

use std::collections::{HashMap, HashSet};

use serde::Deserialize;
use toml::Spanned;

pub use actions::{Action, Actions, HostAction, HostActions};
pub use glob::{Glob, HostGlob, UserGlob, USER_PLACEHOLDER};

/// Repositories and the actions allowed on them.
#[derive(Debug, Clone, Default)]
struct Rule {
    globs: Vec<Glob>,
    actions: Actions,
}

impl Rule {
    fn actions_on(&self, repo: &str) -> Actions {
        if self.globs.iter().any(|g| g.matches(repo)) {
            self.actions
        } else {
            Actions::NONE
        }
    }
}

/// Hosts and the host actions allowed on them.
#[derive(Debug, Clone, Default)]
struct HostRule {
    globs: Vec<HostGlob>,
    actions: HostActions,
}

impl HostRule {
    fn actions_on(&self, user: Option<&str>, host: &str) -> HostActions {
        if self.globs.iter().any(|g| g.matches(user, host)) {
            self.actions
        } else {
            HostActions::NONE
        }
    }
}

/// What a grant or `[anonymous]` allows: a repository rule or a host
/// rule (the other one empty; both only in the built-in default).
#[derive(Debug, Clone, Default)]
struct Rules {
    repos: Rule,
    hosts: HostRule,
}

#[derive(Debug, Clone)]
struct Grant {
    /// Plain names; `*` = every authenticated user.
    users: HashSet<String>,
    /// The `users` entries with a `*` in them (besides `*` itself).
    user_globs: Vec<UserGlob>,
    groups: Vec<String>,
    rules: Rules,
    /// May read `GET /metrics`.
    metrics: bool,
}

/// The parsed policy.
#[derive(Debug, Clone)]
pub struct Policy {
    groups: HashMap<String, HashSet<String>>,
    grants: Vec<Grant>,
    anonymous: Option<Rules>,
    /// True for the built-in default (no policy file).
    default_all: bool,
}

/// A policy file error, with the 1-based line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct PolicyError {
    pub line: usize,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    #[serde(default)]
    groups: HashMap<String, Vec<Spanned<String>>>,
    #[serde(default)]
    grant: Vec<Spanned<GrantFile>>,
    anonymous: Option<Spanned<RuleFile>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GrantFile {
    #[serde(default)]
    users: Vec<Spanned<String>>,
    #[serde(default)]
    groups: Vec<Spanned<String>>,
    #[serde(default)]
    repositories: Vec<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    #[serde(default)]
    actions: Vec<Spanned<String>>,
    #[serde(default)]
    metrics: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    #[serde(default)]
    repositories: Vec<Spanned<String>>,
    #[serde(default)]
    hosts: Vec<Spanned<String>>,
    actions: Vec<Spanned<String>>,
}

fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()
        .get(..end)
        .map(|b| b.iter().filter(|c| **c == b'\n').count())
        .unwrap_or(0)
        + 1
}

/// Builds the rule of a grant or `[anonymous]` (`anonymous`: no
/// `{user}`), each error at its line.
fn rules(
    text: &str,
    repos: &[Spanned<String>],
    hosts: &[Spanned<String>],
    actions: &[Spanned<String>],
    span: std::ops::Range<usize>,
    anonymous: bool,
) -> Result<Rules, PolicyError> {
    let err = |span: std::ops::Range<usize>, message: String| PolicyError {
        line: line_of(text, span.start),
        message,
    };
    if let (Some(_), Some(h)) = (repos.first(), hosts.first()) {
        return Err(err(
            h.span(),
            "name either repositories or hosts, not both (make it two grants)".into(),
        ));
    }
    if repos.is_empty() && hosts.is_empty() {
        return Err(err(
            span,
            "repositories (or hosts) must not be empty".into(),
        ));
    }
    if actions.is_empty() {
        return Err(err(span, "actions must not be empty".into()));
    }
    if hosts.is_empty() {
        let globs = repos
            .iter()
            .map(|g| Glob::parse(g.get_ref()).map_err(|m| err(g.span(), m)))
            .collect::<Result<Vec<_>, _>>()?;
        let mut set = Actions::NONE;
        for a in actions {
            let s = a.get_ref().as_str();
            set = match (s, Action::parse(s)) {
                ("*", _) => Actions::ALL,
                (_, Some(one)) => set.with(one),
                (_, None) if HostAction::parse(s).is_some() => {
                    return Err(err(
                        a.span(),
                        format!("{s:?} is a host action: a grant on repositories takes pull, push, delete or *"),
                    ))
                }
                _ => {
                    return Err(err(
                        a.span(),
                        format!("unknown action {s:?}: expected pull, push, delete or *"),
                    ))
                }
            };
        }
        return Ok(Rules {
            repos: Rule {
                globs,
                actions: set,
            },
            hosts: HostRule::default(),
        });
    }
    let mut globs = Vec::with_capacity(hosts.len());
    for h in hosts {
        let g = HostGlob::parse(h.get_ref()).map_err(|m| err(h.span(), m))?;
        if anonymous && g.has_user() {
            return Err(err(
                h.span(),
                format!(
                    "host glob {:?}: [anonymous] has no user name to put in {USER_PLACEHOLDER}",
                    h.get_ref()
                ),
            ));
        }
        globs.push(g);
    }
    let mut set = HostActions::NONE;
    for a in actions {
        let s = a.get_ref().as_str();
        set = match (s, HostAction::parse(s)) {
            ("*", _) => HostActions::ALL,
            (_, Some(one)) => set.with(one),
            (_, None) if Action::parse(s).is_some() => {
                return Err(err(
                    a.span(),
                    format!("{s:?} is a repository action: a grant on hosts takes report, read, delete or *"),
                ))
            }
            _ => {
                return Err(err(
                    a.span(),
                    format!("unknown action {s:?}: expected report, read, delete or *"),
                ))
            }
        };
    }
    Ok(Rules {
        repos: Rule::default(),
        hosts: HostRule {
            globs,
            actions: set,
        },
    })
}

impl Policy {
    /// The policy without a file: every authenticated user may do
    /// everything; anonymous callers nothing.
    pub fn allow_authenticated() -> Policy {
        Policy {
            groups: HashMap::new(),
            grants: vec![Grant {
                users: HashSet::from(["*".to_string()]),
                user_globs: Vec::new(),
                groups: Vec::new(),
                rules: Rules {
                    repos: Rule {
                        globs: vec![Glob::everything()],
                        actions: Actions::ALL,
                    },
                    hosts: HostRule {
                        globs: vec![HostGlob::everything()],
                        actions: HostActions::ALL,
                    },
                },
                metrics: true,
            }],
            anonymous: None,
            default_all: true,
        }
    }

    /// Whether this is the built-in default.
    pub fn is_default(&self) -> bool {
        self.default_all
    }

    /// Parses a policy file; an error names the line.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let file: PolicyFile = toml::from_str(text).map_err(|e| PolicyError {
            line: e.span().map(|s| line_of(text, s.start)).unwrap_or(1),
            message: e.message().trim().to_string(),
        })?;
        let err = |span: std::ops::Range<usize>, message: String| PolicyError {
            line: line_of(text, span.start),
            message,
        };
        let mut groups = HashMap::new();
        for (name, members) in &file.groups {
            let mut set = HashSet::new();
            for m in members {
                if m.get_ref().is_empty() || m.get_ref().contains(':') {
                    return Err(err(
                        m.span(),
                        format!("group {name:?}: invalid user name {:?}", m.get_ref()),
                    ));
                }
                set.insert(m.get_ref().clone());
            }
            groups.insert(name.clone(), set);
        }
        let mut grants = Vec::new();
        for g in &file.grant {
            let span = g.span();
            let g = g.get_ref();
            if g.users.is_empty() && g.groups.is_empty() {
                return Err(err(
                    span,
                    "a [[grant]] must name users or groups (users = [\"*\"] for every user)".into(),
                ));
            }
            for grp in &g.groups {
                if !groups.contains_key(grp.get_ref()) {
                    return Err(err(
                        grp.span(),
                        format!(
                            "unknown group {:?}: define it under [groups]",
                            grp.get_ref()
                        ),
                    ));
                }
            }
            for u in &g.users {
                if u.get_ref().is_empty() || u.get_ref().contains(':') {
                    return Err(err(
                        u.span(),
                        format!("invalid user name {:?}", u.get_ref()),
                    ));
                }
            }
            // A metrics-only grant names no repositories, hosts or actions.
            let metrics_only = g.metrics
                && g.repositories.is_empty()
                && g.hosts.is_empty()
                && g.actions.is_empty();
            let rules = if metrics_only {
                Rules::default()
            } else {
                rules(text, &g.repositories, &g.hosts, &g.actions, span, false)?
            };
            grants.push(Grant {
                users: g.users.iter().map(|u| u.get_ref().clone()).collect(),
                user_globs: g
                    .users
                    .iter()
                    .filter(|u| u.get_ref() != "*")
                    .filter_map(|u| UserGlob::parse(u.get_ref()))
                    .collect(),
                groups: g.groups.iter().map(|u| u.get_ref().clone()).collect(),
                rules,
                metrics: g.metrics,
            });
        }
        let anonymous = match &file.anonymous {
            None => None,
            Some(a) => {
                let span = a.span();
                let a = a.get_ref();
                Some(rules(
                    text,
                    &a.repositories,
                    &a.hosts,
                    &a.actions,
                    span,
                    true,
                )?)
            }
        };
        Ok(Policy {
            groups,
            grants,
            anonymous,
            default_all: false,
        })
    }

    fn in_grant(&self, g: &Grant, user: &str) -> bool {
        g.users.contains("*")
            || g.users.contains(user)
            || g.user_globs.iter().any(|u| u.matches(user))
            || g.groups.iter().any(|grp| {
                self.groups
                    .get(grp)
                    .is_some_and(|members| members.contains(user))
            })
    }

    /// What `user` (`None`: anonymous) may do on `repo`.
    pub fn actions_for(&self, user: Option<&str>, repo: &str) -> Actions {
        let anon = self
            .anonymous
            .as_ref()
            .map(|r| r.repos.actions_on(repo))
            .unwrap_or_default();
        let Some(user) = user else {
            return anon;
        };
        self.grants
            .iter()
            .filter(|g| self.in_grant(g, user))
            .fold(anon, |acc, g| acc.union(g.rules.repos.actions_on(repo)))
    }

    /// Whether `user` (`None`: anonymous) may do `action` on at least one
    /// repository name.
    pub fn may_somewhere(&self, user: Option<&str>, action: Action) -> bool {
        if self
            .anonymous
            .as_ref()
            .is_some_and(|r| r.repos.actions.contains(action))
        {
            return true;
        }
        let Some(user) = user else {
            return false;
        };
        self.grants
            .iter()
            .any(|g| g.rules.repos.actions.contains(action) && self.in_grant(g, user))
    }

    /// What `user` (`None`: anonymous) may do on the host `host`, `{user}`
    /// in a host glob standing for `user`.
    pub fn host_actions_for(&self, user: Option<&str>, host: &str) -> HostActions {
        let anon = self
            .anonymous
            .as_ref()
            .map(|r| r.hosts.actions_on(None, host))
            .unwrap_or_default();
        let Some(user) = user else {
            return anon;
        };
        self.grants
            .iter()
            .filter(|g| self.in_grant(g, user))
            .fold(anon, |acc, g| {
                acc.union(g.rules.hosts.actions_on(Some(user), host))
            })
    }

    /// Whether `user` (`None`: anonymous) may do `action` on at least one
    /// host id.
    pub fn may_host_somewhere(&self, user: Option<&str>, action: HostAction) -> bool {
        if self
            .anonymous
            .as_ref()
            .is_some_and(|r| r.hosts.actions.contains(action))
        {
            return true;
        }
        let Some(user) = user else {
            return false;
        };
        self.grants
            .iter()
            .any(|g| g.rules.hosts.actions.contains(action) && self.in_grant(g, user))
    }

    /// Whether `user` may read `GET /metrics` (a grant with
    /// `metrics = true` names them or one of their groups).
    pub fn may_read_metrics(&self, user: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.metrics && self.in_grant(g, user))
    }

    /// Whether anonymous callers may push, delete or report anywhere
    /// (worth a warning at start-up).
    pub fn anonymous_may_write(&self) -> bool {
        self.anonymous.as_ref().is_some_and(|r| {
            r.repos.actions.contains(Action::Push)
                || r.repos.actions.contains(Action::Delete)
                || r.hosts.actions.contains(HostAction::Report)
                || r.hosts.actions.contains(HostAction::Delete)
        })
    }

    /// Counts for the start-up log: (groups, grants, anonymous rule).
    pub fn summary(&self) -> (usize, usize, bool) {
        (
            self.groups.len(),
            self.grants.len(),
            self.anonymous.is_some(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = r#"
[groups]
ci = ["ci-bot", "alice"]

[[grant]]
groups = ["ci"]
repositories = ["bpf/**"]
actions = ["pull", "push"]

[[grant]]
users = ["admin"]
repositories = ["**"]
actions = ["*"]

[[grant]]
users = ["*"]
repositories = ["shared/*"]
actions = ["pull"]

[anonymous]
repositories = ["public/*"]
actions = ["pull"]
"#;

    #[test]
    fn grants() {
        let p = Policy::parse(SAMPLE).unwrap();
        let a = |u: Option<&str>, r: &str| p.actions_for(u, r);
        assert_eq!(
            a(Some("alice"), "bpf/x"),
            Actions::NONE.with(Action::Pull).with(Action::Push)
        );
        assert_eq!(a(Some("alice"), "other"), Actions::NONE);
        assert_eq!(a(Some("admin"), "other/x"), Actions::ALL);
        assert_eq!(a(Some("bob"), "shared/x"), Actions::NONE.with(Action::Pull));
        assert_eq!(a(Some("bob"), "public/x"), Actions::NONE.with(Action::Pull));
        assert_eq!(a(None, "public/x"), Actions::NONE.with(Action::Pull));
        assert_eq!(a(None, "shared/x"), Actions::NONE);
        assert!(p.may_somewhere(Some("alice"), Action::Push));
        assert!(!p.may_somewhere(Some("bob"), Action::Push));
        assert!(p.may_somewhere(None, Action::Pull));
        assert!(!p.may_somewhere(None, Action::Push));
        assert!(!p.anonymous_may_write());
    }

    #[test]
    fn default_policy() {
        let p = Policy::allow_authenticated();
        assert_eq!(p.actions_for(Some("anyone"), "a/b/c"), Actions::ALL);
        assert_eq!(p.actions_for(None, "a"), Actions::NONE);
        assert!(p.may_read_metrics("anyone"));
    }

    #[test]
    fn metrics_grants() {
        let p = Policy::parse(
            r#"
[groups]
ops = ["olga"]

[[grant]]
users = ["prometheus"]
metrics = true

[[grant]]
groups = ["ops"]
repositories = ["**"]
actions = ["pull"]
metrics = true

[[grant]]
users = ["alice"]
repositories = ["**"]
actions = ["*"]
"#,
        )
        .unwrap();
        assert!(p.may_read_metrics("prometheus"));
        assert!(p.may_read_metrics("olga"));
        assert!(!p.may_read_metrics("alice"), "actions do not grant metrics");
        assert_eq!(p.actions_for(Some("prometheus"), "x"), Actions::NONE);
        assert!(!p.may_somewhere(Some("prometheus"), Action::Pull));
        assert_eq!(
            p.actions_for(Some("olga"), "x"),
            Actions::NONE.with(Action::Pull)
        );
        // Without metrics, a grant still needs repositories and actions.
        let e = Policy::parse("[[grant]]\nusers = [\"a\"]\n").unwrap_err();
        assert!(e.message.contains("repositories"), "{e}");
        let e = Policy::parse("[[grant]]\nusers = [\"a\"]\nmetrics = false\n").unwrap_err();
        assert!(e.message.contains("repositories"), "{e}");
        // Half a rule beside metrics is still an error.
        let e = Policy::parse("[[grant]]\nusers = [\"a\"]\nmetrics = true\nactions = [\"pull\"]\n")
            .unwrap_err();
        assert!(e.message.contains("repositories"), "{e}");
        // Anonymous callers cannot be granted metrics.
        assert!(Policy::parse(
            "[anonymous]\nrepositories = [\"x\"]\nactions = [\"pull\"]\nmetrics = true\n"
        )
        .is_err());
    }

    #[test]
    fn errors_name_the_line() {
        let e = Policy::parse(
            "[[grant]]\nusers = [\"a\"]\nrepositories = [\"x\"]\nactions = [\"pull\", \"fly\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("fly"));
        let e = Policy::parse(
            "[[grant]]\ngroups = [\"nope\"]\nrepositories = [\"x\"]\nactions = [\"pull\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
        let e = Policy::parse(
            "\n\n[[grant]]\nusers = [\"a\"]\nrepositories = [\"UPPER\"]\nactions = [\"pull\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let e = Policy::parse(
            "\n[anonymous]\nrepositories = [\"x\"]\nactions = [\"pull\"]\ncolour = 1\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 5, "{e}");
        let e = Policy::parse("[[grant]\n").unwrap_err();
        assert_eq!(e.line, 1, "{e}");
        let e = Policy::parse("\n[[grant]]\nrepositories = [\"x\"]\nactions = [\"pull\"]\n")
            .unwrap_err();
        assert_eq!(e.line, 2, "{e}");
    }

    const HOSTS: &str = r#"
[groups]
ops = ["olga"]

[[grant]]
users = ["agent-*", "bob"]
hosts = ["{user}"]
actions = ["report"]

[[grant]]
groups = ["ops"]
hosts = ["edge-*", "core-**"]
actions = ["read", "delete"]

[[grant]]
users = ["alice"]
repositories = ["**"]
actions = ["delete"]

[anonymous]
hosts = ["lab-*"]
actions = ["read"]
"#;

    fn host_set(a: &[HostAction]) -> HostActions {
        a.iter().copied().collect()
    }

    #[test]
    fn host_grants() {
        use HostAction::*;
        let p = Policy::parse(HOSTS).unwrap();
        let h = |u: Option<&str>, host: &str| p.host_actions_for(u, host);
        // {user}: each user reports its own host, and reading comes with it.
        assert_eq!(h(Some("agent-1"), "agent-1"), host_set(&[Report, Read]));
        assert_eq!(h(Some("agent-1"), "agent-2"), HostActions::NONE);
        assert_eq!(h(Some("bob"), "bob"), host_set(&[Report, Read]));
        assert_eq!(h(Some("agent-7"), "agent-7"), host_set(&[Report, Read]));
        assert_eq!(h(Some("agent"), "agent"), HostActions::NONE, "not agent-*");
        assert_eq!(h(Some("carol"), "carol"), HostActions::NONE);
        // A user named `*` gets the host named `*` only.
        let every = Policy::parse(
            "[[grant]]\nusers = [\"*\"]\nhosts = [\"{user}\"]\nactions = [\"report\"]\n",
        )
        .unwrap();
        assert_eq!(
            every.host_actions_for(Some("*"), "*"),
            host_set(&[Report, Read])
        );
        assert_eq!(
            every.host_actions_for(Some("*"), "edge-1"),
            HostActions::NONE
        );
        assert_eq!(
            every.host_actions_for(Some("**"), "edge-1"),
            HostActions::NONE
        );
        assert_eq!(
            every.host_actions_for(Some("carol"), "carol"),
            host_set(&[Report, Read])
        );
        assert_eq!(h(Some("olga"), "edge-1"), host_set(&[Read, Delete]));
        assert_eq!(h(Some("olga"), "core-a.b"), host_set(&[Read, Delete]));
        assert_eq!(h(Some("olga"), "olga"), HostActions::NONE);
        assert_eq!(h(Some("olga"), "other"), HostActions::NONE);
        // A repository grant gives nothing on hosts, and the other way round.
        assert_eq!(h(Some("alice"), "edge-1"), HostActions::NONE);
        assert_eq!(p.actions_for(Some("olga"), "edge-1"), Actions::NONE);
        assert!(!p.may_somewhere(Some("olga"), Action::Delete));
        assert!(p.may_somewhere(Some("alice"), Action::Delete));
        assert!(!p.may_host_somewhere(Some("alice"), Delete));
        // [anonymous]: anonymous callers, and every user too.
        assert_eq!(h(None, "lab-1"), host_set(&[Read]));
        assert_eq!(h(None, "edge-1"), HostActions::NONE);
        assert_eq!(h(Some("alice"), "lab-1"), host_set(&[Read]));
        assert_eq!(h(Some("olga"), "lab-1"), host_set(&[Read]));
        assert!(p.may_host_somewhere(None, Read));
        assert!(!p.may_host_somewhere(None, Report));
        assert!(p.may_host_somewhere(Some("alice"), Read));
        assert!(p.may_host_somewhere(Some("bob"), Report));
        assert!(p.may_host_somewhere(Some("olga"), Delete));
        assert!(!p.may_host_somewhere(Some("bob"), Delete));
        assert!(!p.anonymous_may_write());
    }

    #[test]
    fn user_globs_in_grants() {
        let p = Policy::parse(
            "[[grant]]\nusers = [\"ci-*\", \"alice\"]\nrepositories = [\"**\"]\nactions = [\"pull\"]\n",
        )
        .unwrap();
        let pull = Actions::NONE.with(Action::Pull);
        assert_eq!(p.actions_for(Some("ci-1"), "x"), pull);
        assert_eq!(p.actions_for(Some("alice"), "x"), pull);
        assert_eq!(p.actions_for(Some("ci"), "x"), Actions::NONE);
        assert_eq!(p.actions_for(Some("bob"), "x"), Actions::NONE);
        assert!(p.may_somewhere(Some("ci-2"), Action::Pull));
        assert!(!p.may_somewhere(Some("bob"), Action::Pull));
    }

    #[test]
    fn report_implies_read() {
        use HostAction::*;
        assert_eq!(HostActions::NONE.with(Report), host_set(&[Report, Read]));
        assert!(HostActions::NONE.with(Report).contains(Read));
        assert!(!HostActions::NONE.with(Read).contains(Report));
        assert_eq!(HostActions::ALL.iter().collect::<Vec<_>>(), HostAction::ALL);
        for a in HostAction::ALL {
            assert_eq!(HostAction::parse(a.as_str()), Some(a));
        }
        assert_eq!(HostAction::parse("pull"), None);
        let p = Policy::parse("[[grant]]\nusers = [\"a\"]\nhosts = [\"**\"]\nactions = [\"*\"]\n")
            .unwrap();
        assert_eq!(p.host_actions_for(Some("a"), "x"), HostActions::ALL);
    }

    #[test]
    fn anonymous_hosts() {
        let p = Policy::parse("[anonymous]\nhosts = [\"**\"]\nactions = [\"report\"]\n").unwrap();
        assert!(p.anonymous_may_write());
        assert_eq!(
            p.host_actions_for(None, "x"),
            HostActions::NONE.with(HostAction::Report)
        );
        assert_eq!(p.actions_for(None, "x"), Actions::NONE);
        // {user} means nothing without a user.
        let e =
            Policy::parse("[anonymous]\nactions = [\"read\"]\nhosts = [\"{user}\"]\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        assert!(e.message.contains("{user}"), "{e}");
        // The same kinds rules as a grant.
        let e = Policy::parse(
            "[anonymous]\nrepositories = [\"x\"]\nhosts = [\"y\"]\nactions = [\"pull\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 3, "{e}");
        let e = Policy::parse("[anonymous]\nhosts = [\"y\"]\nactions = [\"pull\"]\n").unwrap_err();
        assert_eq!(e.line, 3, "{e}");
    }

    #[test]
    fn default_policy_hosts() {
        let p = Policy::allow_authenticated();
        assert_eq!(
            p.host_actions_for(Some("anyone"), "a-host"),
            HostActions::ALL
        );
        assert_eq!(p.host_actions_for(None, "a-host"), HostActions::NONE);
        for a in HostAction::ALL {
            assert!(p.may_host_somewhere(Some("anyone"), a));
            assert!(!p.may_host_somewhere(None, a));
        }
        // A policy file grants hosts only where it says so.
        let p = Policy::parse(SAMPLE).unwrap();
        assert_eq!(p.host_actions_for(Some("admin"), "h"), HostActions::NONE);
        assert!(!p.may_host_somewhere(Some("admin"), HostAction::Read));
    }

    #[test]
    fn mixed_grants_are_refused_naming_the_line() {
        // Both repositories and hosts.
        let e = Policy::parse(
            "[[grant]]\nusers = [\"a\"]\nrepositories = [\"x\"]\nhosts = [\"h\"]\nactions = [\"pull\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("not both"), "{e}");
        // Host actions on repositories.
        let e = Policy::parse(
            "[[grant]]\nusers = [\"a\"]\nrepositories = [\"x\"]\nactions = [\"pull\", \"report\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("host action"), "{e}");
        // Repository actions on hosts.
        let e = Policy::parse(
            "\n[[grant]]\nusers = [\"a\"]\nhosts = [\"h\"]\nactions = [\n  \"read\",\n  \"push\",\n]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 7, "{e}");
        assert!(e.message.contains("repository action"), "{e}");
        // Unknown actions, bad host globs.
        let e = Policy::parse("[[grant]]\nusers = [\"a\"]\nhosts = [\"h\"]\nactions = [\"fly\"]\n")
            .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        assert!(e.message.contains("report, read, delete"), "{e}");
        let e = Policy::parse(
            "[[grant]]\nusers = [\"a\"]\nactions = [\"read\"]\nhosts = [\"ok\", \"a/b\"]\n",
        )
        .unwrap_err();
        assert_eq!(e.line, 4, "{e}");
        // `delete` is both kinds: it goes with what the grant names.
        let p = Policy::parse(
            "[[grant]]\nusers = [\"a\"]\nhosts = [\"h\"]\nactions = [\"delete\"]\n[[grant]]\nusers = [\"a\"]\nrepositories = [\"r\"]\nactions = [\"delete\"]\n",
        )
        .unwrap();
        assert_eq!(
            p.host_actions_for(Some("a"), "h"),
            HostActions::NONE.with(HostAction::Delete)
        );
        assert_eq!(p.actions_for(Some("a"), "h"), Actions::NONE);
        assert_eq!(
            p.actions_for(Some("a"), "r"),
            Actions::NONE.with(Action::Delete)
        );
        // metrics beside hosts and actions is fine, half a rule is not.
        let p = Policy::parse(
            "[[grant]]\nusers = [\"m\"]\nmetrics = true\nhosts = [\"h\"]\nactions = [\"read\"]\n",
        )
        .unwrap();
        assert!(p.may_read_metrics("m"));
        let e = Policy::parse("[[grant]]\nusers = [\"m\"]\nmetrics = true\nhosts = [\"h\"]\n")
            .unwrap_err();
        assert!(e.message.contains("actions"), "{e}");
    }
}
