//! Manifest parsing and validation on arbitrary bytes, with and without a
//! Content-Type: never a panic.
#![no_main]

use bpf_registry::oci::ParsedManifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for ct in [
        None,
        Some("application/vnd.oci.image.manifest.v1+json"),
        Some("application/vnd.oci.image.index.v1+json"),
        Some("application/vnd.docker.distribution.manifest.v2+json"),
    ] {
        if let Ok(m) = ParsedManifest::parse(data, ct) {
            let _ = m.blob_references().count();
            let _ = m.effective_artifact_type();
        }
    }
});
