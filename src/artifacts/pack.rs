//! tar+zstd layers: packs a payload as a deterministic one-entry tar
//! compressed with zstd (fixed mtime, owner and mode, so the same bytes
//! always give the same layer digest), and looks into a payload that
//! already is a tar.zst in one bounded pass: archive hygiene, the
//! decompressed-bytes and entry budgets, and the first ELF object.
//!
//! The walk reads raw headers (no preprocessing by the tar crate) so it
//! sees every GNU long name and PAX record itself: a name that any
//! common unpacker could take (the long name, a PAX `path`, the header's
//! name field, the ustar prefix field) must be safe, not just the one
//! the tar crate would pick.

use std::cell::Cell;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::rc::Rc;

use super::payload::PayloadError;

pub(crate) const ZSTD_MAGIC: [u8; 4] = [0x28, 0xB5, 0x2F, 0xFD];
pub(crate) const ELF_MAGIC: [u8; 4] = [0x7F, b'E', b'L', b'F'];

/// Largest zstd window (log2) accepted in a pre-packed payload: 8 MiB,
/// enough for levels 1 to 19 without `--long`. A frame may declare up to
/// 2 GiB, which the decoder would allocate for one request.
pub const MAX_ZSTD_WINDOW_LOG: u32 = 23;
/// Largest GNU long-name or PAX header data read into memory.
const MAX_METADATA_BYTES: u64 = 64 * 1024;
const TAR_BLOCK: u64 = 512;
/// PAX records that cannot name, link or grant anything.
const HARMLESS_PAX_KEYS: &[&str] = &[
    "mtime",
    "atime",
    "ctime",
    "uid",
    "gid",
    "uname",
    "gname",
    "comment",
    "charset",
    "hdrcharset",
    "SCHILY.dev",
    "SCHILY.ino",
    "SCHILY.nlink",
    "LIBARCHIVE.creationtime",
];

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
pub fn pack_tar_zstd(entry: &str, payload: &[u8]) -> io::Result<Vec<u8>> {
    let out = Vec::with_capacity(payload.len() / 2 + 1024);
    pack_tar_zstd_to(entry, payload.len() as u64, payload, out)
}

/// Streams `size` bytes from `data` into `out` as a one-entry tar named
/// `entry`, compressed with zstd: the same bytes as [`pack_tar_zstd`].
/// Fails if `data` ends before `size` bytes.
pub fn pack_tar_zstd_to<R: Read, W: Write>(
    entry: &str,
    size: u64,
    data: R,
    out: W,
) -> io::Result<W> {
    let encoder = zstd::stream::write::Encoder::new(out, 3)?;
    let mut builder = tar::Builder::new(encoder);
    let mut header = tar::Header::new_gnu();
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    let mut data = data.take(size);
    builder.append_data(&mut header, entry, &mut data)?;
    if data.limit() != 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "payload shorter than its declared size",
        ));
    }
    let mut encoder = builder.into_inner()?;
    encoder.flush()?;
    encoder.finish()
}

/// Budgets of one look into a pre-packed payload.
#[derive(Debug, Clone, Copy)]
pub struct ArchiveLimits {
    /// The decompressed tar stream (headers, data, padding) may not be
    /// longer than this.
    pub max_unpacked_bytes: u64,
    /// Headers of any kind (long names and PAX headers included).
    pub max_entries: u64,
}

/// What a look into a payload that starts with the zstd magic found.
#[derive(Debug)]
pub enum ArchiveVerdict {
    /// Not a tar in an intact zstd stream: the payload is packed like any
    /// other (it ends up as one file inside a new tar).
    NotAnArchive,
    /// A tar that passed every check: stored as is.
    Archive {
        /// The first regular file that is an ELF object.
        elf: Option<Vec<u8>>,
        /// Regular files and directories.
        members: u64,
    },
}

