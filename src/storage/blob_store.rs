//! Which blob store the registry uses, from `BPF_REGISTRY_BLOB_STORE`:
//! `fs` (the default: the data directory) or
//! `s3://<bucket>[/<prefix>]?endpoint=<url>&region=<region>[&allow_http=true]`
//! with the access key in `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
//! Parsed once into [`BlobStoreConfig`]; [`BlobStoreConfig::open`] makes
//! the backend.

use std::path::Path;
use std::sync::Arc;

use super::s3::{S3Credentials, S3Location};
use super::{Backend, FsBackend, S3Backend};

/// The variable this module reads.
pub const VAR: &str = "BPF_REGISTRY_BLOB_STORE";

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BlobStoreConfig {
    /// Objects under the data directory.
    #[default]
    Fs,
    S3(S3Location),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct BlobStoreError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, BlobStoreError> {
    Err(BlobStoreError(message.into()))
}

const QUERY_KEYS: &str = "endpoint, region, allow_http";

impl BlobStoreConfig {
    /// Parses the variable's value; unset or empty means `fs`.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, BlobStoreError> {
        match get(VAR) {
            None => Ok(BlobStoreConfig::Fs),
            Some(v) if v.trim().is_empty() => Ok(BlobStoreConfig::Fs),
            Some(v) => Self::parse(v.trim()),
        }
    }

    pub fn parse(value: &str) -> Result<Self, BlobStoreError> {
        if value == "fs" {
            return Ok(BlobStoreConfig::Fs);
        }
        let Some(rest) = value.strip_prefix("s3://") else {
            return err(format!(
                "expected `fs` or `s3://<bucket>[/<prefix>]?endpoint=<url>&region=<region>`, got {value:?}"
            ));
        };
        let (location, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = location.split_once('/').unwrap_or((location, ""));
        check_bucket(bucket)?;
        let prefix = parse_prefix(prefix)?;
        let mut endpoint = None;
        let mut region = None;
        let mut allow_http = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_encoding::percent_decode_str(v)
                .decode_utf8()
                .map_err(|_| BlobStoreError(format!("query parameter {k}: not UTF-8")))?
                .into_owned();
            let slot = match k {
                "endpoint" => &mut endpoint,
                "region" => &mut region,
                "allow_http" => &mut allow_http,
                _ => {
                    return err(format!(
                        "unknown query parameter {k:?} (accepted: {QUERY_KEYS})"
                    ))
                }
            };
            if slot.replace(v).is_some() {
                return err(format!("query parameter {k} is given twice"));
            }
        }
        let Some(endpoint) = endpoint else {
            return err("endpoint=<url> is required (e.g. endpoint=http://127.0.0.1:3900)");
        };
        let Some(region) = region.filter(|r| !r.is_empty()) else {
            return err("region=<region> is required (Garage: the s3_region of its config)");
        };
        let asked_http = match allow_http.as_deref() {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => return err(format!("allow_http must be true or false, got {other:?}")),
        };
        let is_http = check_endpoint(&endpoint)?;
        let loopback = is_loopback(&endpoint);
        if is_http && !asked_http && !loopback {
            return err(format!(
                "endpoint {endpoint} is plain http to another host: use https, or add allow_http=true"
            ));
        }
        Ok(BlobStoreConfig::S3(S3Location {
            bucket: bucket.to_string(),
            prefix,
            endpoint: endpoint.trim_end_matches('/').to_string(),
            region,
            allow_http: is_http,
            sign_payload: is_http && !loopback,
        }))
    }

    /// Opens the configured backend: the data directory's, or the bucket
    /// (reading the access key from the environment; a missing variable is
    /// an error here, at start-up). No request is made yet: the caller's
    /// `probe_writable` checks the bucket.
    /// `direct_writes`: the filesystem store's upload files are written by
    /// direct I/O where the file system takes it (`BPF_REGISTRY_DIRECT_WRITES`).
    pub fn open(
        &self,
        data_dir: &Path,
        direct_writes: bool,
    ) -> Result<Arc<dyn Backend>, BlobStoreError> {
        self.open_with(data_dir, direct_writes, |k| std::env::var(k).ok())
    }

    /// `open` with the environment given as a lookup.
    pub fn open_with(
        &self,
        data_dir: &Path,
        direct_writes: bool,
        get: impl Fn(&str) -> Option<String>,
    ) -> Result<Arc<dyn Backend>, BlobStoreError> {
        match self {
            BlobStoreConfig::Fs => FsBackend::open(data_dir)
                .map(|b| Arc::new(b.with_direct_writes(direct_writes)) as Arc<dyn Backend>)
                .map_err(|e| BlobStoreError(format!("cannot open {}: {e}", data_dir.display()))),
            BlobStoreConfig::S3(location) => {
                let credentials = S3Credentials::from_lookup(get).map_err(BlobStoreError)?;
                S3Backend::open(location, &credentials)
                    .map(|b| Arc::new(b) as Arc<dyn Backend>)
                    .map_err(|e| BlobStoreError(e.to_string()))
            }
        }
    }
}

