//! Reads eBPF ELF object files (the relocatable `.o` files that
//! `clang -target bpf` produces) and reports what they contain: which sections
//! hold programs and what kind of program each one is (named the way libbpf's
//! `SEC()` conventions name them), which functions each of those sections
//! defines, which maps the object declares, the license string, and whether
//! BTF type information is present. The parser is written by hand and checks
//! bounds everywhere. Any input, including truncated, corrupted or hostile
//! bytes, gives back a value or an [`ElfError`]: it never panics, its
//! integer arithmetic never overflows, and the memory it uses is bounded by a
//! small multiple of the input size.

#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::unreachable,
    clippy::todo,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)]

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

mod btf_ext;

/// `e_machine` value of eBPF objects.
pub const EM_BPF: u16 = 247;

/// What an eBPF object file contains, as far as its ELF structure tells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EbpfFacts {
    /// Byte order of the object (`bpfel` objects are little, `bpfeb` big).
    pub endianness: Endianness,
    /// Program sections, in section-header order.
    pub programs: Vec<ProgramSection>,
    /// Map names (symbols in `.maps`, `maps` or `maps/...`), sorted and deduplicated.
    pub maps: Vec<String>,
    /// Contents of the `license` section up to its first NUL, if there is such a section.
    pub license: Option<String>,
    /// A `.BTF` section is present.
    pub btf: bool,
    /// A `.BTF.ext` section is present.
    pub btf_ext: bool,
    /// The `.BTF.ext` section holds CO-RE relocations (its header's
    /// `core_relo_len` is not 0): the object needs the kernel's BTF to load.
    #[serde(default)]
    pub core_relocations: bool,
}

/// One executable section holding one or more eBPF programs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ProgramSection {
    /// The section name, e.g. `kprobe/do_unlinkat`.
    pub section: String,
    /// The program kind derived from the section name, e.g. `kprobe`, `xdp`,
    /// `tracepoint`; `unknown` when the name follows no known convention.
    pub program_type: String,
    /// Names of the `STT_FUNC` symbols defined in the section, ordered by offset.
    pub functions: Vec<String>,
}

/// Byte order of an ELF file; serializes as `"little"` / `"big"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Endianness {
    Little,
    Big,
}

/// Result of a cheap look at the ELF identification and `e_machine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElfKind {
    /// No ELF magic, an invalid class or data encoding, or too short to hold `e_machine`.
    NotElf,
    Elf {
        machine: u16,
        endianness: Endianness,
        class64: bool,
    },
}

/// Why [`inspect`] could not report facts.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file")]
    NotElf,
    #[error("ELF file is not an eBPF object (e_machine {machine}, expected 247)")]
    NotBpf { machine: u16 },
    #[error("malformed ELF file: {0}")]
    Malformed(String),
}

/// Looks only at the first 20 bytes: ELF magic, class, data encoding and `e_machine`.
pub fn sniff(bytes: &[u8]) -> ElfKind {
    if bytes.get(..ELF_MAGIC.len()) != Some(ELF_MAGIC.as_slice()) {
        return ElfKind::NotElf;
    }
    let endianness = match bytes.get(EI_DATA) {
        Some(&ELFDATA2LSB) => Endianness::Little,
        Some(&ELFDATA2MSB) => Endianness::Big,
        _ => return ElfKind::NotElf,
    };
    let class64 = match bytes.get(EI_CLASS) {
        Some(&ELFCLASS32) => false,
        Some(&ELFCLASS64) => true,
        _ => return ElfKind::NotElf,
    };
    let machine = match bytes.get(E_MACHINE..E_MACHINE_END) {
        Some(&[a, b]) => endianness.u16([a, b]),
        _ => return ElfKind::NotElf,
    };
    ElfKind::Elf {
        machine,
        endianness,
        class64,
    }
}

/// Parses an eBPF object and reports its [`EbpfFacts`].
///
/// Returns [`ElfError::NotElf`] for input without the ELF magic,
/// [`ElfError::NotBpf`] for an ELF file whose `e_machine` is not [`EM_BPF`],
/// and [`ElfError::Malformed`] for any structural problem (including an ELF
/// magic followed by an invalid or truncated identification).
pub fn inspect(bytes: &[u8]) -> Result<EbpfFacts, ElfError> {
    match sniff(bytes) {
        ElfKind::NotElf if bytes.starts_with(&ELF_MAGIC) => Err(malformed(
            "ELF magic present but the identification (class, data encoding, e_machine) \
             is invalid or truncated",
        )),
        ElfKind::NotElf => Err(ElfError::NotElf),
        ElfKind::Elf { machine, .. } if machine != EM_BPF => Err(ElfError::NotBpf { machine }),
        ElfKind::Elf {
            endianness,
            class64,
            ..
        } => parse(View {
            data: bytes,
            endian: endianness,
            class64,
        }),
    }
}

// ---------------------------------------------------------------------------
// Program kinds from section names (libbpf `section_defs`).
// ---------------------------------------------------------------------------

/// `(section name prefix, program kind)`. A name matches a prefix when it is
/// the prefix itself or the prefix followed by `/` (libbpf's `SEC("type+")`
/// rule). Spelling aliases fold into one kind: `tp` → `tracepoint`, `raw_tp`
/// → `raw_tracepoint`, `classifier` → `tc`, `tc/ingress|egress` → `tcx`,
/// sleepable `.s` variants → their base kind, `xdp.frags` and the devmap/cpumap
/// forms → `xdp`. The first matching entry wins.
const SECTION_KINDS: &[(&str, &str)] = &[
    ("socket", "socket"),
    ("sk_reuseport", "sk_reuseport"),
    ("kprobe", "kprobe"),
    ("kretprobe", "kretprobe"),
    ("uprobe", "uprobe"),
    ("uprobe.s", "uprobe"),
    ("uretprobe", "uretprobe"),
    ("uretprobe.s", "uretprobe"),
    ("kprobe.multi", "kprobe.multi"),
    ("kretprobe.multi", "kretprobe.multi"),
    ("kprobe.session", "kprobe.session"),
    ("uprobe.multi", "uprobe.multi"),
    ("uprobe.multi.s", "uprobe.multi"),
    ("uretprobe.multi", "uretprobe.multi"),
    ("uretprobe.multi.s", "uretprobe.multi"),
    ("uprobe.session", "uprobe.session"),
    ("uprobe.session.s", "uprobe.session"),
    ("ksyscall", "ksyscall"),
    ("kretsyscall", "kretsyscall"),
    ("usdt", "usdt"),
    ("usdt.s", "usdt"),
    // Must precede "tc", whose "tc/..." form they would otherwise match.
    ("tc/ingress", "tcx"),
    ("tc/egress", "tcx"),
    ("tcx", "tcx"),
    ("tc", "tc"),
    ("classifier", "tc"),
    ("action", "action"),
    ("netkit", "netkit"),
    ("tracepoint", "tracepoint"),
    ("tp", "tracepoint"),
    ("raw_tracepoint", "raw_tracepoint"),
    ("raw_tp", "raw_tracepoint"),
    ("raw_tracepoint.w", "raw_tracepoint.w"),
    ("raw_tp.w", "raw_tracepoint.w"),
    ("tp_btf", "tp_btf"),
    ("fentry", "fentry"),
    ("fentry.s", "fentry"),
    ("fexit", "fexit"),
    ("fexit.s", "fexit"),
    ("fmod_ret", "fmod_ret"),
    ("fmod_ret.s", "fmod_ret"),
    ("freplace", "freplace"),
    ("lsm", "lsm"),
    ("lsm.s", "lsm"),
    ("lsm_cgroup", "lsm_cgroup"),
    ("iter", "iter"),
    ("iter.s", "iter"),
    ("syscall", "syscall"),
    ("xdp", "xdp"),
    ("xdp.frags", "xdp"),
    ("perf_event", "perf_event"),
    ("lwt_in", "lwt_in"),
    ("lwt_out", "lwt_out"),
    ("lwt_xmit", "lwt_xmit"),
    ("lwt_seg6local", "lwt_seg6local"),
    ("sockops", "sockops"),
    ("sk_skb", "sk_skb"),
    ("sk_msg", "sk_msg"),
    ("lirc_mode2", "lirc_mode2"),
    ("flow_dissector", "flow_dissector"),
    ("cgroup_skb", "cgroup_skb"),
    ("cgroup/skb", "cgroup_skb"),
    ("cgroup/sock_create", "cgroup_sock"),
    ("cgroup/sock_release", "cgroup_sock"),
    ("cgroup/sock", "cgroup_sock"),
    ("cgroup/post_bind4", "cgroup_sock"),
    ("cgroup/post_bind6", "cgroup_sock"),
    ("cgroup/bind4", "cgroup_sock_addr"),
    ("cgroup/bind6", "cgroup_sock_addr"),
    ("cgroup/connect4", "cgroup_sock_addr"),
    ("cgroup/connect6", "cgroup_sock_addr"),
    ("cgroup/connect_unix", "cgroup_sock_addr"),
    ("cgroup/sendmsg4", "cgroup_sock_addr"),
    ("cgroup/sendmsg6", "cgroup_sock_addr"),
    ("cgroup/sendmsg_unix", "cgroup_sock_addr"),
    ("cgroup/recvmsg4", "cgroup_sock_addr"),
    ("cgroup/recvmsg6", "cgroup_sock_addr"),
    ("cgroup/recvmsg_unix", "cgroup_sock_addr"),
    ("cgroup/getpeername4", "cgroup_sock_addr"),
    ("cgroup/getpeername6", "cgroup_sock_addr"),
    ("cgroup/getpeername_unix", "cgroup_sock_addr"),
    ("cgroup/getsockname4", "cgroup_sock_addr"),
    ("cgroup/getsockname6", "cgroup_sock_addr"),
    ("cgroup/getsockname_unix", "cgroup_sock_addr"),
    ("cgroup/sysctl", "cgroup_sysctl"),
    ("cgroup/getsockopt", "cgroup_sockopt"),
    ("cgroup/setsockopt", "cgroup_sockopt"),
    ("cgroup/dev", "cgroup_device"),
    ("struct_ops", "struct_ops"),
    ("struct_ops.s", "struct_ops"),
    ("sk_lookup", "sk_lookup"),
    ("netfilter", "netfilter"),
];

