//! Kubernetes label selectors over host labels, and label validation.

use std::collections::{BTreeMap, BTreeSet};

/// Longest selector text accepted, in bytes.
pub const MAX_SELECTOR_BYTES: usize = 4096;
/// Most requirements in one selector.
pub const MAX_REQUIREMENTS: usize = 64;
/// Most labels on one host.
pub const MAX_LABELS: usize = 64;

/// A selector that does not parse; the message says why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct SelectorError(pub String);

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(BTreeSet<String>),
    NotIn(BTreeSet<String>),
    Exists,
    NotExists,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Requirement {
    key: String,
    op: Op,
}

impl Requirement {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        let value = labels.get(&self.key);
        match &self.op {
            Op::Eq(v) => value == Some(v),
            Op::NotEq(v) => value != Some(v),
            Op::In(set) => value.is_some_and(|v| set.contains(v)),
            Op::NotIn(set) => !value.is_some_and(|v| set.contains(v)),
            Op::Exists => value.is_some(),
            Op::NotExists => value.is_none(),
        }
    }
}

/// A parsed label selector: every requirement must hold (an empty
/// selector matches every host).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Selector {
    requirements: Vec<Requirement>,
    text: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token<'a> {
    Word(&'a str),
    Comma,
    Open,
    Close,
    Eq,
    DoubleEq,
    NotEq,
    Bang,
}

impl Token<'_> {
    fn describe(&self) -> String {
        match self {
            Token::Word(w) => format!("{:?}", clip(w)),
            Token::Comma => "\",\"".into(),
            Token::Open => "\"(\"".into(),
            Token::Close => "\")\"".into(),
            Token::Eq => "\"=\"".into(),
            Token::DoubleEq => "\"==\"".into(),
            Token::NotEq => "\"!=\"".into(),
            Token::Bang => "\"!\"".into(),
        }
    }
}

fn clip(s: &str) -> String {
    s.chars().take(80).collect()
}

fn tokenize(text: &str) -> Vec<Token<'_>> {
    let bytes = text.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let next_is_eq = bytes.get(i + 1) == Some(&b'=');
        let (token, len) = match b {
            b',' => (Token::Comma, 1),
            b'(' => (Token::Open, 1),
            b')' => (Token::Close, 1),
            b'=' if next_is_eq => (Token::DoubleEq, 2),
            b'=' => (Token::Eq, 1),
            b'!' if next_is_eq => (Token::NotEq, 2),
            b'!' => (Token::Bang, 1),
            _ => {
                let start = i;
                let mut end = i;
                while end < bytes.len() && !is_delimiter(bytes[end]) {
                    end += 1;
                }
                // Delimiters are ASCII, so `start..end` is on char boundaries.
                (Token::Word(&text[start..end]), end - start)
            }
        };
        out.push(token);
        i += len;
    }
    out
}

fn is_delimiter(b: u8) -> bool {
    b.is_ascii_whitespace() || matches!(b, b',' | b'(' | b')' | b'=' | b'!')
}

struct Parser<'a> {
    tokens: Vec<Token<'a>>,
    pos: usize,
}

impl<'a> Parser<'a> {
    fn peek(&self) -> Option<&Token<'a>> {
        self.tokens.get(self.pos)
    }
    fn next(&mut self) -> Option<Token<'a>> {
        let t = self.tokens.get(self.pos).cloned();
        self.pos += 1;
        t
    }
    fn at_boundary(&self) -> bool {
        matches!(self.peek(), None | Some(Token::Comma))
    }

    fn requirement(&mut self) -> Result<Requirement, SelectorError> {
        match self.next() {
            Some(Token::Bang) => {
                let key = self.key()?;
                self.end_of_requirement()?;
                Ok(Requirement {
                    key,
                    op: Op::NotExists,
                })
            }
            Some(Token::Word(w)) => {
                let key = valid_key(w)?;
                if self.at_boundary() {
                    return Ok(Requirement {
                        key,
                        op: Op::Exists,
                    });
                }
                let op = match self.next() {
                    Some(Token::Eq | Token::DoubleEq) => Op::Eq(self.value()?),
                    Some(Token::NotEq) => Op::NotEq(self.value()?),
                    Some(Token::Word("in")) => Op::In(self.set("in")?),
                    Some(Token::Word("notin")) => Op::NotIn(self.set("notin")?),
                    Some(t) => {
                        return Err(err(format!(
                            "after key {key:?}: expected =, ==, !=, in or notin, found {}",
                            t.describe()
                        )))
                    }
                    None => return Err(err(format!("after key {key:?}: unexpected end"))),
                };
                self.end_of_requirement()?;
                Ok(Requirement { key, op })
            }
            Some(t) => Err(err(format!(
                "expected a label key or \"!\", found {}",
                t.describe()
            ))),
            None => Err(err("expected a label key, found the end".into())),
        }
    }

    fn key(&mut self) -> Result<String, SelectorError> {
        match self.next() {
            Some(Token::Word(w)) => valid_key(w),
            Some(t) => Err(err(format!(
                "expected a label key after \"!\", found {}",
                t.describe()
            ))),
            None => Err(err("expected a label key after \"!\"".into())),
        }
    }

    /// A value after `=`, `==` or `!=`; nothing before `,` or the end is
    /// the empty value.
    fn value(&mut self) -> Result<String, SelectorError> {
        if self.at_boundary() {
            return Ok(String::new());
        }
        match self.next() {
            Some(Token::Word(w)) => valid_value(w),
            Some(t) => Err(err(format!(
                "expected a label value, found {}",
                t.describe()
            ))),
            None => Ok(String::new()),
        }
    }

    fn set(&mut self, op: &str) -> Result<BTreeSet<String>, SelectorError> {
        match self.next() {
            Some(Token::Open) => {}
            Some(t) => {
                return Err(err(format!(
                    "expected \"(\" after {op}, found {}",
                    t.describe()
                )))
            }
            None => return Err(err(format!("expected \"(\" after {op}"))),
        }
        let mut values = BTreeSet::new();
        loop {
            match self.next() {
                Some(Token::Word(w)) => {
                    values.insert(valid_value(w)?);
                }
                Some(Token::Close) if values.is_empty() => {
                    return Err(err(format!("the value set of {op} is empty")))
                }
                Some(t) => return Err(err(format!("expected a value, found {}", t.describe()))),
                None => return Err(err(format!("unclosed value set of {op}"))),
            }
            match self.next() {
                Some(Token::Comma) => continue,
                Some(Token::Close) => return Ok(values),
                Some(t) => {
                    return Err(err(format!(
                        "expected \",\" or \")\" in the value set, found {}",
                        t.describe()
                    )))
                }
                None => return Err(err(format!("unclosed value set of {op}"))),
            }
        }
    }

    fn end_of_requirement(&self) -> Result<(), SelectorError> {
        match self.peek() {
            None | Some(Token::Comma) => Ok(()),
            Some(t) => Err(err(format!(
                "expected \",\" or the end, found {}",
                t.describe()
            ))),
        }
    }
}