/// S3 bucket names: 3-63 of `[a-z0-9.-]`, starting and ending with a letter
/// or digit.
fn check_bucket(bucket: &str) -> Result<(), BlobStoreError> {
    let edge_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok = (3..=63).contains(&bucket.len())
        && bucket
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
        && edge_ok(bucket.bytes().next())
        && edge_ok(bucket.bytes().last());
    if ok {
        Ok(())
    } else {
        err(format!(
            "bucket {bucket:?} is not a valid S3 bucket name (3-63 of a-z 0-9 . -)"
        ))
    }
}

/// The key prefix: `/`-separated components of `[A-Za-z0-9._-]`, none
/// empty, `.` or starting with `.` (the store's internal names do). One
/// trailing `/` is allowed.
fn parse_prefix(prefix: &str) -> Result<String, BlobStoreError> {
    let prefix = prefix.strip_suffix('/').unwrap_or(prefix);
    if prefix.is_empty() {
        return Ok(String::new());
    }
    for comp in prefix.split('/') {
        let ok = !comp.is_empty()
            && !comp.starts_with('.')
            && comp
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return err(format!(
                "key prefix component {comp:?} must be non-empty [A-Za-z0-9._-] not starting with '.'"
            ));
        }
    }
    Ok(prefix.to_string())
}

