//! Payload packing: recognises a payload that already is a zstd-compressed
//! tar, and packs anything else as a one-entry tar compressed with zstd.
//! Packing is deterministic (fixed mtime, owner and mode) so the same bytes
//! always give the same layer digest.

use std::io::{Read, Write};

const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
const ELF_MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];

/// Whether `bytes` is a zstd stream holding a valid, non-empty tar.
pub fn is_tar_zstd(bytes: &[u8]) -> bool {
    if !bytes.starts_with(&ZSTD_MAGIC) {
        return false;
    }
    let Ok(decoder) = zstd::stream::read::Decoder::new(bytes) else {
        return false;
    };
    let mut archive = tar::Archive::new(decoder);
    let Ok(entries) = archive.entries() else {
        return false;
    };
    let mut count = 0usize;
    for entry in entries {
        let Ok(mut e) = entry else {
            return false;
        };
        // Reading the entry proves the compressed stream is intact.
        if std::io::copy(&mut e, &mut std::io::sink()).is_err() {
            return false;
        }
        count += 1;
    }
    count > 0
}

/// The first regular file in a tar+zstd that is an ELF object, up to
/// `max` bytes (for eBPF inspection of pre-packed payloads).
pub fn first_elf_in_tar_zstd(bytes: &[u8], max: u64) -> Option<Vec<u8>> {
    let decoder = zstd::stream::read::Decoder::new(bytes).ok()?;
    let mut archive = tar::Archive::new(decoder);
    for entry in archive.entries().ok()? {
        let mut e = entry.ok()?;
        if !e.header().entry_type().is_file() || e.size() > max {
            continue;
        }
        let mut head = [0u8; 4];
        if e.read_exact(&mut head).is_err() || head != ELF_MAGIC {
            continue;
        }
        let mut out = head.to_vec();
        e.read_to_end(&mut out).ok()?;
        return Some(out);
    }
    None
}

pub fn is_elf(bytes: &[u8]) -> bool {
    bytes.starts_with(&ELF_MAGIC)
}

/// The file name a payload gets inside the tar.
pub fn entry_name(artifact_name: &str, elf: bool) -> String {
    let base = artifact_name.rsplit('/').next().unwrap_or(artifact_name);
    if elf {
        format!("{base}.o")
    } else {
        format!("{base}.bin")
    }
}

/// Packs `payload` as a one-entry tar named `entry`, compressed with zstd.
pub fn pack_tar_zstd(entry: &str, payload: &[u8]) -> std::io::Result<Vec<u8>> {
    let encoder =
        zstd::stream::write::Encoder::new(Vec::with_capacity(payload.len() / 2 + 1024), 3)?;
    let mut builder = tar::Builder::new(encoder);
    let mut header = tar::Header::new_gnu();
    header.set_size(payload.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    builder.append_data(&mut header, entry, payload)?;
    let mut encoder = builder.into_inner()?;
    encoder.flush()?;
    encoder.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_roundtrip_is_deterministic_and_detected() {
        let a = pack_tar_zstd("x.bin", b"test data").unwrap();
        let b = pack_tar_zstd("x.bin", b"test data").unwrap();
        assert_eq!(a, b);
        assert!(is_tar_zstd(&a));
        assert!(!is_tar_zstd(b"test data"));
        // zstd magic but garbage inside
        let mut bad = ZSTD_MAGIC.to_vec();
        bad.extend_from_slice(&[0u8; 64]);
        assert!(!is_tar_zstd(&bad));
        // valid zstd of non-tar
        let not_tar = zstd::encode_all(&b"hello world, not a tar"[..], 3).unwrap();
        assert!(!is_tar_zstd(&not_tar));
    }

    #[test]
    fn finds_elf_inside() {
        let mut elf = ELF_MAGIC.to_vec();
        elf.extend_from_slice(b"rest");
        let packed = pack_tar_zstd("p.o", &elf).unwrap();
        assert_eq!(first_elf_in_tar_zstd(&packed, 1024), Some(elf));
        let packed = pack_tar_zstd("p.bin", b"nope").unwrap();
        assert_eq!(first_elf_in_tar_zstd(&packed, 1024), None);
    }

    #[test]
    fn entry_names() {
        assert_eq!(entry_name("team/prog", true), "prog.o");
        assert_eq!(entry_name("prog", false), "prog.bin");
    }
}