fn err(message: String) -> SelectorError {
    SelectorError(format!("invalid selector: {message}"))
}

fn valid_key(k: &str) -> Result<String, SelectorError> {
    validate_label_key(k).map_err(err)?;
    Ok(k.to_string())
}

fn valid_value(v: &str) -> Result<String, SelectorError> {
    validate_label_value(v).map_err(err)?;
    Ok(v.to_string())
}

impl Selector {
    /// Parses Kubernetes label-selector syntax: comma-separated
    /// `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`.
    pub fn parse(text: &str) -> Result<Selector, SelectorError> {
        if text.len() > MAX_SELECTOR_BYTES {
            return Err(err(format!(
                "{} bytes, over the {MAX_SELECTOR_BYTES}-byte limit",
                text.len()
            )));
        }
        let text = text.trim();
        let mut parser = Parser {
            tokens: tokenize(text),
            pos: 0,
        };
        let mut requirements = Vec::new();
        if !parser.tokens.is_empty() {
            loop {
                if requirements.len() == MAX_REQUIREMENTS {
                    return Err(err(format!("more than {MAX_REQUIREMENTS} requirements")));
                }
                requirements.push(parser.requirement()?);
                match parser.next() {
                    None => break,
                    Some(Token::Comma) => continue,
                    Some(t) => {
                        return Err(err(format!(
                            "expected \",\" or the end, found {}",
                            t.describe()
                        )))
                    }
                }
            }
        }
        Ok(Selector {
            requirements,
            text: text.to_string(),
        })
    }

    /// Whether every requirement holds for these labels. `!=` and `notin`
    /// hold when the key is absent.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.requirements.iter().all(|r| r.matches(labels))
    }

    /// The selector text as given, trimmed.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether this selector matches every host.
    pub fn is_empty(&self) -> bool {
        self.requirements.is_empty()
    }
}

fn is_name(s: &str) -> bool {
    let b = s.as_bytes();
    match (b.first(), b.last()) {
        (Some(f), Some(l)) => {
            f.is_ascii_alphanumeric()
                && l.is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        }
        _ => false,
    }
}

fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
                && b[0] != b'-'
                && b[b.len() - 1] != b'-'
        })
}

/// A label key: an optional DNS-subdomain prefix (lower case, at most 253
/// characters) and `/`, then a name of at most 63 characters of
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(p) = prefix {
        if !is_dns_subdomain(p) {
            return Err(format!(
                "label key {:?}: the prefix must be a lower-case DNS subdomain of at most 253 characters",
                clip(key)
            ));
        }
    }
    if name.len() > 63 || !is_name(name) {
        return Err(format!(
            "label key {:?}: the name must be 1-63 characters of [A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?",
            clip(key)
        ));
    }
    Ok(())
}

/// A label value: empty, or at most 63 characters of the name charset.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || (value.len() <= 63 && is_name(value)) {
        Ok(())
    } else {
        Err(format!(
            "label value {:?}: expected empty or 1-63 characters of [A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?",
            clip(value)
        ))
    }
}

