//! Name globs of the policy: [`Glob`] for repositories, [`HostGlob`]
//! (with `{user}`) for fleet hosts, and the one matcher both use.

use std::fmt;

/// One element of a glob: a literal byte, `*` or `**`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Byte(u8),
    Star,
    DoubleStar,
}

/// The elements of glob text already checked for its characters and for
/// `***`.
fn tokens(s: &str) -> Vec<Tok> {
    let mut out = Vec::with_capacity(s.len());
    let mut rest = s.as_bytes();
    while let Some((&c, tail)) = rest.split_first() {
        rest = tail;
        out.push(match c {
            b'*' if rest.first() == Some(&b'*') => {
                rest = rest.get(1..).unwrap_or_default();
                Tok::DoubleStar
            }
            b'*' => Tok::Star,
            c => Tok::Byte(c),
        });
    }
    out
}

/// Whether `name` matches the glob `toks`: `*` within a component, `**`
/// across them. A set-of-positions walk over the pattern: linear in
/// pattern × name, no backtracking, no indexing that could panic.
fn matches_tokens(toks: &[Tok], name: &str) -> bool {
    let n = name.as_bytes();
    // reach[j]: the pattern consumed so far can end just before n[j].
    let mut reach = vec![false; n.len() + 1];
    if let Some(first) = reach.first_mut() {
        *first = true;
    }
    for &t in toks {
        let mut next = vec![false; n.len() + 1];
        match t {
            Tok::Star | Tok::DoubleStar => {
                let mut run = false;
                for (j, slot) in next.iter_mut().enumerate() {
                    run |= reach.get(j).copied().unwrap_or(false);
                    *slot = run;
                    // a single `*` cannot cross a `/`
                    if t == Tok::Star && n.get(j) == Some(&b'/') {
                        run = false;
                    }
                }
            }
            Tok::Byte(c) => {
                for (j, &b) in n.iter().enumerate() {
                    if b == c && reach.get(j).copied().unwrap_or(false) {
                        if let Some(slot) = next.get_mut(j + 1) {
                            *slot = true;
                        }
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

/// A repository name glob (`bpf/*`, `team/**`, `**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob {
    text: String,
    toks: Vec<Tok>,
}

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
        Ok(Glob {
            text: s.to_string(),
            toks: tokens(s),
        })
    }

    /// `**`: every repository.
    pub(super) fn everything() -> Glob {
        Glob {
            text: "**".into(),
            toks: vec![Tok::DoubleStar],
        }
    }

    /// Whether `name` matches: `*` within a component, `**` across them.
    pub fn matches(&self, name: &str) -> bool {
        matches_tokens(&self.toks, name)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A user name glob in a grant's `users` (`agent-*`): `*` (or `**`)
/// matches any run of characters, `/` included (a user name has no path
/// components).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserGlob(Vec<Tok>);

impl UserGlob {
    /// `None` when `s` has no `*`: a plain name, compared as it is.
    pub fn parse(s: &str) -> Option<UserGlob> {
        s.contains('*').then(|| {
            let toks = tokens(s)
                .into_iter()
                .map(|t| match t {
                    Tok::Byte(b) => Tok::Byte(b),
                    Tok::Star | Tok::DoubleStar => Tok::DoubleStar,
                })
                .collect();
            UserGlob(toks)
        })
    }

    pub fn matches(&self, user: &str) -> bool {
        matches_tokens(&self.0, user)
    }
}

/// The placeholder a host glob replaces by the caller's user name.
pub const USER_PLACEHOLDER: &str = "{user}";

/// One element of a host glob: a glob element, or `{user}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostPart {
    Tok(Tok),
    User,
}

/// A host id glob (`edge-*`, `{user}`, `{user}-*`, `**`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostGlob {
    text: String,
    parts: Vec<HostPart>,
}

impl HostGlob {
    pub fn parse(s: &str) -> Result<HostGlob, String> {
        if s.is_empty() || s.len() > 512 {
            return Err(format!("host glob {s:?} must be 1-512 characters"));
        }
        let mut parts = Vec::new();
        for (i, piece) in s.split(USER_PLACEHOLDER).enumerate() {
            if let Some(c) = piece
                .chars()
                .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | ':' | '-' | '*')))
            {
                return Err(format!(
                    "host glob {s:?} has the character {c:?}: only A-Z a-z 0-9 . _ : - and * are allowed, and {USER_PLACEHOLDER}"
                ));
            }
            if piece.contains("***") {
                return Err(format!("host glob {s:?}: use * or **, not ***"));
            }
            if i > 0 {
                parts.push(HostPart::User);
            }
            parts.extend(tokens(piece).into_iter().map(HostPart::Tok));
        }
        Ok(HostGlob {
            text: s.to_string(),
            parts,
        })
    }

    /// `**`: every host.
    pub(super) fn everything() -> HostGlob {
        HostGlob {
            text: "**".into(),
            parts: vec![HostPart::Tok(Tok::DoubleStar)],
        }
    }

    /// Whether the glob holds `{user}`.
    pub fn has_user(&self) -> bool {
        self.parts.contains(&HostPart::User)
    }

    /// Whether `host` matches, `{user}` standing for `user` byte for byte
    /// (its `*` are literal). With `{user}` and no user, nothing matches.
    pub fn matches(&self, user: Option<&str>, host: &str) -> bool {
        let mut toks = Vec::with_capacity(self.parts.len());
        for p in &self.parts {
            match (p, user) {
                (HostPart::Tok(t), _) => toks.push(*t),
                (HostPart::User, Some(u)) => toks.extend(u.bytes().map(Tok::Byte)),
                (HostPart::User, None) => return false,
            }
        }
        matches_tokens(&toks, host)
    }
}