/// Program kind for an executable section name; `cgroup` for an unlisted
/// `cgroup/...` hook and `unknown` for anything else.
fn program_type(section: &str) -> &'static str {
    let matches = |prefix: &str| {
        section
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    };
    if let Some((_, kind)) = SECTION_KINDS.iter().find(|(prefix, _)| matches(prefix)) {
        kind
    } else if section.starts_with("cgroup/") {
        "cgroup"
    } else {
        "unknown"
    }
}

// ---------------------------------------------------------------------------
// ELF constants and layouts.
// ---------------------------------------------------------------------------

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const EI_CLASS: usize = 4;
const EI_DATA: usize = 5;
const E_MACHINE: usize = 18;
const E_MACHINE_END: usize = 20;
const ELFCLASS32: u8 = 1;
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const ELFDATA2MSB: u8 = 2;

const SHT_NULL: u32 = 0;
const SHT_PROGBITS: u32 = 1;
const SHT_SYMTAB: u32 = 2;
const SHT_STRTAB: u32 = 3;
const SHT_NOBITS: u32 = 8;
const SHT_SYMTAB_SHNDX: u32 = 18;
const SHF_EXECINSTR: u64 = 0x4;

const SHN_UNDEF: u16 = 0;
const SHN_LORESERVE: u16 = 0xff00;
const SHN_XINDEX: u16 = 0xffff;

const STT_SECTION: u8 = 3;
const STT_FILE: u8 = 4;
const STT_FUNC: u8 = 2;

/// Where the fields this parser needs sit, per ELF class.
struct Layout {
    ehdr_size: usize,
    shdr_size: usize,
    sym_size: usize,
    e_shoff: usize,
    e_shentsize: usize,
    e_shnum: usize,
    e_shstrndx: usize,
}

const LAYOUT32: Layout = Layout {
    ehdr_size: 52,
    shdr_size: 40,
    sym_size: 16,
    e_shoff: 32,
    e_shentsize: 46,
    e_shnum: 48,
    e_shstrndx: 50,
};

const LAYOUT64: Layout = Layout {
    ehdr_size: 64,
    shdr_size: 64,
    sym_size: 24,
    e_shoff: 40,
    e_shentsize: 58,
    e_shnum: 60,
    e_shstrndx: 62,
};

impl Endianness {
    fn u16(self, b: [u8; 2]) -> u16 {
        match self {
            Endianness::Little => u16::from_le_bytes(b),
            Endianness::Big => u16::from_be_bytes(b),
        }
    }
    fn u32(self, b: [u8; 4]) -> u32 {
        match self {
            Endianness::Little => u32::from_le_bytes(b),
            Endianness::Big => u32::from_be_bytes(b),
        }
    }
    fn u64(self, b: [u8; 8]) -> u64 {
        match self {
            Endianness::Little => u64::from_le_bytes(b),
            Endianness::Big => u64::from_be_bytes(b),
        }
    }
}

fn malformed(reason: impl Into<String>) -> ElfError {
    ElfError::Malformed(reason.into())
}

fn to_usize(value: u64, what: &str) -> Result<usize, ElfError> {
    usize::try_from(value).map_err(|_| malformed(format!("{what} {value} does not fit in memory")))
}

/// A byte slice with the file's byte order and class; every read is bounds-checked.
#[derive(Clone, Copy)]
struct View<'a> {
    data: &'a [u8],
    endian: Endianness,
    class64: bool,
}

impl<'a> View<'a> {
    fn sub(&self, offset: usize, len: usize) -> Option<View<'a>> {
        let data = self.data.get(offset..offset.checked_add(len)?)?;
        Some(View { data, ..*self })
    }
    fn array<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.data
            .get(offset..offset.checked_add(N)?)?
            .try_into()
            .ok()
    }
    fn u8(&self, offset: usize) -> Option<u8> {
        self.data.get(offset).copied()
    }
    fn u16(&self, offset: usize) -> Option<u16> {
        Some(self.endian.u16(self.array(offset)?))
    }
    fn u32(&self, offset: usize) -> Option<u32> {
        Some(self.endian.u32(self.array(offset)?))
    }
    fn u64(&self, offset: usize) -> Option<u64> {
        Some(self.endian.u64(self.array(offset)?))
    }
    /// An address-sized field: 8 bytes in ELF64, 4 in ELF32.
    fn word(&self, offset: usize) -> Option<u64> {
        if self.class64 {
            self.u64(offset)
        } else {
            self.u32(offset).map(u64::from)
        }
    }
}

/// The section header fields this parser uses.
#[derive(Clone, Copy)]
struct SectionHeader {
    name: u32,
    sh_type: u32,
    flags: u64,
    offset: u64,
    size: u64,
    link: u32,
    entsize: u64,
}

fn parse_section_header(rec: View<'_>) -> Option<SectionHeader> {
    if rec.class64 {
        Some(SectionHeader {
            name: rec.u32(0)?,
            sh_type: rec.u32(4)?,
            flags: rec.u64(8)?,
            offset: rec.u64(24)?,
            size: rec.u64(32)?,
            link: rec.u32(40)?,
            entsize: rec.u64(56)?,
        })
    } else {
        Some(SectionHeader {
            name: rec.u32(0)?,
            sh_type: rec.u32(4)?,
            flags: u64::from(rec.u32(8)?),
            offset: u64::from(rec.u32(16)?),
            size: u64::from(rec.u32(20)?),
            link: rec.u32(24)?,
            entsize: u64::from(rec.u32(36)?),
        })
    }
}

struct Symbol {
    name: u32,
    kind: u8,
    shndx: u16,
    value: u64,
}

fn parse_symbol(rec: View<'_>) -> Option<Symbol> {
    let (name, info, shndx, value) = if rec.class64 {
        (rec.u32(0)?, rec.u8(4)?, rec.u16(6)?, rec.u64(8)?)
    } else {
        (
            rec.u32(0)?,
            rec.u8(12)?,
            rec.u16(14)?,
            u64::from(rec.u32(4)?),
        )
    };
    Some(Symbol {
        name,
        kind: info & 0xf,
        shndx,
        value,
    })
}

/// Caps the bytes of names the parser scans and copies out, so that many
/// symbols or sections sharing one long name cannot make the output (or the
/// time spent scanning) grow with the square of the input size.
struct NameBudget {
    remaining: usize,
}