/// Walks a tar.zst once, within `limits`. Refusals (an unsafe entry, a
/// budget crossed, a window too large) are errors; a stream that is not
/// a tar.zst at all is [`ArchiveVerdict::NotAnArchive`]. Blocking.
pub fn inspect_tar_zstd<R: Read>(
    compressed: R,
    limits: ArchiveLimits,
) -> Result<ArchiveVerdict, PayloadError> {
    let mut buffered = BufReader::with_capacity(zstd::zstd_safe::DCtx::in_size(), compressed);
    if let Some(window) = first_frame_window(buffered.fill_buf()?) {
        if window > 1u64 << MAX_ZSTD_WINDOW_LOG {
            return Err(PayloadError::InvalidArchive(format!(
                "the zstd frame needs a {window}-byte window; at most {} bytes are accepted \
                 (compress without --long or --ultra)",
                1u64 << MAX_ZSTD_WINDOW_LOG
            )));
        }
    }
    let mut decoder = zstd::stream::read::Decoder::with_buffer(buffered)?;
    decoder.window_log_max(MAX_ZSTD_WINDOW_LOG)?;
    let exceeded = Rc::new(Cell::new(false));
    let budgeted = Budgeted {
        inner: decoder,
        read: 0,
        max: limits.max_unpacked_bytes,
        exceeded: exceeded.clone(),
    };
    let over_budget = PayloadError::UnpackedTooLarge {
        max: limits.max_unpacked_bytes,
    };
    let mut archive = tar::Archive::new(budgeted);
    let walked = match walk(&mut archive, limits) {
        Ok(w) => w,
        Err(Stop::Refused(e)) => return Err(e),
        Err(Stop::Broken(_)) if exceeded.get() => return Err(over_budget),
        Err(Stop::Broken(e)) => {
            tracing::debug!("payload with the zstd magic is not a tar.zst ({e}); packed as a file");
            return Ok(ArchiveVerdict::NotAnArchive);
        }
    };
    let Some((members, elf)) = walked else {
        return Ok(ArchiveVerdict::NotAnArchive);
    };
    // Past the end-of-archive marker only zeros may follow: an unpacker
    // told to ignore zero blocks would find entries nobody checked.
    let mut rest = archive.into_inner();
    match only_zeros(&mut rest) {
        Ok(true) => Ok(ArchiveVerdict::Archive { elf, members }),
        Ok(false) => Err(PayloadError::InvalidArchive(
            "the archive has data after its end-of-archive marker".into(),
        )),
        Err(_) if exceeded.get() => Err(over_budget),
        Err(_) => Ok(ArchiveVerdict::NotAnArchive),
    }
}

/// Why a walk stopped early.
enum Stop {
    /// The archive is refused (the error says why).
    Refused(PayloadError),
    /// The stream is not a well-formed tar.zst (or the budget reader cut it).
    Broken(io::Error),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Broken(e)
    }
}

fn unsafe_entry(entry: &[u8], reason: impl Into<String>) -> Stop {
    Stop::Refused(PayloadError::UnsafeEntry {
        entry: display_name(entry),
        reason: reason.into(),
    })
}

/// Extension headers seen since the last member; they describe the next.
#[derive(Default)]
struct Pending {
    long_name: Option<Vec<u8>>,
    pax: Option<Vec<u8>>,
}

/// The walk proper: `Ok(None)` when the tar holds no member or ends with
/// extension headers that describe nothing.
type Walked = Option<(u64, Option<Vec<u8>>)>;

fn walk<R: Read>(archive: &mut tar::Archive<R>, limits: ArchiveLimits) -> Result<Walked, Stop> {
    let mut headers = 0u64;
    let mut declared = 0u64;
    let mut members = 0u64;
    let mut elf: Option<Vec<u8>> = None;
    let mut pending = Pending::default();
    for entry in archive.entries()?.raw(true) {
        let mut entry = entry?;
        headers += 1;
        if headers > limits.max_entries {
            return Err(Stop::Refused(PayloadError::TooManyEntries {
                max: limits.max_entries,
            }));
        }
        // The budget is checked against what the header declares, before
        // a byte of the entry is decompressed.
        let size = entry.size();
        declared = declared
            .saturating_add(TAR_BLOCK)
            .saturating_add(size.div_ceil(TAR_BLOCK).saturating_mul(TAR_BLOCK));
        if declared > limits.max_unpacked_bytes {
            return Err(Stop::Refused(PayloadError::UnpackedTooLarge {
                max: limits.max_unpacked_bytes,
            }));
        }
        let header = entry.header().clone();
        // The header's own name fields: what an unpacker that does not
        // know an extension would extract it as.
        let name_field = until_nul(&header.as_old().name);
        let prefix_field = until_nul(header.as_bytes().get(345..500).unwrap_or_default());
        for field in [name_field, prefix_field] {
            if let Some(reason) = path_problem(field, false) {
                return Err(unsafe_entry(&header.path_bytes(), reason));
            }
        }
        let kind = header.entry_type();
        match kind {
            tar::EntryType::GNULongName => {
                if pending.long_name.is_some() {
                    return Err(unsafe_entry(name_field, "two GNU long names for one entry"));
                }
                let mut name = read_metadata(&mut entry, size, name_field)?;
                if name.last() == Some(&0) {
                    name.pop();
                }
                if let Some(reason) = path_problem(&name, true) {
                    return Err(unsafe_entry(&name, reason));
                }
                pending.long_name = Some(name);
                continue;
            }
            tar::EntryType::XHeader => {
                if pending.pax.is_some() {
                    return Err(unsafe_entry(name_field, "two PAX headers for one entry"));
                }
                let records = read_metadata(&mut entry, size, name_field)?;
                check_pax(&records, false, name_field)?;
                pending.pax = Some(records);
                continue;
            }
            tar::EntryType::XGlobalHeader => {
                let records = read_metadata(&mut entry, size, name_field)?;
                check_pax(&records, true, name_field)?;
                continue;
            }
            tar::EntryType::Regular | tar::EntryType::Directory => {}
            other => {
                let name = effective_name(&pending, &header);
                return Err(unsafe_entry(&name, refused_kind(other)));
            }
        }
        check_member(&header, size, &pending)?;
        pending = Pending::default();
        members += 1;
        if kind == tar::EntryType::Regular && elf.is_none() && size >= ELF_MAGIC.len() as u64 {
            let mut head = [0u8; 4];
            entry.read_exact(&mut head)?;
            if head == ELF_MAGIC {
                // At most the declared size, which is within the budget.
                let mut object = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
                object.extend_from_slice(&head);
                entry.read_to_end(&mut object)?;
                elf = Some(object);
            }
        }
    }
    if members == 0 || pending.long_name.is_some() || pending.pax.is_some() {
        return Ok(None);
    }
    Ok(Some((members, elf)))
}

