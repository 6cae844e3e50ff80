//! The user list: an htpasswd file (`BPF_REGISTRY_AUTH_HTPASSWD`) of
//! `user:hash` lines whose hashes are bcrypt (`$2y$` as written by
//! `htpasswd -B`, or `$2b$`). Any other scheme (MD5 `$apr1$`, SHA `{SHA}`,
//! crypt, plain text) is refused, naming the line. Blank lines and lines
//! starting with `#` are ignored. A hash is never printed.

use std::collections::HashMap;

use sha2::{Digest as _, Sha256};

/// A parsed htpasswd file.
#[derive(Clone, Default)]
pub struct Users {
    entries: HashMap<String, String>,
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the hashes.
        f.debug_struct("Users")
            .field("count", &self.entries.len())
            .finish()
    }
}

/// An htpasswd error, with the 1-based line it is on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct HtpasswdError {
    pub line: usize,
    pub message: String,
}

/// The bcrypt alphabet (`./A-Za-z0-9`).
fn is_bcrypt_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'.' || b == b'/'
}

/// `$2y$NN$` or `$2b$NN$` followed by 53 characters of the bcrypt alphabet,
/// with a cost of 4 to 31.
fn check_bcrypt(hash: &str) -> Result<(), String> {
    let b = hash.as_bytes();
    let scheme_ok = hash.starts_with("$2y$") || hash.starts_with("$2b$");
    if !scheme_ok {
        let scheme = if hash.starts_with("$apr1$") {
            "MD5 ($apr1$)"
        } else if hash.starts_with("{SHA}") {
            "SHA-1 ({SHA})"
        } else if hash.starts_with("$2a$") || hash.starts_with("$2x$") {
            "an old bcrypt variant ($2a$/$2x$)"
        } else if hash.starts_with("$5$") || hash.starts_with("$6$") {
            "SHA-crypt ($5$/$6$)"
        } else {
            "crypt or plain text"
        };
        return Err(format!(
            "the hash is {scheme}; only bcrypt ($2y$ or $2b$, `htpasswd -B`) is accepted"
        ));
    }
    let cost_ok = b.len() == 60
        && b.get(6) == Some(&b'$')
        && std::str::from_utf8(b.get(4..6).unwrap_or_default())
            .ok()
            .and_then(|c| c.parse::<u32>().ok())
            .is_some_and(|c| (4..=31).contains(&c))
        && b.get(7..)
            .unwrap_or_default()
            .iter()
            .all(|c| is_bcrypt_char(*c));
    if !cost_ok {
        return Err("malformed bcrypt hash (expected $2y$NN$ and 53 characters)".into());
    }
    Ok(())
}

impl Users {
    /// Parses an htpasswd file; the first bad line stops it.
    pub fn parse(text: &str) -> Result<Users, HtpasswdError> {
        let mut entries = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let line = i + 1;
            let l = raw.trim();
            if l.is_empty() || l.starts_with('#') {
                continue;
            }
            let err = |message: String| HtpasswdError { line, message };
            let (user, hash) = l
                .split_once(':')
                .ok_or_else(|| err("expected user:hash".into()))?;
            if user.is_empty() || user.len() > 255 || user.chars().any(char::is_control) {
                return Err(err(
                    "the user name must be 1-255 printable characters".into()
                ));
            }
            check_bcrypt(hash).map_err(|m| err(format!("user {user:?}: {m}")))?;
            if entries.insert(user.to_string(), hash.to_string()).is_some() {
                return Err(err(format!("user {user:?} appears twice")));
            }
        }
        Ok(Users { entries })
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn contains(&self, user: &str) -> bool {
        self.entries.contains_key(user)
    }

    /// The stored hash of a user (for the bcrypt check).
    pub fn hash_of(&self, user: &str) -> Option<&str> {
        self.entries.get(user).map(String::as_str)
    }

    /// A short fingerprint of the user's current hash: refresh tokens carry
    /// it, so changing a password revokes them.
    pub fn fingerprint(&self, user: &str) -> Option<String> {
        let h = self.entries.get(user)?;
        let d = Sha256::digest(format!("bpf-registry-refresh\0{user}\0{h}").as_bytes());
        Some(hex::encode(d.get(..12).unwrap_or_default()))
    }

    /// The highest bcrypt cost in the file (the dummy hash checked for an
    /// unknown user uses it, so both take the same time).
    pub fn max_cost(&self) -> u32 {
        self.entries
            .values()
            .filter_map(|h| h.get(4..6).and_then(|c| c.parse::<u32>().ok()))
            .max()
            .unwrap_or(10)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bcrypt_lines() {
        let h = bcrypt::hash("secret", 4).unwrap(); // $2b$
        let y = h.replacen("$2b$", "$2y$", 1);
        let text = format!("# users\n\nalice:{h}\nbob:{y}\n");
        let u = Users::parse(&text).unwrap();
        assert_eq!(u.len(), 2);
        assert!(bcrypt::verify("secret", u.hash_of("bob").unwrap()).unwrap());
        assert_ne!(u.fingerprint("alice"), u.fingerprint("bob"));
        assert_eq!(u.max_cost(), 4);
        assert!(!format!("{u:?}").contains("$2"));
    }

    #[test]
    fn refuses_other_schemes_naming_the_line() {
        let h = bcrypt::hash("x", 4).unwrap();
        for bad in [
            "carol:$apr1$abc$def",
            "carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "carol:plaintext",
            "carol:$2a$04$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234",
            "carol:$2y$99$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234",
            "carol",
            ":$2y$04$abcdefghijklmnopqrstuuabcdefghijklmnopqrstuvwxyz01234",
        ] {
            let text = format!("alice:{h}\n\n{bad}\n");
            let e = Users::parse(&text).unwrap_err();
            assert_eq!(e.line, 3, "{bad}: {e}");
            assert!(!e.message.contains("$apr1$abc"), "{e}");
        }
        let e = Users::parse(&format!("a:{h}\na:{h}\n")).unwrap_err();
        assert_eq!(e.line, 2);
    }
}