impl NameBudget {
    fn for_file(len: usize) -> Self {
        NameBudget {
            remaining: len.saturating_mul(8).saturating_add(1 << 16),
        }
    }
    fn charge(&mut self, bytes: usize) -> Result<(), ElfError> {
        self.remaining = self.remaining.checked_sub(bytes).ok_or_else(|| {
            malformed("names add up to far more than the file size (string table abuse)")
        })?;
        Ok(())
    }
}

/// The NUL-terminated string at `offset` in a string table.
fn c_str<'t>(table: &'t [u8], offset: u32, budget: &mut NameBudget) -> Result<&'t [u8], ElfError> {
    let tail = usize::try_from(offset)
        .ok()
        .and_then(|start| table.get(start..))
        .ok_or_else(|| {
            malformed(format!(
                "string offset {offset} is past the end of its {}-byte string table",
                table.len()
            ))
        })?;
    let len = tail
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed(format!("string at offset {offset} is not NUL-terminated")))?;
    budget.charge(len.saturating_add(1))?;
    tail.get(..len)
        .ok_or_else(|| malformed(format!("string at offset {offset} is out of range")))
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

// ---------------------------------------------------------------------------
// The parser.
// ---------------------------------------------------------------------------

/// Reads the section header table, resolving extended numbering (e_shnum == 0
/// / e_shstrndx == SHN_XINDEX, with the real values in section 0). Returns the
/// headers and the section-name string table index.
fn read_section_headers(
    file: View<'_>,
    layout: &Layout,
) -> Result<(Vec<SectionHeader>, usize), ElfError> {
    let header_field = |v: Option<u64>, what: &str| {
        v.ok_or_else(|| malformed(format!("ELF header truncated at {what}")))
    };
    let shoff = header_field(file.word(layout.e_shoff), "e_shoff")?;
    let shentsize = header_field(file.u16(layout.e_shentsize).map(u64::from), "e_shentsize")?;
    let shnum = header_field(file.u16(layout.e_shnum).map(u64::from), "e_shnum")?;
    let shstrndx = header_field(file.u16(layout.e_shstrndx).map(u64::from), "e_shstrndx")?;

    if shoff == 0 {
        if shnum != 0 {
            return Err(malformed(format!(
                "e_shnum is {shnum} but e_shoff is 0 (no section header table)"
            )));
        }
        return Ok((Vec::new(), 0));
    }
    let shoff = to_usize(shoff, "e_shoff")?;
    let shentsize = to_usize(shentsize, "e_shentsize")?;
    if shentsize < layout.shdr_size {
        return Err(malformed(format!(
            "e_shentsize {shentsize} is smaller than a {}-byte section header",
            layout.shdr_size
        )));
    }
    let read_at = |index: usize| -> Result<SectionHeader, ElfError> {
        index
            .checked_mul(shentsize)
            .and_then(|rel| shoff.checked_add(rel))
            .and_then(|off| file.sub(off, layout.shdr_size))
            .and_then(parse_section_header)
            .ok_or_else(|| {
                malformed(format!(
                    "section header {index} lies outside the {}-byte file",
                    file.data.len()
                ))
            })
    };

    let (count, shstrndx) = if shnum == 0 || shstrndx == u64::from(SHN_XINDEX) {
        let first = read_at(0)?;
        let count = if shnum == 0 { first.size } else { shnum };
        let shstrndx = if shstrndx == u64::from(SHN_XINDEX) {
            u64::from(first.link)
        } else {
            shstrndx
        };
        (count, shstrndx)
    } else {
        (shnum, shstrndx)
    };

    // The whole table must lie inside the file; this also bounds `count` by
    // file size / section header size before anything is allocated.
    let fits = to_usize(count, "section count")
        .ok()
        .and_then(|count| count.checked_mul(shentsize))
        .and_then(|table_len| shoff.checked_add(table_len))
        .is_some_and(|end| end <= file.data.len());
    if !fits {
        return Err(malformed(format!(
            "section header table ({count} entries of {shentsize} bytes at e_shoff {shoff}) \
             extends past the end of the {}-byte file",
            file.data.len()
        )));
    }
    let count = to_usize(count, "section count")?;
    let headers = (0..count).map(read_at).collect::<Result<Vec<_>, _>>()?;
    let shstrndx = to_usize(shstrndx, "e_shstrndx")?;
    Ok((headers, shstrndx))
}

/// The file bytes of a section; empty for SHT_NULL and SHT_NOBITS.
fn section_data<'a>(
    file: View<'a>,
    index: usize,
    sh: &SectionHeader,
) -> Result<&'a [u8], ElfError> {
    if sh.sh_type == SHT_NULL || sh.sh_type == SHT_NOBITS {
        return Ok(&[]);
    }
    let (offset, size) = (sh.offset, sh.size);
    usize::try_from(offset)
        .ok()
        .zip(usize::try_from(size).ok())
        .and_then(|(offset, size)| file.sub(offset, size))
        .map(|view| view.data)
        .ok_or_else(|| {
            malformed(format!(
                "section {index} ({size} bytes at offset {offset}) extends past the end of \
                 the {}-byte file",
                file.data.len()
            ))
        })
}

#[derive(Clone, Copy)]
enum Role {
    Other,
    /// Index into the program list.
    Program(usize),
    Maps,
}

struct ProgramBuilder {
    section: String,
    program_type: &'static str,
    /// (st_value, symbol index, name)
    functions: Vec<(u64, usize, String)>,
}

fn parse(file: View<'_>) -> Result<EbpfFacts, ElfError> {
    let layout = if file.class64 { &LAYOUT64 } else { &LAYOUT32 };
    if file.data.len() < layout.ehdr_size {
        return Err(malformed(format!(
            "file is {} bytes, shorter than the {}-byte ELF header",
            file.data.len(),
            layout.ehdr_size
        )));
    }
    let (sections, shstrndx) = read_section_headers(file, layout)?;
    let datas = sections
        .iter()
        .enumerate()
        .map(|(index, sh)| section_data(file, index, sh))
        .collect::<Result<Vec<_>, _>>()?;
    let mut budget = NameBudget::for_file(file.data.len());

    let mut facts = EbpfFacts {
        endianness: file.endian,
        programs: Vec::new(),
        maps: Vec::new(),
        license: None,
        btf: false,
        btf_ext: false,
        core_relocations: false,
    };
    if sections.is_empty() {
        return Ok(facts);
    }

    let section_names = match sections.get(shstrndx) {
        _ if shstrndx == 0 => {
            return Err(malformed(
                "e_shstrndx is 0: there is no section name string table",
            ));
        }
        Some(sh) if sh.sh_type == SHT_STRTAB => datas.get(shstrndx).copied().unwrap_or(&[]),
        Some(_) => {
            return Err(malformed(format!(
                "section name table (section {shstrndx}) is not SHT_STRTAB"
            )));
        }
        None => {
            return Err(malformed(format!(
                "e_shstrndx {shstrndx} is out of range ({} sections)",
                sections.len()
            )));
        }
    };

    let mut roles = Vec::with_capacity(sections.len());
    let mut programs: Vec<ProgramBuilder> = Vec::new();
    for ((index, sh), data) in sections.iter().enumerate().zip(&datas) {
        let name = c_str(section_names, sh.name, &mut budget)
            .map_err(|e| context(e, &format!("name of section {index}")))?;
        let mut role = Role::Other;
        match name {
            b".BTF" => facts.btf = true,
            b".BTF.ext" => {
                facts.btf_ext = true;
                facts.core_relocations |= btf_ext::has_core_relocations(data, file.endian);
            }
            b"license" if facts.license.is_none() => {
                let end = data.iter().position(|&b| b == 0).unwrap_or(data.len());
                facts.license = Some(lossy(data.get(..end).unwrap_or(data)));
            }
            b".maps" | b"maps" => role = Role::Maps,
            _ if name.starts_with(b"maps/") => role = Role::Maps,
            _ => {}
        }
        if sh.sh_type == SHT_PROGBITS
            && sh.flags & SHF_EXECINSTR != 0
            && sh.size != 0
            && name != b".text"
        {
            role = Role::Program(programs.len());
            let section = lossy(name);
            programs.push(ProgramBuilder {
                program_type: program_type(&section),
                section,
                functions: Vec::new(),
            });
        }
        roles.push(role);
    }

    let symtabs: Vec<usize> = sections
        .iter()
        .enumerate()
        .filter(|(_, sh)| sh.sh_type == SHT_SYMTAB)
        .map(|(index, _)| index)
        .collect();
    let mut maps = BTreeSet::new();
    match symtabs.as_slice() {
        [] => {}
        &[symtab] => scan_symbols(
            file,
            layout,
            &sections,
            &datas,
            symtab,
            &roles,
            &mut programs,
            &mut maps,
            &mut budget,
        )?,
        more => {
            return Err(malformed(format!(
                "{} symbol tables (SHT_SYMTAB sections); expected at most one",
                more.len()
            )));
        }
    }

    facts.maps = maps.into_iter().collect();
    facts.programs = programs
        .into_iter()
        .map(|mut p| {
            p.functions.sort_by_key(|&(value, index, _)| (value, index));
            ProgramSection {
                section: p.section,
                program_type: p.program_type.to_owned(),
                functions: p.functions.into_iter().map(|(_, _, name)| name).collect(),
            }
        })
        .collect();
    Ok(facts)
}