/// Checks a regular file or directory header with the extension headers
/// that describe it.
fn check_member(header: &tar::Header, size: u64, pending: &Pending) -> Result<(), Stop> {
    let name = effective_name(pending, header);
    let pax_paths: Vec<&[u8]> = pax_values(pending.pax.as_deref(), b"path").collect();
    for path in pending
        .long_name
        .iter()
        .map(|n| n.as_slice())
        .chain(pax_paths)
    {
        if let Some(reason) = path_problem(path, true) {
            return Err(unsafe_entry(path, reason));
        }
    }
    let header_path = header.path_bytes();
    if pending.long_name.is_none() && pax_values(pending.pax.as_deref(), b"path").next().is_none() {
        if let Some(reason) = path_problem(&header_path, true) {
            return Err(unsafe_entry(&header_path, reason));
        }
    }
    // The tar crate frames by the PAX size, other readers may not.
    for value in pax_values(pending.pax.as_deref(), b"size") {
        if std::str::from_utf8(value)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            != Some(size)
        {
            return Err(unsafe_entry(
                &name,
                "its PAX size differs from its header size",
            ));
        }
    }
    let mode = header
        .mode()
        .map_err(|_| unsafe_entry(&name, "its mode field is unreadable"))?;
    if mode & 0o6000 != 0 {
        return Err(unsafe_entry(&name, "it has the setuid or setgid bit"));
    }
    match header.entry_type() {
        // Some readers do not skip a directory's data and would read it as
        // headers.
        tar::EntryType::Directory if size != 0 => {
            Err(unsafe_entry(&name, "it is a directory with data"))
        }
        // Old readers take a regular entry whose name ends with `/` for a
        // directory (and then do not skip its data).
        tar::EntryType::Regular if name.ends_with(b"/") || header_path.ends_with(b"/") => Err(
            unsafe_entry(&name, "it is a regular file with a directory name"),
        ),
        _ => Ok(()),
    }
}

/// The name most readers give a member: the GNU long name, else the PAX
/// path, else the header's (ustar-prefixed) name.
fn effective_name(pending: &Pending, header: &tar::Header) -> Vec<u8> {
    if let Some(n) = &pending.long_name {
        return n.clone();
    }
    if let Some(p) = pax_values(pending.pax.as_deref(), b"path").next() {
        return p.to_vec();
    }
    header.path_bytes().into_owned()
}

fn pax_values<'a>(records: Option<&'a [u8]>, key: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    records
        .into_iter()
        .flat_map(tar::PaxExtensions::new)
        .filter_map(|r| r.ok())
        .filter(move |r| r.key_bytes() == key)
        .map(|r| r.value_bytes())
}