/// Host labels: at most 64, every key and value valid.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), String> {
    if labels.len() > MAX_LABELS {
        return Err(format!(
            "{} labels, over the limit of {MAX_LABELS}",
            labels.len()
        ));
    }
    for (k, v) in labels {
        validate_label_key(k)?;
        validate_label_value(v)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn matching_table() {
        let prod_edge = labels(&[("env", "prod"), ("role", "edge")]);
        let canary = labels(&[("env", "prod"), ("role", "core"), ("canary", "")]);
        let empty = labels(&[]);
        let cases: &[(&str, &BTreeMap<String, String>, bool)] = &[
            ("", &empty, true),
            ("   ", &prod_edge, true),
            ("env=prod", &prod_edge, true),
            ("env==prod", &prod_edge, true),
            ("env = prod", &prod_edge, true),
            ("env=dev", &prod_edge, false),
            ("env!=dev", &prod_edge, true),
            ("env!=prod", &prod_edge, false),
            ("env!=prod", &empty, true),
            ("role in (edge,core)", &prod_edge, true),
            ("role in ( edge , core )", &canary, true),
            ("role in (db)", &prod_edge, false),
            ("role in (edge)", &empty, false),
            ("role notin (edge)", &prod_edge, false),
            ("role notin (db)", &prod_edge, true),
            ("role notin (db)", &empty, true),
            ("canary", &canary, true),
            ("canary", &prod_edge, false),
            ("!canary", &prod_edge, true),
            ("!canary", &canary, false),
            ("env=prod,role in (edge,core),!canary", &prod_edge, true),
            ("env=prod,role in (edge,core),!canary", &canary, false),
            ("canary=", &canary, true),
            (
                "example.com/tier=gold",
                &labels(&[("example.com/tier", "gold")]),
                true,
            ),
        ];
        for (text, l, want) in cases {
            let s = Selector::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(s.matches(l), *want, "{text:?} on {l:?}");
        }
    }

    #[test]
    fn text_is_trimmed() {
        assert_eq!(Selector::parse("  env=prod \n").unwrap().text(), "env=prod");
        assert!(Selector::parse("").unwrap().is_empty());
    }

    #[test]
    fn bad_selectors() {
        let long = "a".repeat(MAX_SELECTOR_BYTES + 1);
        let many = vec!["k"; MAX_REQUIREMENTS + 1].join(",");
        let bad = [
            ",",
            "a,",
            ",a",
            "a,,b",
            "a=b=c",
            "a in",
            "a in b",
            "a in (",
            "a in ()",
            "a in (b",
            "a in (b,)",
            "a in (b c)",
            "a notin (b))",
            "!",
            "!a=b",
            "a b",
            "=b",
            "a!",
            "-a=b",
            "a=-b",
            "Example.com/a=b",
            "/a",
            "a/",
            "a/b/c",
            "a=(b)",
            "é=1",
            long.as_str(),
            many.as_str(),
        ];
        for b in bad {
            assert!(Selector::parse(b).is_err(), "{b:?} parsed");
        }
        assert!(Selector::parse(&vec!["k"; MAX_REQUIREMENTS].join(",")).is_ok());
    }

    #[test]
    fn label_validation() {
        assert!(validate_labels(&labels(&[
            ("env", "prod"),
            ("a.b/c_d.e-f", ""),
            ("x", "Y.z")
        ]))
        .is_ok());
        for (k, v) in [
            ("", "x"),
            ("-a", "x"),
            ("a-", "x"),
            ("a", "-x"),
            ("a", "x y"),
            ("UP.case/a", "x"),
            ("a..b/c", "x"),
        ] {
            assert!(validate_labels(&labels(&[(k, v)])).is_err(), "{k:?}={v:?}");
        }
        let name63 = "a".repeat(63);
        assert!(validate_labels(&labels(&[(&name63, &name63)])).is_ok());
        let name64 = "a".repeat(64);
        assert!(validate_labels(&labels(&[(&name64, "x")])).is_err());
        assert!(validate_labels(&labels(&[("x", &name64)])).is_err());
        let prefix = format!(
            "{}.{}.{}.{}/a",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(61)
        );
        assert!(validate_label_key(&prefix).is_ok());
        let prefix = format!(
            "{}.{}.{}.{}/a",
            "a".repeat(63),
            "b".repeat(63),
            "c".repeat(63),
            "d".repeat(62)
        );
        assert!(validate_label_key(&prefix).is_err());
        let many: BTreeMap<String, String> =
            (0..65).map(|i| (format!("k{i}"), String::new())).collect();
        assert!(validate_labels(&many).is_err());
    }

    proptest! {
        #[test]
        fn parsing_never_panics(text in "\\PC{0,200}") {
            let _ = Selector::parse(&text);
        }

        #[test]
        fn parsing_selector_shaped_text_never_panics(
            text in "[a-z!=,() .\\-/]{0,120}(in|notin)?[a-z!=,() ]{0,40}"
        ) {
            if let Ok(s) = Selector::parse(&text) {
                let _ = s.matches(&BTreeMap::new());
                prop_assert_eq!(s.text(), text.trim());
            }
        }
    }
}
