//! The REST `POST /artifacts` body decoder (JSON, base64 `data`) and the
//! tar.zst sniffers the payload goes through: never a panic.
#![no_main]

use base64::Engine as _;
use bpf_registry::artifacts::model::CreateRequest;
use bpf_registry::artifacts::pack;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = serde_json::from_slice::<CreateRequest>(data) {
        if let Some(b64) = req.data.as_deref() {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(b64) {
                let _ = pack::is_tar_zstd(&bytes);
                let _ = pack::first_elf_in_tar_zstd(&bytes, 1 << 20);
            }
        }
    }
    let _ = pack::is_tar_zstd(data);
    let _ = pack::first_elf_in_tar_zstd(data, 1 << 20);
});
