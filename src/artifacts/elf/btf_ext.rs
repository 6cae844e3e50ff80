//! Reads the header of a `.BTF.ext` section far enough to tell whether it
//! carries CO-RE relocations.
//!
//! The header (`struct btf_ext_header` of libbpf), in the object's byte
//! order: `magic` u16 (0xeB9F), `version` u8, `flags` u8, `hdr_len` u32,
//! `func_info_off`/`func_info_len` u32, `line_info_off`/`line_info_len`
//! u32, and, when `hdr_len` >= 32, `core_relo_off`/`core_relo_len` u32.

use super::Endianness;

/// The `.BTF.ext` magic.
pub const BTF_EXT_MAGIC: u16 = 0xEB9F;

/// Offset of `core_relo_len` in the header.
const CORE_RELO_LEN_AT: usize = 28;

/// Header length from which the header has the CO-RE fields.
const HDR_LEN_WITH_CORE: u32 = 32;

fn array<const N: usize>(data: &[u8], at: usize) -> Option<[u8; N]> {
    data.get(at..at.checked_add(N)?)?.try_into().ok()
}

/// Whether a `.BTF.ext` section's header states a non-empty CO-RE
/// relocation section; a section too short or with another magic has
/// none (the kernel reads nothing of it either).
pub fn has_core_relocations(data: &[u8], endian: Endianness) -> bool {
    let u16_at = |at| {
        array::<2>(data, at).map(|b| match endian {
            Endianness::Little => u16::from_le_bytes(b),
            Endianness::Big => u16::from_be_bytes(b),
        })
    };
    let u32_at = |at| {
        array::<4>(data, at).map(|b| match endian {
            Endianness::Little => u32::from_le_bytes(b),
            Endianness::Big => u32::from_be_bytes(b),
        })
    };
    if u16_at(0) != Some(BTF_EXT_MAGIC) {
        return false;
    }
    match u32_at(4) {
        Some(hdr_len) if hdr_len >= HDR_LEN_WITH_CORE => {
            u32_at(CORE_RELO_LEN_AT).is_some_and(|len| len > 0)
        }
        _ => false,
    }
}

/// A `.BTF.ext` header with this `hdr_len` and `core_relo_len` (for tests).
#[cfg(test)]
#[allow(clippy::as_conversions)]
pub(super) fn header(big: bool, hdr_len: u32, core_relo_len: u32) -> Vec<u8> {
    let u16b = |x: u16| {
        if big {
            x.to_be_bytes()
        } else {
            x.to_le_bytes()
        }
    };
    let u32b = |x: u32| {
        if big {
            x.to_be_bytes()
        } else {
            x.to_le_bytes()
        }
    };
    let mut h = Vec::new();
    h.extend_from_slice(&u16b(BTF_EXT_MAGIC));
    h.push(1);
    h.push(0);
    h.extend_from_slice(&u32b(hdr_len));
    for v in [0, 16, 16, 0, 16, core_relo_len] {
        h.extend_from_slice(&u32b(v));
    }
    h
}

#[cfg(test)]
#[allow(clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn core_relo_len_decides() {
        for (big, endian) in [(false, Endianness::Little), (true, Endianness::Big)] {
            assert!(has_core_relocations(&header(big, 32, 28), endian));
            assert!(!has_core_relocations(&header(big, 32, 0), endian));
            // An older header has no CO-RE fields, whatever follows it.
            assert!(!has_core_relocations(&header(big, 24, 28), endian));
            // The other byte order's magic is not ours.
            let other = if big {
                Endianness::Little
            } else {
                Endianness::Big
            };
            assert!(!has_core_relocations(&header(big, 32, 28), other));
            let full = header(big, 32, 28);
            for len in 0..full.len() {
                assert!(!has_core_relocations(&full[..len], endian), "{len}");
            }
        }
        assert!(!has_core_relocations(&[], Endianness::Little));
    }
}
