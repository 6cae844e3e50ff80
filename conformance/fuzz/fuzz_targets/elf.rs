//! The eBPF ELF inspector on arbitrary bytes (and on bytes behind an ELF
//! header that claims eBPF, so the section walk runs): never a panic.
#![no_main]

use bpf_registry::artifacts::elf;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = elf::sniff(data);
    let _ = elf::inspect(data);
    if data.len() > 2 {
        let (class, endian) = (1 + (data[0] & 1), 1 + (data[1] & 1));
        let mut obj = vec![0x7f, b'E', b'L', b'F', class, endian, 1, 0];
        obj.extend_from_slice(&[0u8; 8]);
        obj.extend_from_slice(&[1, 0]);
        if endian == 1 {
            obj.extend_from_slice(&247u16.to_le_bytes());
        } else {
            obj.extend_from_slice(&247u16.to_be_bytes());
        }
        obj.extend_from_slice(&data[2..]);
        let _ = elf::inspect(&obj);
    }
});
