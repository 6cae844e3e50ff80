//! The authorization policy: which users and groups may `pull`, `push` or
//! `delete` on which repositories, given as name globs, plus what an
//! anonymous caller may do. Read from a TOML file
//! (`BPF_REGISTRY_AUTH_POLICY`); every error names its line.
//!
//! ```toml
//! [groups]
//! ci = ["ci-bot", "alice"]
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
//! [anonymous]
//! repositories = ["public/*"]
//! actions = ["pull"]
//!
//! [[grant]]
//! users = ["prometheus"]
//! metrics = true                # may read GET /metrics
//! ```
//!
//! `metrics = true` lets a grant's users and groups read `GET /metrics`
//! (besides the `BPF_REGISTRY_METRICS_TOKEN` bearer token); such a grant
//! may name no repositories and actions. Anonymous callers are never
//! granted metrics.
//!
//! Globs: `*` matches within one path component (no `/`), `**` matches
//! across components (`bpf/**` is everything below `bpf/`, `**` is every
//! repository). Whatever `[anonymous]` allows, every user may do too.
//! Without a policy file every authenticated user may do everything
//! (metrics included) and an anonymous caller nothing.

use std::collections::{HashMap, HashSet};
use std::fmt;

use serde::Deserialize;
use toml::Spanned;

/// One of the three things a caller can do to a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Pull,
    Push,
    Delete,
}

