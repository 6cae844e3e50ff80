//! Digests, repository names, tags, references, host ids, `Range` headers
//! and the `/v2` endpoint parser (path and query string) on arbitrary
//! text: never a panic, whatever parses is valid by construction, and a
//! query that names a parameter twice never parses.
#![no_main]

use bpf_registry::artifacts::model::HostId;
use bpf_registry::http::endpoint::{self, Endpoint};
use bpf_registry::oci::{Digest, Reference, RepoName, Tag};
use bpf_registry::registry::ByteRange;
use libfuzzer_sys::fuzz_target;

const METHODS: [http::Method; 6] = [
    http::Method::GET,
    http::Method::HEAD,
    http::Method::PUT,
    http::Method::POST,
    http::Method::PATCH,
    http::Method::DELETE,
];

/// Paths whose endpoints read query parameters.
const QUERY_PATHS: [&str; 5] = [
    "/v2/_catalog",
    "/v2/a/tags/list",
    "/v2/a/blobs/uploads/",
    "/v2/a/blobs/uploads/0b5f3c2e-8f5e-4c1a-9a53-3d5c1c6d2a10",
    "/v2/a/referrers/sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
];

/// Every parameter name of a query, decoded as the parser decodes it;
/// `None` if some name does not decode.
fn names(query: &str) -> Option<Vec<String>> {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let k = p.split_once('=').map_or(p, |(k, _)| k).replace('+', " ");
            percent_encoding::percent_decode_str(&k)
                .decode_utf8()
                .ok()
                .map(|c| c.into_owned())
        })
        .collect()
}

fn check_valid(e: &Endpoint) {
    if let Some(n) = e.repository() {
        assert!(RepoName::parse(n.as_str()).is_ok());
    }
    if let Endpoint::StartUpload {
        mount: Some(m), ..
    } = e
    {
        if let Some(from) = &m.from {
            assert!(RepoName::parse(from.as_str()).is_ok());
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    if let Ok(d) = Digest::parse(&s) {
        assert_eq!(d.to_string(), s);
    }
    if let Ok(n) = RepoName::parse(&s) {
        assert!(n.as_str().len() <= 255 && !n.as_str().contains(".."));
    }
    let _ = Tag::parse(&s);
    let _ = Reference::parse(&s);
    let _ = HostId::parse(&s);
    if let Ok(Some(r)) = ByteRange::parse(&s) {
        let _ = r.resolve(1000);
    }
    for m in METHODS {
        if let Ok(e) = endpoint::parse(&m, &s, None) {
            check_valid(&e);
        }
        if let Ok(e) = endpoint::parse(&m, &format!("/v2/{s}"), None) {
            check_valid(&e);
        }
    }
    // The input as a query string of every endpoint that reads one.
    let repeated = names(&s).is_some_and(|n| {
        let mut sorted = n.clone();
        sorted.sort();
        sorted.dedup();
        sorted.len() != n.len()
    });
    for path in QUERY_PATHS {
        for m in [http::Method::GET, http::Method::POST, http::Method::PUT] {
            match endpoint::parse(&m, path, Some(&s)) {
                Ok(e) => {
                    assert!(!repeated, "{path}?{s} parsed with a repeated parameter");
                    check_valid(&e);
                }
                Err(e) => assert!(e.code.status().is_client_error()),
            }
        }
    }
});
