//! The REST `POST /artifacts` body decoder (JSON, base64 `data`) and the
//! payload decoder the data goes through (base64 to a spooled layer, the
//! bounded tar.zst walk): never a panic.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use bpf_registry::artifacts::model::CreateRequest;
use bpf_registry::artifacts::pack::{self, ArchiveLimits};
use bpf_registry::artifacts::payload::{prepare_payload, PayloadLimits};
use libfuzzer_sys::fuzz_target;

const LIMITS: ArchiveLimits = ArchiveLimits {
    max_unpacked_bytes: 1 << 20,
    max_entries: 100,
};

/// One spool folder for the run (spool files are unlinked at once).
fn spool() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(format!("bpf-registry-fuzz-spool-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        dir
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<CreateRequest>(data) {
        if let Some(b64) = req.data.as_deref() {
            let text = b64.as_bytes().to_vec();
            let _ = prepare_payload(
                text,
                "fuzz/prog",
                &PayloadLimits::for_artifact_cap(1 << 20),
                spool(),
            );
        }
    }
    let _ = pack::inspect_tar_zstd(data, LIMITS);
});