impl Action {
    pub const ALL: [Action; 3] = [Action::Pull, Action::Push, Action::Delete];

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pull => "pull",
            Action::Push => "push",
            Action::Delete => "delete",
        }
    }

    pub fn parse(s: &str) -> Option<Action> {
        match s {
            "pull" => Some(Action::Pull),
            "push" => Some(Action::Push),
            "delete" => Some(Action::Delete),
            _ => None,
        }
    }

    fn bit(self) -> u8 {
        match self {
            Action::Pull => 1,
            Action::Push => 2,
            Action::Delete => 4,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of actions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Actions(u8);

impl Actions {
    pub const NONE: Actions = Actions(0);
    pub const ALL: Actions = Actions(7);

    pub fn contains(self, a: Action) -> bool {
        self.0 & a.bit() != 0
    }

    pub fn with(self, a: Action) -> Actions {
        Actions(self.0 | a.bit())
    }

    pub fn union(self, o: Actions) -> Actions {
        Actions(self.0 | o.0)
    }

    pub fn intersect(self, o: Actions) -> Actions {
        Actions(self.0 & o.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// In the fixed order pull, push, delete.
    pub fn iter(self) -> impl Iterator<Item = Action> {
        Action::ALL.into_iter().filter(move |a| self.contains(*a))
    }

    /// `pull,push` (the scope syntax).
    pub fn to_scope_string(self) -> String {
        self.iter()
            .map(Action::as_str)
            .collect::<Vec<_>>()
            .join(",")
    }
}

impl FromIterator<Action> for Actions {
    fn from_iter<I: IntoIterator<Item = Action>>(iter: I) -> Self {
        iter.into_iter().fold(Actions::NONE, Actions::with)
    }
}

/// A repository name glob (`bpf/*`, `team/**`, `**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(Vec<u8>);

impl Glob {
    pub fn parse(s: &str) -> Result<Glob, String> {
        if s.is_empty() || s.len() > 512 {
            return Err(format!("repository glob {s:?} must be 1-512 characters"));
        }
        if let Some(c) = s.chars().find(|c| {
            !(c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, '.' | '_' | '-' | '/' | '*'))
        }) {
            return Err(format!(
                "repository glob {s:?} has the character {c:?}: only a-z 0-9 . _ - / and * are allowed"
            ));
        }
        if s.contains("***") {
            return Err(format!("repository glob {s:?}: use * or **, not ***"));
        }
        Ok(Glob(s.as_bytes().to_vec()))
    }

    /// Whether `name` matches: `*` within a component, `**` across them.
    /// A set-of-positions walk over the pattern: linear in pattern × name,
    /// no backtracking, no indexing that could panic.
    pub fn matches(&self, name: &str) -> bool {
        let n = name.as_bytes();
        // reach[j]: the pattern consumed so far can end just before n[j].
        let mut reach = vec![false; n.len() + 1];
        if let Some(first) = reach.first_mut() {
            *first = true;
        }
        let mut pattern = self.0.as_slice();
        while let Some((&c, rest)) = pattern.split_first() {
            let mut next = vec![false; n.len() + 1];
            if c == b'*' {
                let double = rest.first() == Some(&b'*');
                pattern = if double {
                    rest.get(1..).unwrap_or_default()
                } else {
                    rest
                };
                let mut run = false;
                for (j, slot) in next.iter_mut().enumerate() {
                    run |= reach.get(j).copied().unwrap_or(false);
                    *slot = run;
                    // a single `*` cannot cross a `/`
                    if !double && n.get(j) == Some(&b'/') {
                        run = false;
                    }
                }
            } else {
                pattern = rest;
                for (j, &b) in n.iter().enumerate() {
                    if b == c && reach.get(j).copied().unwrap_or(false) {
                        if let Some(slot) = next.get_mut(j + 1) {
                            *slot = true;
                        }
                    }
                }
            }
            reach = next;
            if !reach.contains(&true) {
                return false;
            }
        }
        reach.last().copied().unwrap_or(false)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.0))
    }
}

/// Repositories and the actions allowed on them.
#[derive(Debug, Clone)]
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

#[derive(Debug, Clone)]
struct Grant {
    /// `*` = every authenticated user.
    users: HashSet<String>,
    groups: Vec<String>,
    rule: Rule,
    /// May read `GET /metrics`.
    metrics: bool,
}

/// The parsed policy.
#[derive(Debug, Clone)]
pub struct Policy {
    groups: HashMap<String, HashSet<String>>,
    grants: Vec<Grant>,
    anonymous: Option<Rule>,
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
    actions: Vec<Spanned<String>>,
    #[serde(default)]
    metrics: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    repositories: Vec<Spanned<String>>,
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

impl Policy {
    /// The policy without a file: every authenticated user may do
    /// everything; anonymous callers nothing.
    pub fn allow_authenticated() -> Policy {
        Policy {
            groups: HashMap::new(),
            grants: vec![Grant {
                users: HashSet::from(["*".to_string()]),
                groups: Vec::new(),
                rule: Rule {
                    globs: vec![Glob(b"**".to_vec())],
                    actions: Actions::ALL,
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
        let rule = |repos: &[Spanned<String>],
                    actions: &[Spanned<String>],
                    span: std::ops::Range<usize>|
         -> Result<Rule, PolicyError> {
            if repos.is_empty() {
                return Err(err(span.clone(), "repositories must not be empty".into()));
            }
            if actions.is_empty() {
                return Err(err(span, "actions must not be empty".into()));
            }
            let globs = repos
                .iter()
                .map(|g| Glob::parse(g.get_ref()).map_err(|m| err(g.span(), m)))
                .collect::<Result<Vec<_>, _>>()?;
            let mut set = Actions::NONE;
            for a in actions {
                let s = a.get_ref().as_str();
                if s == "*" {
                    set = Actions::ALL;
                    continue;
                }
                set = set.with(Action::parse(s).ok_or_else(|| {
                    err(
                        a.span(),
                        format!("unknown action {s:?}: expected pull, push, delete or *"),
                    )
                })?);
            }
            Ok(Rule {
                globs,
                actions: set,
            })
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
            // A metrics-only grant names no repositories and no actions.
            let rule = if g.metrics && g.repositories.is_empty() && g.actions.is_empty() {
                Rule {
                    globs: Vec::new(),
                    actions: Actions::NONE,
                }
            } else {
                rule(&g.repositories, &g.actions, span)?
            };
            grants.push(Grant {
                users: g.users.iter().map(|u| u.get_ref().clone()).collect(),
                groups: g.groups.iter().map(|u| u.get_ref().clone()).collect(),
                rule,
                metrics: g.metrics,
            });
        }
        let anonymous = match &file.anonymous {
            None => None,
            Some(a) => {
                let span = a.span();
                let a = a.get_ref();
                Some(rule(&a.repositories, &a.actions, span)?)
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
            .map(|r| r.actions_on(repo))
            .unwrap_or_default();
        let Some(user) = user else {
            return anon;
        };
        self.grants
            .iter()
            .filter(|g| self.in_grant(g, user))
            .fold(anon, |acc, g| acc.union(g.rule.actions_on(repo)))
    }

    /// Whether `user` (`None`: anonymous) may do `action` on at least one
    /// repository name.
    pub fn may_somewhere(&self, user: Option<&str>, action: Action) -> bool {
        if self
            .anonymous
            .as_ref()
            .is_some_and(|r| r.actions.contains(action))
        {
            return true;
        }
        let Some(user) = user else {
            return false;
        };
        self.grants
            .iter()
            .any(|g| g.rule.actions.contains(action) && self.in_grant(g, user))
    }

    /// Whether `user` may read `GET /metrics` (a grant with
    /// `metrics = true` names them or one of their groups).
    pub fn may_read_metrics(&self, user: &str) -> bool {
        self.grants
            .iter()
            .any(|g| g.metrics && self.in_grant(g, user))
    }

    /// Whether anonymous callers may push or delete anywhere (worth a
    /// warning at start-up).
    pub fn anonymous_may_write(&self) -> bool {
        self.anonymous
            .as_ref()
            .is_some_and(|r| r.actions.contains(Action::Push) || r.actions.contains(Action::Delete))
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

    fn g(s: &str) -> Glob {
        Glob::parse(s).unwrap()
    }

    #[test]
    fn globs() {
        assert!(g("bpf/*").matches("bpf/x"));
        assert!(!g("bpf/*").matches("bpf/x/y"));
        assert!(!g("bpf/*").matches("bpf"));
        assert!(g("bpf/**").matches("bpf/x/y"));
        assert!(g("bpf/**").matches("bpf/x"));
        assert!(!g("bpf/**").matches("bpfx/y"));
        assert!(g("**").matches("a/b/c"));
        assert!(g("*").matches("abc"));
        assert!(!g("*").matches("a/b"));
        assert!(g("a/*/c").matches("a/b/c"));
        assert!(!g("a/*/c").matches("a/b/x/c"));
        assert!(g("a/**/c").matches("a/b/x/c"));
        assert!(g("team-*/prog").matches("team-net/prog"));
        assert!(g("exact").matches("exact"));
        assert!(!g("exact").matches("exactly"));
        assert!(g("*-probe").matches("tcp-probe"));
        assert!(Glob::parse("Bad").is_err());
        assert!(Glob::parse("a***").is_err());
        assert!(Glob::parse("").is_err());
    }

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
}