/// Checks `http(s)://host[:port][/]`; returns whether it is plain http.
fn check_endpoint(endpoint: &str) -> Result<bool, BlobStoreError> {
    let (is_http, rest) = if let Some(r) = endpoint.strip_prefix("http://") {
        (true, r)
    } else if let Some(r) = endpoint.strip_prefix("https://") {
        (false, r)
    } else {
        return err(format!(
            "endpoint {endpoint:?} must start with http:// or https://"
        ));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.is_empty() || authority.contains(['/', '?', '#', '@']) {
        return err(format!(
            "endpoint {endpoint:?} must be scheme://host[:port] (no path, query or user)"
        ));
    }
    Ok(is_http)
}

fn is_loopback(endpoint: &str) -> bool {
    let rest = endpoint
        .strip_prefix("http://")
        .or_else(|| endpoint.strip_prefix("https://"))
        .unwrap_or(endpoint);
    let authority = rest.trim_end_matches('/');
    let host = if let Some(v6) = authority.strip_prefix('[') {
        v6.split(']').next().unwrap_or("")
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(v: &str) -> S3Location {
        match BlobStoreConfig::parse(v) {
            Ok(BlobStoreConfig::S3(l)) => l,
            other => panic!("{v}: {other:?}"),
        }
    }

    fn refused(v: &str) -> String {
        match BlobStoreConfig::parse(v) {
            Err(BlobStoreError(m)) => m,
            Ok(c) => panic!("{v} was accepted: {c:?}"),
        }
    }

    #[test]
    fn fs_is_the_default_and_the_word_fs() {
        assert_eq!(
            BlobStoreConfig::from_lookup(|_| None),
            Ok(BlobStoreConfig::Fs)
        );
        assert_eq!(
            BlobStoreConfig::from_lookup(|_| Some(" ".into())),
            Ok(BlobStoreConfig::Fs)
        );
        assert_eq!(BlobStoreConfig::parse("fs"), Ok(BlobStoreConfig::Fs));
        assert!(refused("file").contains("expected `fs` or `s3://"));
    }

    #[test]
    fn s3_url_gives_bucket_prefix_endpoint_and_region() {
        let l = s3("s3://bpf-registry?endpoint=http://127.0.0.1:3900&region=garage");
        assert_eq!(
            l,
            S3Location {
                bucket: "bpf-registry".into(),
                prefix: String::new(),
                endpoint: "http://127.0.0.1:3900".into(),
                region: "garage".into(),
                allow_http: true,
                sign_payload: false,
            }
        );
        let l = s3("s3://b12/team/prod/?region=eu-west-1&endpoint=https://s3.example.com/");
        assert_eq!(l.prefix, "team/prod");
        assert_eq!(l.endpoint, "https://s3.example.com");
        assert!(!l.allow_http && !l.sign_payload);
        let l = s3("s3://b12?endpoint=http%3A%2F%2Flocalhost%3A3900&region=garage");
        assert_eq!(l.endpoint, "http://localhost:3900");
        assert!(s3("s3://b12?endpoint=http://[::1]:3900&region=r").allow_http);
    }

    #[test]
    fn unknown_or_repeated_query_keys_are_refused_by_name() {
        let m = refused("s3://b12?endpoint=http://127.0.0.1:1&region=r&bucket=x");
        assert!(m.contains("unknown query parameter \"bucket\""), "{m}");
        assert!(m.contains("endpoint, region, allow_http"), "{m}");
        let m = refused("s3://b12?endpoint=http://127.0.0.1:1&region=r&region=s");
        assert!(m.contains("region is given twice"), "{m}");
        let m =
            refused("s3://b12?endpoint=http://127.0.0.1:1&endpoint=http://127.0.0.1:2&region=r");
        assert!(m.contains("endpoint is given twice"), "{m}");
    }

    #[test]
    fn endpoint_and_region_are_required_and_checked() {
        assert!(refused("s3://b12?region=r").contains("endpoint=<url> is required"));
        assert!(refused("s3://b12?endpoint=http://127.0.0.1:1").contains("region=<region>"));
        assert!(refused("s3://b12?endpoint=http://127.0.0.1:1&region=").contains("region="));
        assert!(refused("s3://b12?endpoint=ftp://h&region=r").contains("http:// or https://"));
        assert!(refused("s3://b12?endpoint=http://h:1/path&region=r").contains("no path"));
        assert!(refused("s3://b12?endpoint=http://u@h:1&region=r").contains("no path"));
        assert!(refused("s3://b12?endpoint=https://&region=r").contains("scheme://host"));
    }

    #[test]
    fn plain_http_to_another_host_needs_allow_http() {
        let m = refused("s3://b12?endpoint=http://10.0.0.5:3900&region=r");
        assert!(m.contains("allow_http=true"), "{m}");
        let remote_http = s3("s3://b12?endpoint=http://10.0.0.5:3900&region=r&allow_http=true");
        assert!(remote_http.allow_http && remote_http.sign_payload);
        assert!(
            refused("s3://b12?endpoint=http://10.0.0.5:3900&region=r&allow_http=yes")
                .contains("true or false")
        );
        assert!(!s3("s3://b12?endpoint=https://10.0.0.5&region=r&allow_http=false").allow_http);
    }

    #[test]
    fn bucket_and_prefix_are_validated() {
        let tail = "?endpoint=http://127.0.0.1:1&region=r";
        for bad in [
            "s3://",
            "s3://ab",
            "s3://Bucket",
            "s3://-b12",
            "s3://b12-",
            "s3://b_12",
        ] {
            assert!(
                refused(&format!("{bad}{tail}")).contains("not a valid S3 bucket name"),
                "{bad}"
            );
        }
        for bad in [
            "s3://b12//x",
            "s3://b12/.x",
            "s3://b12/a/../b",
            "s3://b12/a b",
            "s3://b12/a%2Fb",
        ] {
            assert!(
                refused(&format!("{bad}{tail}")).contains("key prefix"),
                "{bad}"
            );
        }
        assert_eq!(s3(&format!("s3://b12/a.b/c_d-1{tail}")).prefix, "a.b/c_d-1");
    }

    #[test]
    fn missing_credentials_are_an_error_when_opening() {
        let config =
            BlobStoreConfig::parse("s3://b12?endpoint=http://127.0.0.1:1&region=r").unwrap();
        let dir = std::env::temp_dir();
        let only_id = |k: &str| (k == "AWS_ACCESS_KEY_ID").then(|| "GK1".to_string());
        let e = config.open_with(&dir, true, only_id).err().unwrap();
        assert!(e.0.contains("AWS_SECRET_ACCESS_KEY must be set"), "{e}");
        let e = config.open_with(&dir, true, |_| None).err().unwrap();
        assert!(e.0.contains("AWS_ACCESS_KEY_ID must be set"), "{e}");
        let both = |k: &str| Some(format!("value-of-{k}"));
        assert!(config.open_with(&dir, true, both).is_ok());
    }
}