/// PAX records may only carry a path (checked with the member), a size
/// equal to the header's (local headers only), or harmless metadata.
fn check_pax(records: &[u8], global: bool, header_name: &[u8]) -> Result<(), Stop> {
    for record in tar::PaxExtensions::new(records) {
        let Ok(record) = record else {
            return Err(unsafe_entry(header_name, "a PAX record is malformed"));
        };
        let key = String::from_utf8_lossy(record.key_bytes());
        let allowed = HARMLESS_PAX_KEYS.contains(&key.as_ref())
            || (!global && (key == "path" || key == "size"));
        if !allowed {
            let scope = if global { "global " } else { "" };
            let why = match key.as_ref() {
                "linkpath" => " (links are not allowed)".to_string(),
                k if k.starts_with("GNU.sparse.") => " (sparse files are not allowed)".into(),
                k if k.contains("xattr") => " (extended attributes are not allowed)".into(),
                _ => String::new(),
            };
            return Err(unsafe_entry(
                header_name,
                format!(
                    "its {scope}PAX header has the record {:?}{why}",
                    display_name(key.as_bytes())
                ),
            ));
        }
    }
    Ok(())
}

fn refused_kind(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Symlink => "it is a symbolic link (links are not allowed)".into(),
        tar::EntryType::Link => "it is a hard link (links are not allowed)".into(),
        tar::EntryType::Char => "it is a character device".into(),
        tar::EntryType::Block => "it is a block device".into(),
        tar::EntryType::Fifo => "it is a FIFO".into(),
        tar::EntryType::Continuous => "it is a contiguous file (type 7)".into(),
        tar::EntryType::GNULongLink => "it has a GNU long link name (links are not allowed)".into(),
        tar::EntryType::GNUSparse => "it is a GNU sparse file".into(),
        other => format!(
            "its type {:?} is neither a regular file nor a directory",
            char::from(other.as_byte())
        ),
    }
}

/// Why `path` may not be unpacked, if it may not. `member` is false for
/// the raw fields of a header, where an empty value is normal.
fn path_problem(path: &[u8], member: bool) -> Option<&'static str> {
    if path.is_empty() {
        return member.then_some("its path is empty");
    }
    if path.contains(&0) {
        return Some("its path contains a NUL byte");
    }
    if path.first() == Some(&b'/') {
        return Some("its path is absolute");
    }
    if path.contains(&b'\\') {
        return Some("its path contains a backslash (a separator on some systems)");
    }
    if path.split(|b| *b == b'/').any(|c| c == b"..") {
        return Some("its path has a `..` component");
    }
    None
}

fn read_metadata<R: Read>(entry: &mut R, size: u64, name: &[u8]) -> Result<Vec<u8>, Stop> {
    if size > MAX_METADATA_BYTES {
        return Err(unsafe_entry(
            name,
            format!("its long-name or PAX data is over {MAX_METADATA_BYTES} bytes"),
        ));
    }
    let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0));
    entry.read_to_end(&mut data)?;
    Ok(data)
}

fn until_nul(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|b| *b == 0).unwrap_or(field.len());
    field.get(..end).unwrap_or_default()
}

/// An entry name fit for an error message: lossy UTF-8, at most 200
/// characters.
fn display_name(name: &[u8]) -> String {
    String::from_utf8_lossy(name).chars().take(200).collect()
}

fn only_zeros<R: Read>(reader: &mut R) -> io::Result<bool> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => return Ok(true),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.get(..n).unwrap_or_default().iter().any(|b| *b != 0) {
            return Ok(false);
        }
    }
}

/// The window size the first zstd frame declares, if its header is there.
fn first_frame_window(head: &[u8]) -> Option<u64> {
    if !head.starts_with(&ZSTD_MAGIC) {
        return None;
    }
    let descriptor = *head.get(4)?;
    let single_segment = descriptor & 0x20 != 0;
    if !single_segment {
        let window = *head.get(5)?;
        let log = 10 + u32::from(window >> 3);
        let base = 1u64 << log;
        return Some(base + (base / 8) * u64::from(window & 7));
    }
    // A single-segment frame's window is its content size.
    let dict_id_len = [0usize, 1, 2, 4][usize::from(descriptor & 3)];
    let size_len = [1usize, 2, 4, 8][usize::from(descriptor >> 6)];
    let start = 5 + dict_id_len;
    let field = head.get(start..start + size_len)?;
    let mut le = [0u8; 8];
    le.get_mut(..size_len)?.copy_from_slice(field);
    let size = u64::from_le_bytes(le);
    Some(if size_len == 2 { size + 256 } else { size })
}

