//! Version ordering of artifact versions (semver when both parse, else
//! byte-wise) and kernel versions for requirement checks.

use std::cmp::Ordering;
use std::fmt;

/// Orders two artifact versions: by semver precedence when both parse as
/// semver (ties, which differ only in build metadata, byte-wise),
/// otherwise byte-wise. Across semver and non-semver strings this is not
/// transitive; sort with [`sort_newest_first`], which never relies on it.
pub fn compare_versions(a: &str, b: &str) -> Ordering {
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp_precedence(&y).then_with(|| a.cmp(b)),
        _ => a.cmp(b),
    }
}

/// Sorts items newest version first: the semver versions among themselves
/// by semver, the others byte-wise, the two runs merged by byte-wise order
/// (as [`compare_versions`] orders a mixed pair). A total order, so the
/// result is deterministic whatever mix of versions is given.
pub fn sort_newest_first<T>(items: Vec<T>, version: impl Fn(&T) -> &str) -> Vec<T> {
    let mut semvers = Vec::new();
    let mut others = Vec::new();
    for item in items {
        match semver::Version::parse(version(&item)) {
            Ok(v) => semvers.push((v, item)),
            Err(_) => others.push(item),
        }
    }
    semvers.sort_by(|(x, a), (y, b)| y.cmp_precedence(x).then_with(|| version(b).cmp(version(a))));
    others.sort_by(|a, b| version(b).cmp(version(a)));
    let mut out = Vec::with_capacity(semvers.len() + others.len());
    let mut semvers = semvers.into_iter().map(|(_, item)| item).peekable();
    let mut others = others.into_iter().peekable();
    loop {
        let take_semver = match (semvers.peek(), others.peek()) {
            (Some(s), Some(o)) => version(s) >= version(o),
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let next = if take_semver {
            semvers.next()
        } else {
            others.next()
        };
        out.extend(next);
    }
    out
}

/// A kernel version: one to three numbers (`5.15.0`, `6.1`, `6`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelVersion(pub Vec<u64>);

impl KernelVersion {
    /// The leading `N(.N){0,2}` of a kernel release
    /// (`5.15.0-91-generic` → 5.15.0); `None` when it does not start with
    /// a number.
    pub fn of_release(release: &str) -> Option<KernelVersion> {
        let mut parts = Vec::new();
        let mut rest = release;
        loop {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                break;
            }
            parts.push(rest[..digits].parse::<u64>().ok()?);
            rest = &rest[digits..];
            if parts.len() == 3 {
                break;
            }
            match rest.strip_prefix('.') {
                Some(r) if r.starts_with(|c: char| c.is_ascii_digit()) => rest = r,
                _ => break,
            }
        }
        (!parts.is_empty()).then_some(KernelVersion(parts))
    }

    /// Exactly `N(.N){0,2}` (a requirement bound such as `5.8`).
    pub fn parse_bound(s: &str) -> Option<KernelVersion> {
        let mut parts = Vec::new();
        for part in s.split('.') {
            if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            parts.push(part.parse::<u64>().ok()?);
        }
        (parts.len() <= 3).then_some(KernelVersion(parts))
    }

    fn component(&self, i: usize) -> u64 {
        self.0.get(i).copied().unwrap_or(0)
    }

    /// Compares with missing components as 0 (`5.8` = `5.8.0`).
    pub fn cmp_padded(&self, other: &KernelVersion) -> Ordering {
        let n = self.0.len().max(other.0.len());
        (0..n)
            .map(|i| self.component(i).cmp(&other.component(i)))
            .find(|o| o.is_ne())
            .unwrap_or(Ordering::Equal)
    }

    /// Whether this version is at least `min` (missing components 0).
    pub fn at_least(&self, min: &KernelVersion) -> bool {
        self.cmp_padded(min).is_ge()
    }

    /// Whether this version, truncated to `max`'s component count, is at
    /// most `max` (`6.99` admits every `6.99.x`).
    pub fn at_most(&self, max: &KernelVersion) -> bool {
        let truncated = KernelVersion(self.0.iter().copied().take(max.0.len()).collect());
        truncated.cmp_padded(max).is_le()
    }
}