impl fmt::Display for HostGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
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

    #[test]
    fn user_globs() {
        let u = |s: &str| UserGlob::parse(s).unwrap();
        assert!(UserGlob::parse("alice").is_none());
        assert!(u("agent-*").matches("agent-1"));
        assert!(u("agent-*").matches("agent-a/b"));
        assert!(u("agent-*").matches("agent-"));
        assert!(!u("agent-*").matches("agent"));
        assert!(!u("agent-*").matches("xagent-1"));
        assert!(u("*@example.org").matches("bob@example.org"));
        assert!(u("*").matches("Any One"));
    }

    fn h(s: &str) -> HostGlob {
        HostGlob::parse(s).unwrap()
    }

    #[test]
    fn host_globs() {
        assert!(h("edge-*").matches(None, "edge-1"));
        assert!(h("edge-**").matches(None, "edge-1.fra:2"));
        assert!(!h("edge-*").matches(None, "core-1"));
        assert!(h("**").matches(None, "anything"));
        assert!(h("Node-A").matches(None, "Node-A"));
        assert!(
            !h("Node-A").matches(None, "node-a"),
            "host ids keep their case"
        );
        assert!(!h("node").matches(None, "node-1"));
        for bad in ["", "a/b", "a***", "{users}", "{user", "x}", "a b", "h\\*"] {
            assert!(HostGlob::parse(bad).is_err(), "{bad:?}");
        }
        assert!(!h("edge-*").has_user());
        assert!(h("{user}-*").has_user());
    }

    #[test]
    fn user_placeholder() {
        let g = h("{user}");
        assert!(g.matches(Some("agent-1"), "agent-1"));
        assert!(!g.matches(Some("agent-1"), "agent-2"));
        assert!(!g.matches(Some("agent-1"), "agent-10"));
        assert!(!g.matches(None, "agent-1"), "no user, no match");
        let g = h("{user}.*");
        assert!(g.matches(Some("web"), "web.1"));
        assert!(!g.matches(Some("web"), "db.1"));
        let g = h("pre-{user}-{user}");
        assert!(g.matches(Some("x"), "pre-x-x"));
        assert!(!g.matches(Some("x"), "pre-x-y"));
    }

    #[test]
    fn a_user_name_is_literal() {
        let g = h("{user}");
        // A user named `*` or `**` matches only the host spelled so.
        assert!(g.matches(Some("*"), "*"));
        assert!(!g.matches(Some("*"), "node-1"));
        assert!(!g.matches(Some("**"), "node-1"));
        assert!(g.matches(Some("**"), "**"));
        assert!(!g.matches(Some("a*"), "ab"));
        assert!(g.matches(Some("a*"), "a*"));
        // Nor can it bring in a placeholder.
        assert!(g.matches(Some("{user}"), "{user}"));
        assert!(!g.matches(Some("{user}"), "x"));
        // Around the name the glob's own `*` still work.
        let g = h("*-{user}");
        assert!(g.matches(Some("*"), "rack1-*"));
        assert!(!g.matches(Some("*"), "rack1-node"));
    }
}