fn context(err: ElfError, what: &str) -> ElfError {
    match err {
        ElfError::Malformed(reason) => ElfError::Malformed(format!("{what}: {reason}")),
        other => other,
    }
}

#[allow(clippy::too_many_arguments)]
fn scan_symbols(
    file: View<'_>,
    layout: &Layout,
    sections: &[SectionHeader],
    datas: &[&[u8]],
    symtab: usize,
    roles: &[Role],
    programs: &mut [ProgramBuilder],
    maps: &mut BTreeSet<String>,
    budget: &mut NameBudget,
) -> Result<(), ElfError> {
    let (Some(sh), Some(&data)) = (sections.get(symtab), datas.get(symtab)) else {
        return Err(malformed(format!("symbol table section {symtab} missing")));
    };
    let entsize = to_usize(sh.entsize, "symbol table sh_entsize")?;
    if entsize < layout.sym_size {
        return Err(malformed(format!(
            "symbol table entry size {entsize} is smaller than a {}-byte symbol",
            layout.sym_size
        )));
    }
    let count = data.len().checked_div(entsize).unwrap_or(0);
    if data.len().checked_rem(entsize) != Some(0) {
        return Err(malformed(format!(
            "symbol table size {} is not a multiple of its entry size {entsize}",
            data.len()
        )));
    }
    let strtab_index = to_usize(u64::from(sh.link), "symbol table sh_link")?;
    let strings = match (sections.get(strtab_index), datas.get(strtab_index)) {
        (Some(s), Some(&d)) if s.sh_type == SHT_STRTAB && strtab_index != 0 => d,
        (Some(_), Some(_)) => {
            return Err(malformed(format!(
                "symbol table links to section {strtab_index}, which is not a string table"
            )));
        }
        _ => {
            return Err(malformed(format!(
                "symbol table links to section {strtab_index}, which does not exist"
            )));
        }
    };
    // Extended section indices (SHT_SYMTAB_SHNDX linked to this symbol table).
    let xindex = sections
        .iter()
        .zip(datas)
        .find(|(s, _)| {
            s.sh_type == SHT_SYMTAB_SHNDX && usize::try_from(s.link).ok() == Some(symtab)
        })
        .map(|(_, &d)| View { data: d, ..file });
    let symbols = View { data, ..file };

    for index in 0..count {
        let sym = index
            .checked_mul(entsize)
            .and_then(|off| symbols.sub(off, entsize))
            .and_then(parse_symbol)
            .ok_or_else(|| malformed(format!("symbol {index} is out of range")))?;
        let section = match sym.shndx {
            SHN_UNDEF => continue,
            SHN_XINDEX => {
                let ext = index
                    .checked_mul(4)
                    .and_then(|off| xindex.and_then(|x| x.u32(off)))
                    .ok_or_else(|| {
                        malformed(format!(
                            "symbol {index} uses SHN_XINDEX but has no SHT_SYMTAB_SHNDX entry"
                        ))
                    })?;
                to_usize(u64::from(ext), "extended section index")?
            }
            reserved if reserved >= SHN_LORESERVE => continue, // SHN_ABS, SHN_COMMON, ...
            plain => usize::from(plain),
        };
        let role = roles.get(section).copied().ok_or_else(|| {
            malformed(format!(
                "symbol {index} refers to section {section}, but there are only {} sections",
                sections.len()
            ))
        })?;
        match role {
            Role::Program(program) if sym.kind == STT_FUNC => {
                let name = c_str(strings, sym.name, budget)
                    .map_err(|e| context(e, &format!("name of symbol {index}")))?;
                if name.is_empty() {
                    continue;
                }
                if let Some(p) = programs.get_mut(program) {
                    p.functions.push((sym.value, index, lossy(name)));
                }
            }
            Role::Maps if sym.kind != STT_SECTION && sym.kind != STT_FILE => {
                let name = c_str(strings, sym.name, budget)
                    .map_err(|e| context(e, &format!("name of symbol {index}")))?;
                if !name.is_empty() {
                    maps.insert(lossy(name));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Tests.
// ---------------------------------------------------------------------------

#[cfg(test)]
#[allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing,
    clippy::string_slice,
    clippy::arithmetic_side_effects,
    clippy::as_conversions,
    clippy::cast_possible_truncation
)]
mod tests {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const INSTALL_HINT: &str =
        "install the toolchain with `apt-get install -y clang libbpf-dev llvm`";

    // ---- helpers: compiling real objects --------------------------------

    /// A compiled object in its own temporary directory, removed on drop.
    struct Obj {
        _dir: TempDir,
        path: PathBuf,
        bytes: Vec<u8>,
    }

    /// Removes its directory on drop, also when a test panics.
    struct TempDir(PathBuf);

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn scratch_dir(tag: &str) -> PathBuf {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "ebpf-elf-test-{}-{}-{}-{}",
            std::process::id(),
            tag,
            COUNTER.fetch_add(1, Ordering::Relaxed),
            nanos
        ));
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    fn run_tool(tool: &str, args: &[&str]) -> std::process::Output {
        let output = Command::new(tool).args(args).output().unwrap_or_else(|e| {
            panic!("`{tool}` is required by these tests but could not be run ({e}); {INSTALL_HINT}")
        });
        if !output.status.success() {
            panic!(
                "`{tool} {}` failed ({}):\n{}\n{}\n({INSTALL_HINT}; libbpf-dev provides \
                 <bpf/bpf_helpers.h>)",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        output
    }

    /// `clang -O2 <args> -c x.c -o x.o` in a fresh directory.
    fn compile(tag: &str, source: &str, args: &[&str]) -> Obj {
        let dir = TempDir(scratch_dir(tag));
        let src = dir.0.join("x.c");
        let path = dir.0.join("x.o");
        std::fs::write(&src, source).expect("write C source");
        let multiarch = format!("-I/usr/include/{}-linux-gnu", std::env::consts::ARCH);
        let mut full: Vec<&str> = vec!["-O2"];
        full.extend_from_slice(args);
        full.extend_from_slice(&[
            multiarch.as_str(),
            "-c",
            src.to_str().unwrap(),
            "-o",
            path.to_str().unwrap(),
        ]);
        run_tool("clang", &full);
        let bytes = std::fs::read(&path).expect("read object");
        Obj {
            _dir: dir,
            path,
            bytes,
        }
    }

    fn bpf(tag: &str, source: &str, args: &[&str]) -> Obj {
        compile(tag, source, args)
    }

    const MAIN_SOURCE: &str = r#"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

struct {
    __uint(type, BPF_MAP_TYPE_HASH);
    __uint(max_entries, 64);
    __type(key, __u32);
    __type(value, __u64);
} packet_counts SEC(".maps");

struct {
    __uint(type, BPF_MAP_TYPE_RINGBUF);
    __uint(max_entries, 4096);
} events SEC(".maps");

/* A global subprogram: lands in .text, which is not a program section. */
__noinline int shared_helper(int x) { return x + 1; }

SEC("xdp")
int xdp_count(struct xdp_md *ctx)
{
    __u32 key = ctx->ingress_ifindex;
    __u64 one = 1, *val = bpf_map_lookup_elem(&packet_counts, &key);
    if (val)
        __sync_fetch_and_add(val, 1);
    else
        bpf_map_update_elem(&packet_counts, &key, &one, BPF_ANY);
    return shared_helper(XDP_PASS - 1);
}

SEC("kprobe/do_unlinkat")
int trace_unlink(void *ctx)
{
    __u64 pid = bpf_get_current_pid_tgid();
    bpf_ringbuf_output(&events, &pid, sizeof(pid), 0);
    return 0;
}

SEC("tracepoint/syscalls/sys_enter_openat")
int trace_openat(void *ctx) { return 0; }

SEC("tracepoint/syscalls/sys_enter_openat")
int trace_openat_again(void *ctx) { return shared_helper(0); }

char LICENSE[] SEC("license") = "GPL";
"#;

    // ---- helpers: llvm-readelf as an independent parser -----------------

    #[derive(Debug)]
    struct RSection {
        index: usize,
        name: String,
        ty: String,
        size: u64,
        flags: String,
    }

    #[derive(Debug)]
    struct RSymbol {
        value: u64,
        ty: String,
        ndx: String,
        name: String,
    }

    fn readelf_sections(path: &Path) -> Vec<RSection> {
        let out = run_tool("llvm-readelf", &["-S", path.to_str().unwrap()]);
        let text = String::from_utf8(out.stdout).unwrap();
        let mut sections = Vec::new();
        for line in text.lines() {
            let line = line.trim_start();
            let Some(rest) = line.strip_prefix('[') else {
                continue;
            };
            let Some((index, rest)) = rest.split_once(']') else {
                continue;
            };
            let Ok(index) = index.trim().parse::<usize>() else {
                continue; // the "[Nr]" heading
            };
            if index == 0 {
                continue; // the NULL section has no name
            }
            // name type address offset size entsize [flags] link info align
            let tokens: Vec<&str> = rest.split_whitespace().collect();
            assert!(
                tokens.len() == 9 || tokens.len() == 10,
                "unexpected readelf line: {line}"
            );
            sections.push(RSection {
                index,
                name: tokens[0].to_owned(),
                ty: tokens[1].to_owned(),
                size: u64::from_str_radix(tokens[4], 16).unwrap(),
                flags: if tokens.len() == 10 {
                    tokens[6].to_owned()
                } else {
                    String::new()
                },
            });
        }
        assert!(!sections.is_empty(), "no sections parsed from:\n{text}");
        sections
    }

    fn readelf_symbols(path: &Path) -> Vec<RSymbol> {
        let out = run_tool("llvm-readelf", &["-s", path.to_str().unwrap()]);
        let text = String::from_utf8(out.stdout).unwrap();
        let mut symbols = Vec::new();
        for line in text.lines() {
            // Num: Value Size Type Bind Vis Ndx Name
            let tokens: Vec<&str> = line.split_whitespace().collect();
            let is_entry = tokens
                .first()
                .and_then(|t| t.strip_suffix(':'))
                .is_some_and(|n| n.parse::<usize>().is_ok());
            if !is_entry || tokens.len() < 8 {
                continue;
            }
            symbols.push(RSymbol {
                value: u64::from_str_radix(tokens[1], 16).unwrap(),
                ty: tokens[3].to_owned(),
                ndx: tokens[6].to_owned(),
                name: tokens[7].to_owned(),
            });
        }
        symbols
    }

    /// Checks `facts` against what llvm-readelf reports for the same file.
    fn cross_check(path: &Path, facts: &EbpfFacts) {
        let sections = readelf_sections(path);
        let symbols = readelf_symbols(path);

        let program_sections: Vec<&RSection> = sections
            .iter()
            .filter(|s| {
                s.ty == "PROGBITS" && s.flags.contains('X') && s.size > 0 && s.name != ".text"
            })
            .collect();
        assert_eq!(
            facts
                .programs
                .iter()
                .map(|p| p.section.as_str())
                .collect::<Vec<_>>(),
            program_sections
                .iter()
                .map(|s| s.name.as_str())
                .collect::<Vec<_>>(),
            "program sections differ from llvm-readelf -S"
        );
        for (program, section) in facts.programs.iter().zip(&program_sections) {
            let mut funcs: Vec<&RSymbol> = symbols
                .iter()
                .filter(|s| s.ty == "FUNC" && s.ndx == section.index.to_string())
                .collect();
            funcs.sort_by_key(|s| s.value);
            assert_eq!(
                program.functions,
                funcs.iter().map(|s| s.name.clone()).collect::<Vec<_>>(),
                "functions of {} differ from llvm-readelf -s",
                program.section
            );
        }

        let map_sections: Vec<String> = sections
            .iter()
            .filter(|s| s.name == ".maps" || s.name == "maps" || s.name.starts_with("maps/"))
            .map(|s| s.index.to_string())
            .collect();
        let mut maps: Vec<String> = symbols
            .iter()
            .filter(|s| map_sections.contains(&s.ndx) && s.ty != "SECTION" && s.ty != "FILE")
            .map(|s| s.name.clone())
            .collect();
        maps.sort();
        maps.dedup();
        assert_eq!(facts.maps, maps, "maps differ from llvm-readelf -s");

        let has = |name: &str| sections.iter().any(|s| s.name == name);
        assert_eq!(facts.btf, has(".BTF"));
        assert_eq!(facts.btf_ext, has(".BTF.ext"));
        assert_eq!(facts.license.is_some(), has("license"));
    }

    fn expected_main_programs() -> Vec<ProgramSection> {
        let p = |section: &str, ty: &str, functions: &[&str]| ProgramSection {
            section: section.to_owned(),
            program_type: ty.to_owned(),
            functions: functions.iter().map(|f| f.to_string()).collect(),
        };
        vec![
            p("xdp", "xdp", &["xdp_count"]),
            p("kprobe/do_unlinkat", "kprobe", &["trace_unlink"]),
            p(
                "tracepoint/syscalls/sys_enter_openat",
                "tracepoint",
                &["trace_openat", "trace_openat_again"],
            ),
        ]
    }

    // ---- tests on real clang output --------------------------------------

    #[test]
    fn little_endian_object_with_btf_matches_readelf() {
        let obj = bpf("le", MAIN_SOURCE, &["-g", "-target", "bpf"]);
        assert_eq!(
            sniff(&obj.bytes),
            ElfKind::Elf {
                machine: EM_BPF,
                endianness: Endianness::Little,
                class64: true
            }
        );
        let facts = inspect(&obj.bytes).expect("inspect real object");
        assert_eq!(facts.endianness, Endianness::Little);
        assert_eq!(facts.programs, expected_main_programs());
        assert_eq!(facts.maps, vec!["events", "packet_counts"]);
        assert_eq!(facts.license.as_deref(), Some("GPL"));
        assert!(facts.btf);
        assert!(facts.btf_ext);
        // The helper really is in a non-empty .text, which must not count.
        let sections = readelf_sections(&obj.path);
        let text = sections.iter().find(|s| s.name == ".text").unwrap();
        assert!(text.size > 0 && text.flags.contains('X'));
        cross_check(&obj.path, &facts);
    }

    #[test]
    fn big_endian_object_has_same_facts() {
        let le = bpf("le2", MAIN_SOURCE, &["-g", "-target", "bpfel"]);
        let be = bpf("be", MAIN_SOURCE, &["-g", "-target", "bpfeb"]);
        assert_eq!(
            sniff(&be.bytes),
            ElfKind::Elf {
                machine: EM_BPF,
                endianness: Endianness::Big,
                class64: true
            }
        );
        let le_facts = inspect(&le.bytes).unwrap();
        let be_facts = inspect(&be.bytes).unwrap();
        assert_eq!(be_facts.endianness, Endianness::Big);
        assert_eq!(
            EbpfFacts {
                endianness: Endianness::Little,
                ..be_facts.clone()
            },
            le_facts
        );
        cross_check(&be.path, &be_facts);
    }

    #[test]
    fn object_without_debug_info_has_no_btf() {
        let obj = bpf("nobtf", MAIN_SOURCE, &["-target", "bpf"]);
        let facts = inspect(&obj.bytes).unwrap();
        assert!(!facts.btf);
        assert!(!facts.btf_ext);
        assert_eq!(facts.programs, expected_main_programs());
        assert_eq!(facts.maps, vec!["events", "packet_counts"]);
        assert_eq!(facts.license.as_deref(), Some("GPL"));
        cross_check(&obj.path, &facts);
    }

    #[test]
    fn legacy_maps_sections_are_found() {
        let source = r#"
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
struct legacy_map_def { unsigned int type, key_size, value_size, max_entries, map_flags; };
struct legacy_map_def legacy_counts SEC("maps") = { BPF_MAP_TYPE_ARRAY, 4, 8, 1, 0 };
struct legacy_map_def legacy_hash SEC("maps") = { BPF_MAP_TYPE_HASH, 4, 4, 8, 0 };
struct legacy_map_def extra_map SEC("maps/extra") = { BPF_MAP_TYPE_ARRAY, 4, 4, 2, 0 };
SEC("socket") int filter(void *ctx) { return 0; }
char _license[] SEC("license") = "Dual BSD/GPL";
"#;
        let obj = bpf("legacy", source, &["-target", "bpf"]);
        let facts = inspect(&obj.bytes).unwrap();
        assert_eq!(
            facts.maps,
            vec!["extra_map", "legacy_counts", "legacy_hash"]
        );
        assert_eq!(facts.license.as_deref(), Some("Dual BSD/GPL"));
        assert_eq!(facts.programs.len(), 1);
        assert_eq!(facts.programs[0].program_type, "socket");
        cross_check(&obj.path, &facts);
    }

    const KIND_CASES: &[(&str, &str)] = &[
        ("kprobe/do_sys_open", "kprobe"),
        ("kretprobe/do_sys_open", "kretprobe"),
        ("uprobe//usr/bin/bash:readline", "uprobe"),
        ("uretprobe//usr/bin/bash:readline", "uretprobe"),
        ("uprobe.s//usr/lib/libc.so.6:malloc", "uprobe"),
        ("ksyscall/openat", "ksyscall"),
        ("kretsyscall/openat", "kretsyscall"),
        ("kprobe.multi/do_*", "kprobe.multi"),
        ("kretprobe.multi/do_*", "kretprobe.multi"),
        ("uprobe.multi//usr/bin/bash:read*", "uprobe.multi"),
        ("usdt/./libfoo.so:provider:probe", "usdt"),
        ("tracepoint/sched/sched_switch", "tracepoint"),
        ("tp/sched/sched_process_exec", "tracepoint"),
        ("raw_tracepoint/sys_enter", "raw_tracepoint"),
        ("raw_tp/sys_exit", "raw_tracepoint"),
        ("raw_tp.w/bpf_test_finish", "raw_tracepoint.w"),
        ("tp_btf/sched_wakeup", "tp_btf"),
        ("fentry/do_unlinkat", "fentry"),
        ("fexit/do_unlinkat", "fexit"),
        ("fmod_ret/security_file_open", "fmod_ret"),
        ("fentry.s/do_unlinkat", "fentry"),
        ("freplace/handler", "freplace"),
        ("lsm/file_open", "lsm"),
        ("lsm.s/bprm_committed_creds", "lsm"),
        ("lsm_cgroup/socket_bind", "lsm_cgroup"),
        ("iter/task", "iter"),
        ("iter.s/task_file", "iter"),
        ("syscall", "syscall"),
        ("xdp", "xdp"),
        ("xdp/devmap", "xdp"),
        ("xdp.frags", "xdp"),
        ("xdp.frags/cpumap", "xdp"),
        ("tc", "tc"),
        ("classifier", "tc"),
        ("tc/ingress", "tcx"),
        ("tcx/egress", "tcx"),
        ("action", "action"),
        ("netkit/primary", "netkit"),
        ("socket", "socket"),
        ("sk_reuseport/migrate", "sk_reuseport"),
        ("sk_skb/stream_parser", "sk_skb"),
        ("sk_skb", "sk_skb"),
        ("sk_msg", "sk_msg"),
        ("sockops", "sockops"),
        ("sk_lookup", "sk_lookup"),
        ("flow_dissector", "flow_dissector"),
        ("lirc_mode2", "lirc_mode2"),
        ("netfilter", "netfilter"),
        ("perf_event", "perf_event"),
        ("lwt_xmit", "lwt_xmit"),
        ("struct_ops/dctcp_init", "struct_ops"),
        ("struct_ops.s/dctcp_cwnd", "struct_ops"),
        ("cgroup_skb/ingress", "cgroup_skb"),
        ("cgroup/skb", "cgroup_skb"),
        ("cgroup/sock_create", "cgroup_sock"),
        ("cgroup/post_bind4", "cgroup_sock"),
        ("cgroup/connect4", "cgroup_sock_addr"),
        ("cgroup/recvmsg_unix", "cgroup_sock_addr"),
        ("cgroup/sysctl", "cgroup_sysctl"),
        ("cgroup/getsockopt", "cgroup_sockopt"),
        ("cgroup/dev", "cgroup_device"),
        ("cgroup/some_future_hook", "cgroup"),
        ("my_custom_section", "unknown"),
        ("kprobex", "unknown"),
        ("xdp_prog", "unknown"),
        ("socket1", "unknown"),
        (".text.unlikely", "unknown"),
    ];

    #[test]
    fn program_type_from_section_names() {
        for &(section, kind) in KIND_CASES {
            assert_eq!(program_type(section), kind, "section {section:?}");
        }
    }

    #[test]
    fn program_types_in_a_real_object() {
        let mut source = String::from("#include <linux/bpf.h>\n#include <bpf/bpf_helpers.h>\n");
        for (i, (section, _)) in KIND_CASES.iter().enumerate() {
            source.push_str(&format!(
                "SEC(\"{section}\") int prog_{i}(void *ctx) {{ return {i}; }}\n"
            ));
        }
        source.push_str("char LICENSE[] SEC(\"license\") = \"GPL\";\n");
        let obj = bpf("kinds", &source, &["-g", "-target", "bpf"]);
        let facts = inspect(&obj.bytes).unwrap();
        let got: Vec<(String, String, Vec<String>)> = facts
            .programs
            .iter()
            .map(|p| {
                (
                    p.section.clone(),
                    p.program_type.clone(),
                    p.functions.clone(),
                )
            })
            .collect();
        let want: Vec<(String, String, Vec<String>)> = KIND_CASES
            .iter()
            .enumerate()
            .map(|(i, (s, k))| (s.to_string(), k.to_string(), vec![format!("prog_{i}")]))
            .collect();
        assert_eq!(got, want);
        assert!(facts.maps.is_empty());
        cross_check(&obj.path, &facts);
    }

    #[test]
    fn x86_objects_are_not_bpf() {
        let source = "int answer(void) { return 42; }\n";
        let obj = compile("x86", source, &["-target", "x86_64-linux-gnu"]);
        assert_eq!(
            sniff(&obj.bytes),
            ElfKind::Elf {
                machine: 62,
                endianness: Endianness::Little,
                class64: true
            }
        );
        assert_eq!(inspect(&obj.bytes), Err(ElfError::NotBpf { machine: 62 }));

        let obj32 = compile("i386", source, &["-target", "i386-linux-gnu"]);
        assert_eq!(
            sniff(&obj32.bytes),
            ElfKind::Elf {
                machine: 3,
                endianness: Endianness::Little,
                class64: false
            }
        );
        assert_eq!(inspect(&obj32.bytes), Err(ElfError::NotBpf { machine: 3 }));
    }

    #[test]
    fn plain_text_is_not_elf() {
        assert_eq!(sniff(b"test data"), ElfKind::NotElf);
        assert_eq!(inspect(b"test data"), Err(ElfError::NotElf));
        assert_eq!(inspect(b""), Err(ElfError::NotElf));
        assert!(matches!(inspect(b"\x7fELF"), Err(ElfError::Malformed(_))));
        // Valid magic, bad class byte.
        let mut header = [0u8; 64];
        header[..4].copy_from_slice(&ELF_MAGIC);
        header[EI_CLASS] = 3;
        header[EI_DATA] = ELFDATA2LSB;
        assert_eq!(sniff(&header), ElfKind::NotElf);
        assert!(matches!(inspect(&header), Err(ElfError::Malformed(_))));
    }

    #[test]
    fn every_truncation_is_an_error_and_never_panics() {
        for target in ["bpfel", "bpfeb"] {
            let obj = bpf("trunc", MAIN_SOURCE, &["-g", "-target", target]);
            assert!(inspect(&obj.bytes).is_ok());
            for len in 0..obj.bytes.len() {
                let prefix = &obj.bytes[..len];
                let _ = sniff(prefix);
                match inspect(prefix) {
                    Err(ElfError::NotElf) => assert!(len < 4, "NotElf at length {len}"),
                    Err(ElfError::Malformed(_)) => assert!(len >= 4),
                    // clang writes the section header table last, so no
                    // strict prefix holds a complete object.
                    other => panic!("prefix of length {len}: unexpected {other:?}"),
                }
            }
        }
    }

    /// xorshift64*: small, deterministic, good enough to pick bytes.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_byte_flips_never_panic() {
        let mut total = (0usize, 0usize);
        for (target, seed) in [
            ("bpfel", 0x9e37_79b9_7f4a_7c15u64),
            ("bpfeb", 0xdead_beef_cafe_f00d),
        ] {
            let obj = bpf("flip", MAIN_SOURCE, &["-g", "-target", target]);
            let original = inspect(&obj.bytes).unwrap();
            let endian = if target == "bpfeb" {
                Endianness::Big
            } else {
                Endianness::Little
            };
            let view = View {
                data: &obj.bytes,
                endian,
                class64: true,
            };
            // Half of the flips land in the structural parts: the ELF header
            // and the section header table.
            let shoff = view.u64(40).unwrap() as usize;
            let mut rng = Rng(seed);
            let (mut ok, mut err) = (0usize, 0usize);
            for _ in 0..2500 {
                let mut bytes = obj.bytes.clone();
                let flips = 1 + rng.below(4);
                for _ in 0..flips {
                    let pos = match rng.below(3) {
                        0 => rng.below(64),
                        1 => shoff + rng.below(bytes.len() - shoff),
                        _ => rng.below(bytes.len()),
                    };
                    bytes[pos] ^= 1 + rng.below(255) as u8;
                }
                let _ = sniff(&bytes);
                match inspect(&bytes) {
                    Ok(facts) => {
                        ok += 1;
                        // A parse that succeeds still reports sane output.
                        assert!(facts.maps.windows(2).all(|w| w[0] < w[1]));
                        let _ = facts == original;
                    }
                    Err(_) => err += 1,
                }
            }
            assert!(ok > 0 && err > 0, "{target}: ok {ok}, err {err}");
            total = (total.0 + ok, total.1 + err);
        }
        eprintln!("byte flips: {} parsed, {} rejected", total.0, total.1);
    }

    // ---- tests on hand-built ELF files -----------------------------------

    struct SynSection {
        name: &'static str,
        ty: u32,
        flags: u64,
        data: Vec<u8>,
    }

    struct SynSymbol {
        name: String,
        kind: u8,
        /// Index into the user sections (section header index minus one).
        section: u16,
        value: u64,
    }

    struct Syn {
        class64: bool,
        big: bool,
        machine: u16,
        /// Use e_shnum = 0 / e_shstrndx = SHN_XINDEX with the values in section 0.
        extended: bool,
    }

    fn sect(name: &'static str, ty: u32, flags: u64, data: &[u8]) -> SynSection {
        SynSection {
            name,
            ty,
            flags,
            data: data.to_vec(),
        }
    }

    fn sym(name: &str, kind: u8, section: u16, value: u64) -> SynSymbol {
        SynSymbol {
            name: name.to_owned(),
            kind,
            section,
            value,
        }
    }

    /// Writes an ELF relocatable: header, section data, .strtab (shared by
    /// section and symbol names, with identical names interned), .symtab,
    /// then the section header table.
    fn build(opts: &Syn, sections: &[SynSection], symbols: &[SynSymbol]) -> Vec<u8> {
        let put16 = |v: &mut Vec<u8>, x: u16| {
            v.extend_from_slice(&if opts.big {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            })
        };
        let put32 = |v: &mut Vec<u8>, x: u32| {
            v.extend_from_slice(&if opts.big {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            })
        };
        let put64 = |v: &mut Vec<u8>, x: u64| {
            v.extend_from_slice(&if opts.big {
                x.to_be_bytes()
            } else {
                x.to_le_bytes()
            })
        };
        let putw = |v: &mut Vec<u8>, x: u64| {
            if opts.class64 {
                put64(v, x)
            } else {
                put32(v, x as u32)
            }
        };

        let mut strtab = vec![0u8];
        let mut interned: std::collections::HashMap<String, u32> = Default::default();
        let mut intern = |s: &str| -> u32 {
            if s.is_empty() {
                return 0;
            }
            *interned.entry(s.to_owned()).or_insert_with(|| {
                let off = strtab.len() as u32;
                strtab.extend_from_slice(s.as_bytes());
                strtab.push(0);
                off
            })
        };
        let section_names: Vec<u32> = sections.iter().map(|s| intern(s.name)).collect();
        let strtab_name = intern(".strtab");
        let symtab_name = intern(".symtab");
        let symbol_names: Vec<u32> = symbols.iter().map(|s| intern(&s.name)).collect();

        let strtab_index = sections.len() + 1;
        let symtab_index = sections.len() + 2;
        let count = sections.len() + 3;
        let (ehdr, shdr, symsz) = if opts.class64 {
            (64, 64, 24)
        } else {
            (52, 40, 16)
        };

        let mut symtab = vec![0u8; symsz];
        for (s, &name) in symbols.iter().zip(&symbol_names) {
            let shndx = s.section + 1;
            if opts.class64 {
                put32(&mut symtab, name);
                symtab.push(0x10 | s.kind); // STB_GLOBAL
                symtab.push(0);
                put16(&mut symtab, shndx);
                put64(&mut symtab, s.value);
                put64(&mut symtab, 8);
            } else {
                put32(&mut symtab, name);
                put32(&mut symtab, s.value as u32);
                put32(&mut symtab, 8);
                symtab.push(0x10 | s.kind);
                symtab.push(0);
                put16(&mut symtab, shndx);
            }
        }

        let mut out = vec![0u8; ehdr];
        // (name, type, flags, offset, size, link, entsize)
        let mut headers: Vec<(u32, u32, u64, u64, u64, u32, u64)> = Vec::new();
        headers.push((
            0,
            SHT_NULL,
            0,
            0,
            if opts.extended { count as u64 } else { 0 },
            if opts.extended {
                strtab_index as u32
            } else {
                0
            },
            0,
        ));
        for (s, &name) in sections.iter().zip(&section_names) {
            let off = out.len() as u64;
            out.extend_from_slice(&s.data);
            headers.push((name, s.ty, s.flags, off, s.data.len() as u64, 0, 0));
        }
        let off = out.len() as u64;
        out.extend_from_slice(&strtab);
        headers.push((strtab_name, SHT_STRTAB, 0, off, strtab.len() as u64, 0, 0));
        let off = out.len() as u64;
        out.extend_from_slice(&symtab);
        headers.push((
            symtab_name,
            SHT_SYMTAB,
            0,
            off,
            symtab.len() as u64,
            strtab_index as u32,
            symsz as u64,
        ));
        assert_eq!(headers.len(), count);
        assert_eq!(symtab_index, count - 1);

        let shoff = out.len() as u64;
        for &(name, ty, flags, off, size, link, entsize) in &headers {
            put32(&mut out, name);
            put32(&mut out, ty);
            putw(&mut out, flags);
            putw(&mut out, 0); // addr
            putw(&mut out, off);
            putw(&mut out, size);
            put32(&mut out, link);
            put32(&mut out, 0); // info
            putw(&mut out, 8); // addralign
            putw(&mut out, entsize);
        }

        let mut header = Vec::new();
        header.extend_from_slice(&ELF_MAGIC);
        header.push(if opts.class64 { ELFCLASS64 } else { ELFCLASS32 });
        header.push(if opts.big { ELFDATA2MSB } else { ELFDATA2LSB });
        header.push(1);
        header.resize(16, 0);
        put16(&mut header, 1); // ET_REL
        put16(&mut header, opts.machine);
        put32(&mut header, 1);
        putw(&mut header, 0); // entry
        putw(&mut header, 0); // phoff
        putw(&mut header, shoff);
        put32(&mut header, 0); // flags
        put16(&mut header, ehdr as u16);
        put16(&mut header, 0);
        put16(&mut header, 0);
        put16(&mut header, shdr as u16);
        put16(&mut header, if opts.extended { 0 } else { count as u16 });
        put16(
            &mut header,
            if opts.extended {
                SHN_XINDEX
            } else {
                strtab_index as u16
            },
        );
        assert_eq!(header.len(), ehdr);
        out[..ehdr].copy_from_slice(&header);
        out
    }

    const AX: u64 = 0x2 | SHF_EXECINSTR;
    const WA: u64 = 0x1 | 0x2;
    const STT_OBJECT: u8 = 1;

    fn sample(opts: &Syn) -> Vec<u8> {
        build(
            opts,
            &[
                sect(".text", SHT_PROGBITS, AX, &[0; 16]),
                sect("kprobe/foo", SHT_PROGBITS, AX, &[0; 32]),
                sect("tc", SHT_PROGBITS, AX, &[0; 8]),
                sect("empty_prog", SHT_PROGBITS, AX, &[]),
                sect(".maps", SHT_PROGBITS, WA, &[0; 64]),
                sect("license", SHT_PROGBITS, WA, b"MIT\0junk"),
                sect(".bss", SHT_NOBITS, WA, &[]),
            ],
            &[
                sym("helper", STT_FUNC, 0, 0),
                sym("second", STT_FUNC, 1, 16),
                sym("first", STT_FUNC, 1, 0),
                sym("ingress", STT_FUNC, 2, 0),
                sym("zeta", STT_OBJECT, 4, 32),
                sym("alpha", STT_OBJECT, 4, 0),
                sym("alpha", STT_OBJECT, 4, 0),
                sym("counter", STT_OBJECT, 6, 0),
            ],
        )
    }

    fn sample_facts(endianness: Endianness) -> EbpfFacts {
        EbpfFacts {
            endianness,
            programs: vec![
                ProgramSection {
                    section: "kprobe/foo".into(),
                    program_type: "kprobe".into(),
                    functions: vec!["first".into(), "second".into()],
                },
                ProgramSection {
                    section: "tc".into(),
                    program_type: "tc".into(),
                    functions: vec!["ingress".into()],
                },
            ],
            maps: vec!["alpha".into(), "zeta".into()],
            license: Some("MIT".into()),
            btf: false,
            btf_ext: false,
            core_relocations: false,
        }
    }

    #[test]
    fn synthetic_objects_in_all_classes_and_byte_orders() {
        for class64 in [false, true] {
            for big in [false, true] {
                for extended in [false, true] {
                    let opts = Syn {
                        class64,
                        big,
                        machine: EM_BPF,
                        extended,
                    };
                    let bytes = sample(&opts);
                    let endianness = if big {
                        Endianness::Big
                    } else {
                        Endianness::Little
                    };
                    assert_eq!(
                        sniff(&bytes),
                        ElfKind::Elf {
                            machine: EM_BPF,
                            endianness,
                            class64
                        }
                    );
                    assert_eq!(
                        inspect(&bytes),
                        Ok(sample_facts(endianness)),
                        "class64 {class64} big {big} extended {extended}"
                    );
                    for len in 0..bytes.len() {
                        let _ = inspect(&bytes[..len]);
                    }
                }
            }
        }
    }

    #[test]
    fn btf_ext_with_core_relocations_is_a_fact() {
        let opts = Syn {
            class64: true,
            big: false,
            machine: EM_BPF,
            extended: false,
        };
        let object = |btf_ext: Vec<u8>| {
            let mut ext = btf_ext;
            ext.extend_from_slice(&[0; 64]);
            build(
                &opts,
                &[
                    sect("xdp", SHT_PROGBITS, AX, &[0; 8]),
                    sect(".BTF", SHT_PROGBITS, 0, &[0; 24]),
                    sect(".BTF.ext", SHT_PROGBITS, 0, &ext),
                ],
                &[sym("prog", STT_FUNC, 0, 0)],
            )
        };
        let with = inspect(&object(btf_ext::header(false, 32, 28))).unwrap();
        assert!(with.btf && with.btf_ext && with.core_relocations);
        let without = inspect(&object(btf_ext::header(false, 32, 0))).unwrap();
        assert!(without.btf && without.btf_ext && !without.core_relocations);
        let old_header = inspect(&object(btf_ext::header(false, 24, 28))).unwrap();
        assert!(!old_header.core_relocations);
        // Facts stored before the field existed read as no relocations.
        let mut json = serde_json::to_value(&without).unwrap();
        json.as_object_mut().unwrap().remove("core_relocations");
        assert_eq!(serde_json::from_value::<EbpfFacts>(json).unwrap(), without);
    }

    #[test]
    fn synthetic_structural_errors_are_malformed() {
        let opts = Syn {
            class64: true,
            big: false,
            machine: EM_BPF,
            extended: false,
        };
        let is_malformed = |bytes: &[u8], needle: &str| match inspect(bytes) {
            Err(ElfError::Malformed(reason)) => {
                assert!(reason.contains(needle), "{reason:?} lacks {needle:?}")
            }
            other => panic!("expected Malformed({needle}), got {other:?}"),
        };

        // A symbol pointing at a section that does not exist.
        let bytes = build(
            &opts,
            &[sect("xdp", SHT_PROGBITS, AX, &[0; 8])],
            &[sym("f", STT_FUNC, 40, 0)],
        );
        is_malformed(&bytes, "refers to section");

        // e_shentsize too small.
        let mut bytes = sample(&opts);
        bytes[58] = 10;
        bytes[59] = 0;
        is_malformed(&bytes, "e_shentsize");

        // e_shnum far larger than the file can hold.
        let mut bytes = sample(&opts);
        bytes[60] = 0xfe;
        bytes[61] = 0xff;
        is_malformed(&bytes, "extends past the end");

        // e_shoff pointing past the end.
        let mut bytes = sample(&opts);
        bytes[40..48].copy_from_slice(&u64::MAX.to_le_bytes());
        is_malformed(&bytes, "e_shoff");

        // String table without a terminating NUL.
        let mut bytes = build(
            &opts,
            &[sect("xdp", SHT_PROGBITS, AX, &[0; 8])],
            &[sym("last_name", STT_FUNC, 0, 0)],
        );
        let strtab_end = bytes.windows(10).position(|w| w == b"last_name\0").unwrap() + 9;
        bytes[strtab_end] = b'!';
        is_malformed(&bytes, "not NUL-terminated");

        // e_shstrndx out of range.
        let mut bytes = sample(&opts);
        bytes[62] = 200;
        is_malformed(&bytes, "e_shstrndx");
    }

    #[test]
    fn shared_long_names_do_not_blow_up_memory() {
        // 20,000 FUNC symbols all naming one 64 KiB string: without a budget
        // the output would hold 1.3 GB of names.
        let long = "f".repeat(64 * 1024);
        let symbols: Vec<SynSymbol> = (0..20_000).map(|_| sym(&long, STT_FUNC, 0, 0)).collect();
        let opts = Syn {
            class64: true,
            big: false,
            machine: EM_BPF,
            extended: false,
        };
        let bytes = build(&opts, &[sect("xdp", SHT_PROGBITS, AX, &[0; 8])], &symbols);
        assert!(bytes.len() < 1024 * 1024);
        match inspect(&bytes) {
            Err(ElfError::Malformed(reason)) => assert!(reason.contains("names add up")),
            other => panic!("expected the name budget to trip, got {other:?}"),
        }
        // A handful of symbols sharing that name is fine.
        let few: Vec<SynSymbol> = (0..4).map(|i| sym(&long, STT_FUNC, 0, i)).collect();
        let bytes = build(&opts, &[sect("xdp", SHT_PROGBITS, AX, &[0; 8])], &few);
        assert_eq!(inspect(&bytes).unwrap().programs[0].functions.len(), 4);
    }

    #[test]
    fn no_sections_and_other_machines() {
        // A bare 64-byte eBPF header with no section header table.
        let mut header = vec![0u8; 64];
        header[..4].copy_from_slice(&ELF_MAGIC);
        header[EI_CLASS] = ELFCLASS64;
        header[EI_DATA] = ELFDATA2LSB;
        header[18..20].copy_from_slice(&EM_BPF.to_le_bytes());
        let facts = inspect(&header).unwrap();
        assert!(facts.programs.is_empty() && facts.maps.is_empty() && facts.license.is_none());
        assert!(matches!(
            inspect(&header[..40]),
            Err(ElfError::Malformed(_))
        ));

        let opts = Syn {
            class64: false,
            big: true,
            machine: 8, // MIPS
            extended: false,
        };
        assert_eq!(
            inspect(&sample(&opts)),
            Err(ElfError::NotBpf { machine: 8 })
        );
    }

    #[test]
    fn endianness_serde_names() {
        use serde::de::value::Error;
        use serde::de::IntoDeserializer;
        let de = |s: &'static str| {
            Endianness::deserialize(IntoDeserializer::<Error>::into_deserializer(s))
        };
        assert_eq!(de("little").unwrap(), Endianness::Little);
        assert_eq!(de("big").unwrap(), Endianness::Big);
        assert!(de("Little").is_err());
    }
}