/// Counts what the zstd decoder yields and fails past `max`, setting
/// `exceeded` so the caller can tell the cut from a corrupt stream.
struct Budgeted<R> {
    inner: R,
    read: u64,
    max: u64,
    exceeded: Rc<Cell<bool>>,
}

impl<R: Read> Read for Budgeted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        // Ask for at most one byte past the budget, so crossing it costs
        // no more decompression than that.
        let room = self.max.saturating_sub(self.read).saturating_add(1);
        let want = buf.len().min(usize::try_from(room).unwrap_or(usize::MAX));
        let n = self.inner.read(buf.get_mut(..want).unwrap_or_default())?;
        self.read = self.read.saturating_add(n as u64);
        if self.read > self.max {
            self.exceeded.set(true);
            return Err(io::Error::other("decompressed-bytes budget exceeded"));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: ArchiveLimits = ArchiveLimits {
        max_unpacked_bytes: 1 << 20,
        max_entries: 100,
    };

    fn inspect(bytes: &[u8]) -> Result<ArchiveVerdict, PayloadError> {
        inspect_tar_zstd(bytes, LIMITS)
    }

    #[test]
    fn pack_roundtrip_is_deterministic_and_detected() {
        let a = pack_tar_zstd("x.bin", b"test data").unwrap();
        let b = pack_tar_zstd("x.bin", b"test data").unwrap();
        assert_eq!(a, b);
        assert!(matches!(
            inspect(&a),
            Ok(ArchiveVerdict::Archive { members: 1, .. })
        ));
        // zstd magic but garbage inside
        let mut bad = ZSTD_MAGIC.to_vec();
        bad.extend_from_slice(&[0u8; 64]);
        assert!(matches!(inspect(&bad), Ok(ArchiveVerdict::NotAnArchive)));
        // valid zstd of non-tar
        let not_tar = zstd::encode_all(&b"hello world, not a tar"[..], 3).unwrap();
        assert!(matches!(
            inspect(&not_tar),
            Ok(ArchiveVerdict::NotAnArchive)
        ));
    }

    #[test]
    fn finds_elf_inside() {
        let mut elf = ELF_MAGIC.to_vec();
        elf.extend_from_slice(b"rest");
        let packed = pack_tar_zstd("p.o", &elf).unwrap();
        match inspect(&packed) {
            Ok(ArchiveVerdict::Archive { elf: found, .. }) => assert_eq!(found, Some(elf)),
            other => panic!("{other:?}"),
        }
        let packed = pack_tar_zstd("p.bin", b"nope").unwrap();
        match inspect(&packed) {
            Ok(ArchiveVerdict::Archive { elf: found, .. }) => assert_eq!(found, None),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn entry_names() {
        assert_eq!(entry_name("team/prog", true), "prog.o");
        assert_eq!(entry_name("prog", false), "prog.bin");
    }

    #[test]
    fn streaming_pack_refuses_a_short_source() {
        let err = pack_tar_zstd_to("x.bin", 10, &b"short"[..], Vec::new()).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn frame_windows_are_read_from_the_header() {
        // Not single-segment, window descriptor exponent 17 → 128 MiB.
        assert_eq!(
            first_frame_window(&[0x28, 0xB5, 0x2F, 0xFD, 0x00, 17 << 3]),
            Some(1 << 27)
        );
        // Single segment, 1-byte content size.
        assert_eq!(
            first_frame_window(&[0x28, 0xB5, 0x2F, 0xFD, 0x20, 200]),
            Some(200)
        );
        // Single segment, 2-byte content size (+256).
        assert_eq!(
            first_frame_window(&[0x28, 0xB5, 0x2F, 0xFD, 0x60, 0, 1]),
            Some(512)
        );
        assert_eq!(first_frame_window(b"nope"), None);
        let real = zstd::encode_all(&[7u8; 100_000][..], 3).unwrap();
        assert!(first_frame_window(&real).unwrap() <= 1 << MAX_ZSTD_WINDOW_LOG);
    }

    #[test]
    fn path_rules() {
        assert_eq!(path_problem(b"a/b.o", true), None);
        assert_eq!(path_problem(b"./a/", true), None);
        assert_eq!(path_problem(b"a..b/c", true), None);
        assert!(path_problem(b"", true).is_some());
        assert_eq!(path_problem(b"", false), None);
        assert!(path_problem(b"../x", true).is_some());
        assert!(path_problem(b"a/..", true).is_some());
        assert!(path_problem(b"/etc", true).is_some());
        assert!(path_problem(b"a\0b", true).is_some());
        assert!(path_problem(b"a\\..\\b", true).is_some());
    }
}