impl fmt::Display for KernelVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, n) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(".")?;
            }
            write!(f, "{n}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn semver_and_lexical() {
        use Ordering::*;
        let cases = [
            ("1.10.0", "1.9.0", Greater),
            ("1.0.0-rc1", "1.0.0", Less),
            ("1.0.0-alpha", "1.0.0-alpha.1", Less),
            ("1.0.0-alpha.beta", "1.0.0-beta", Less),
            ("1.0.0-beta.2", "1.0.0-beta.11", Less),
            ("1.0.0-rc.1", "1.0.0", Less),
            ("2.0.0", "10.0.0", Less),
            ("v2", "1.0.0", Greater),
            ("v1.10", "v1.9", Less),
            ("1.2", "1.10", Greater),
            ("1.0.0", "1.0.0", Equal),
            ("1.0.0+b", "1.0.0+a", Greater),
            ("latest", "latest", Equal),
        ];
        for (a, b, want) in cases {
            assert_eq!(compare_versions(a, b), want, "{a} vs {b}");
            assert_eq!(compare_versions(b, a), want.reverse(), "{b} vs {a}");
        }
    }

    #[test]
    fn sorting_mixed_versions() {
        let v = vec!["1.9.0", "v2", "1.10.0", "1.0.0-rc1", "1.0.0", "1.9", "abc"];
        let sorted = sort_newest_first(v, |s| s);
        assert_eq!(
            sorted,
            vec!["v2", "abc", "1.9", "1.10.0", "1.9.0", "1.0.0", "1.0.0-rc1"]
        );
    }

    #[test]
    fn kernel_versions() {
        let k = |v: &[u64]| Some(KernelVersion(v.to_vec()));
        assert_eq!(
            KernelVersion::of_release("5.15.0-91-generic"),
            k(&[5, 15, 0])
        );
        assert_eq!(KernelVersion::of_release("6.1"), k(&[6, 1]));
        assert_eq!(KernelVersion::of_release("6.8.0.1"), k(&[6, 8, 0]));
        assert_eq!(KernelVersion::of_release("6.8-rc1"), k(&[6, 8]));
        assert_eq!(KernelVersion::of_release("6."), k(&[6]));
        assert_eq!(KernelVersion::of_release("v6.1"), None);
        assert_eq!(KernelVersion::of_release(""), None);
        assert_eq!(KernelVersion::of_release("99999999999999999999999.1"), None);
        assert_eq!(KernelVersion::parse_bound("5.8"), k(&[5, 8]));
        assert_eq!(KernelVersion::parse_bound("6"), k(&[6]));
        assert_eq!(KernelVersion::parse_bound("5.15.0"), k(&[5, 15, 0]));
        for bad in ["", "5.", ".5", "5.8.0.1", "5.8-rc1", "v5", "5..8", " 5"] {
            assert_eq!(KernelVersion::parse_bound(bad), None, "{bad}");
        }
        assert_eq!(KernelVersion(vec![5, 15, 0]).to_string(), "5.15.0");
        let v = |s: &str| KernelVersion::parse_bound(s).unwrap();
        assert!(v("5.8.0").at_least(&v("5.8")));
        assert!(!v("5.4.0").at_least(&v("5.8")));
        assert!(v("6.99.7").at_most(&v("6.99")));
        assert!(!v("7.0.0").at_most(&v("6.99")));
        assert!(v("6").at_most(&v("6.99")));
        assert!(!v("5.15.1").at_most(&v("5.15.0")));
    }

    proptest! {
        #[test]
        fn sort_is_a_permutation_and_never_panics(v in proptest::collection::vec("[0-9v.a-z\\-+]{0,8}", 0..40)) {
            let mut sorted = sort_newest_first(v.clone(), |s| s.as_str());
            let mut original = v;
            sorted.sort();
            original.sort();
            prop_assert_eq!(sorted, original);
        }

        #[test]
        fn kernel_parsing_never_panics(s in "\\PC{0,40}") {
            let _ = KernelVersion::of_release(&s);
            let _ = KernelVersion::parse_bound(&s);
        }
    }
}
