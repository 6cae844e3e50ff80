//! The strict query decoder: a query string (or a form body, the same
//! encoding) decoded once, each parameter at most once unless the caller
//! names it repeatable, so no later reader can pick a different value than
//! the one checked. Keys and values are `application/x-www-form-urlencoded`
//! (`+` is a space); malformed escapes, invalid UTF-8 and NUL bytes are
//! refused. Unknown parameters are kept (and ignored by callers).

/// Why a query does not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum QueryError {
    /// A parameter name is not valid percent-encoded UTF-8.
    BadName,
    /// The value of `key` is not valid percent-encoded UTF-8.
    BadValue { key: String },
    /// `key` is given more than once.
    Repeated { key: String },
    /// More than [`MAX_PARAMETERS`] parameters.
    TooMany,
}

/// The most parameters a query (or form) may carry: every endpoint reads
/// a handful; the cap bounds what decoding costs an unauthenticated
/// caller.
pub const MAX_PARAMETERS: usize = 64;

/// A decoded query.
#[derive(Debug, Default)]
pub struct Query(Vec<(String, String)>);

/// Decodes `%XX` escapes; `None` for malformed escapes or a NUL byte.
pub fn percent_decode(s: &str) -> Option<String> {
    let decoded = percent_encoding::percent_decode_str(s).decode_utf8().ok()?;
    (!decoded.contains('\0')).then(|| decoded.into_owned())
}

/// Decodes one `application/x-www-form-urlencoded` key or value (`+` is a
/// space, as in every HTTP library's query parser).
fn form_decode(s: &str) -> Option<String> {
    percent_decode(&s.replace('+', " "))
}

impl Query {
    /// Decodes `raw`; only the keys in `repeatable` may appear more than
    /// once.
    pub fn parse(raw: Option<&str>, repeatable: &[&str]) -> Result<Query, QueryError> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for pair in raw.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            if pairs.len() == MAX_PARAMETERS {
                return Err(QueryError::TooMany);
            }
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let key = form_decode(k).ok_or(QueryError::BadName)?;
            let value = form_decode(v).ok_or_else(|| QueryError::BadValue { key: key.clone() })?;
            if !repeatable.contains(&key.as_str()) && !seen.insert(key.clone()) {
                return Err(QueryError::Repeated { key });
            }
            pairs.push((key, value));
        }
        Ok(Query(pairs))
    }

    /// The value of a parameter given at most once.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a repeatable parameter, in order.
    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_parameter_given_twice_is_refused_unless_repeatable() {
        assert_eq!(
            Query::parse(Some("a=1&a=2"), &[]).unwrap_err(),
            QueryError::Repeated { key: "a".into() }
        );
        let q = Query::parse(Some("scope=x&scope=y+z&service=s"), &["scope"]).unwrap();
        assert_eq!(q.all("scope").collect::<Vec<_>>(), ["x", "y z"]);
        assert_eq!(q.get("service"), Some("s"));
        assert_eq!(
            Query::parse(Some("service=a&scope=x&service=b"), &["scope"]).unwrap_err(),
            QueryError::Repeated {
                key: "service".into()
            }
        );
    }

    #[test]
    fn malformed_escapes_and_nul_are_refused() {
        assert_eq!(
            Query::parse(Some("%ff=1"), &[]).unwrap_err(),
            QueryError::BadName
        );
        assert_eq!(
            Query::parse(Some("a=%00"), &[]).unwrap_err(),
            QueryError::BadValue { key: "a".into() }
        );
        assert!(Query::parse(None, &[]).unwrap().get("a").is_none());
    }

    #[test]
    fn more_than_the_cap_of_parameters_is_refused() {
        let at_cap: Vec<String> = (0..MAX_PARAMETERS).map(|i| format!("k{i}=v")).collect();
        assert!(Query::parse(Some(&at_cap.join("&")), &[]).is_ok());
        let over = format!("{}&one=more", at_cap.join("&"));
        assert_eq!(
            Query::parse(Some(&over), &[]).unwrap_err(),
            QueryError::TooMany
        );
    }
}
