//! Digests, repository names, tags, references, host ids and the `/v2`
//! path parser on arbitrary text: never a panic, and whatever parses is
//! valid by construction.
#![no_main]

use bpf_registry::artifacts::model::HostId;
use bpf_registry::http::endpoint;
use bpf_registry::oci::{Digest, Reference, RepoName, Tag};
use libfuzzer_sys::fuzz_target;

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
    for m in [
        http::Method::GET,
        http::Method::HEAD,
        http::Method::PUT,
        http::Method::POST,
        http::Method::PATCH,
        http::Method::DELETE,
    ] {
        let _ = endpoint::parse(&m, &s);
        let _ = endpoint::parse(&m, &format!("/v2/{s}"));
    }
});
