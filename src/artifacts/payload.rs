//! Turns the base64 `data` of a `POST /artifacts` into a ready layer in
//! one streaming pass with bounded cost: base64 is decoded in chunks; a
//! payload that is a tar.zst is spooled to a temp file, hashed as it is
//! written, and walked once within the budgets and archive rules of
//! [`super::pack::inspect_tar_zstd`] (it is stored as is); an ELF object
//! is spooled, then read back whole for inspection; anything else is
//! packed as a one-entry tar+zstd straight from the decoder into a temp
//! file, hashing the layer as it is written.
//!
//! Memory per call, besides one decode chunk and the zstd contexts (a few
//! MiB; a pre-packed payload's window is capped at 8 MiB): the base64
//! text, which the call owns and drops as soon as it is decoded, and
//! after that at most one ELF object (no larger than the payload cap).
//! So a create holds its body or its ELF object, never both.
//!
//! Everything here blocks (file I/O, compression): call [`prepare_payload`]
//! on a blocking thread, or use [`prepare_payload_blocking`], which does.

use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
use base64::Engine as _;
use bytes::Bytes;

use super::pack::{self, ArchiveLimits, ArchiveVerdict, ELF_MAGIC, ZSTD_MAGIC};
use super::ArtifactError;
use crate::oci::{Digest, Sha256Hasher};

/// Entry budget of a pre-packed archive (headers of any kind).
pub const DEFAULT_MAX_ARCHIVE_ENTRIES: u64 = 10_000;
/// Base64 characters decoded per step (a multiple of 4): 192 KiB out.
const DECODE_CHUNK: usize = 256 * 1024;
/// Temp files start with `.`, outside every name grammar; each is
/// unlinked as soon as it is open, so it never shows in a listing.
const SPOOL_PREFIX: &str = ".spool-";

/// The budgets of one payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PayloadLimits {
    /// Decoded payload bytes (`BPF_REGISTRY_MAX_ARTIFACT_BYTES`).
    pub max_payload_bytes: u64,
    /// Decompressed bytes of a pre-packed tar.zst (its whole tar stream).
    pub max_unpacked_bytes: u64,
    /// Headers in a pre-packed tar.zst.
    pub max_archive_entries: u64,
}

impl PayloadLimits {
    /// The artifact cap for both sizes, and the default entry budget.
    pub fn for_artifact_cap(max_artifact_bytes: u64) -> Self {
        PayloadLimits {
            max_payload_bytes: max_artifact_bytes,
            max_unpacked_bytes: max_artifact_bytes,
            max_archive_entries: DEFAULT_MAX_ARCHIVE_ENTRIES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("data is not valid base64: {0}")]
    InvalidBase64(String),
    /// The decoded payload is over the cap (found before decoding it).
    #[error("payload is over the {max}-byte limit")]
    TooLarge { max: u64 },
    /// A pre-packed archive decompresses to more than its budget.
    #[error("the archive unpacks to more than {max} bytes")]
    UnpackedTooLarge { max: u64 },
    #[error("the archive has more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error("archive entry {entry:?} is refused: {reason}")]
    UnsafeEntry { entry: String, reason: String },
    /// Refused for a reason that belongs to no single entry.
    #[error("{0}")]
    InvalidArchive(String),
    #[error("spooling the payload failed: {0}")]
    Io(#[from] io::Error),
}

impl From<PayloadError> for ArtifactError {
    fn from(e: PayloadError) -> Self {
        match e {
            PayloadError::InvalidBase64(m) => ArtifactError::InvalidBase64(m),
            PayloadError::TooLarge { max } => ArtifactError::TooLarge { max },
            PayloadError::UnpackedTooLarge { max } => ArtifactError::ArchiveTooLarge { max },
            PayloadError::TooManyEntries { .. }
            | PayloadError::UnsafeEntry { .. }
            | PayloadError::InvalidArchive(_) => ArtifactError::InvalidArtifact(e.to_string()),
            // The spool shares the data dir's disk: full is 507, like the store.
            PayloadError::Io(e) if is_disk_full(&e) => {
                let source = match e.raw_os_error() {
                    Some(_) => e,
                    None => io::Error::from_raw_os_error(ENOSPC),
                };
                ArtifactError::Registry(crate::registry::RegistryError::Storage(
                    crate::storage::StorageError::Io {
                        path: crate::storage::paths::SPOOL_DIR.into(),
                        source,
                    },
                ))
            }
            PayloadError::Io(e) => ArtifactError::Internal(format!("payload spool: {e}")),
        }
    }
}

const ENOSPC: i32 = 28;
const EDQUOT: i32 = 122;

/// No space (or quota) left, also when a writer wrapped the OS error.
fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(ENOSPC | EDQUOT)) || e.kind() == io::ErrorKind::StorageFull
}

/// A payload turned into a layer.
#[derive(Debug)]
pub struct PreparedPayload {
    /// The tar+zstd layer, spooled.
    pub layer: Layer,
    /// The ELF object to inspect: the payload itself, or the first
    /// regular file of a pre-packed archive that is one.
    pub elf: Option<Vec<u8>>,
    /// The decoded payload starts with the ELF magic.
    pub payload_is_elf: bool,
    /// The payload was a tar.zst and is the layer as is.
    pub prepacked: bool,
    /// Decoded payload bytes.
    pub payload_size: u64,
}

/// A spooled layer: its size and digest, read back with [`Layer::into_reader`].
#[derive(Debug)]
pub struct Layer {
    spool: Spool,
    size: u64,
    digest: Digest,
}

impl Layer {
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn digest(&self) -> &Digest {
        &self.digest
    }

    /// The spool file (another handle on it) at its start, and the
    /// layer's length: for a store that copies it whole.
    pub fn source_file(&self) -> io::Result<(File, u64)> {
        let mut f = self.spool.file.try_clone()?;
        f.seek(SeekFrom::Start(0))?;
        Ok((f, self.size))
    }

    /// The layer's bytes from the start (blocking reads; e.g. feed it to
    /// `registry::io::reader_stream(Box::new(reader), layer.size())`).
    /// The temp file goes away with the reader.
    pub fn into_reader(mut self) -> io::Result<LayerReader> {
        self.spool.file.seek(SeekFrom::Start(0))?;
        Ok(LayerReader { spool: self.spool })
    }
}

/// Reads a [`Layer`] from its start.
#[derive(Debug)]
pub struct LayerReader {
    spool: Spool,
}

impl Read for LayerReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.spool.file.read(buf)
    }
}

/// Decodes `data` (base64, padded or not, surrounding ASCII whitespace
/// ignored, as before) and turns it into a layer within `limits`, using
/// temp files in `spool_dir`. `artifact_name` names the entry of a
/// packed payload (`<last component>.o` for ELF, else `.bin`).
///
/// `data` is taken so that it can be dropped as soon as it is decoded:
/// when it is the only handle on the request body, the body's memory is
/// free before an ELF object or an archive member is read into memory.
///
/// Blocking: call it from `spawn_blocking` (or [`prepare_payload_blocking`]).
pub fn prepare_payload(
    data: impl Into<Bytes>,
    artifact_name: &str,
    limits: &PayloadLimits,
    spool_dir: &Path,
) -> Result<PreparedPayload, PayloadError> {
    let text = trim_ascii(data.into());
    let payload_size = decoded_len(&text);
    if payload_size > limits.max_payload_bytes {
        return Err(PayloadError::TooLarge {
            max: limits.max_payload_bytes,
        });
    }
    let mut decoder = Base64Decoder::new(text, limits.max_payload_bytes);
    let head = decoder.head()?;
    if head.starts_with(&ZSTD_MAGIC) {
        return prepare_zstd(decoder, payload_size, artifact_name, limits, spool_dir);
    }
    if head.starts_with(&ELF_MAGIC) {
        return prepare_elf(decoder, payload_size, artifact_name, spool_dir);
    }
    let entry = pack::entry_name(artifact_name, false);
    let layer = pack_into_spool(&entry, payload_size, &mut decoder, spool_dir);
    let layer = match layer {
        Ok(l) => l,
        Err(e) => return Err(decoder.failure.take().unwrap_or(e)),
    };
    decoder.expect_end(payload_size)?;
    Ok(PreparedPayload {
        layer,
        elf: None,
        payload_is_elf: false,
        prepacked: false,
        payload_size,
    })
}

/// [`prepare_payload`] on the blocking pool; `data` is the base64 text
/// (e.g. `body.slice_ref(data_str.as_bytes())` when the decoded JSON
/// borrows from `body`).
pub async fn prepare_payload_blocking(
    data: Bytes,
    artifact_name: String,
    limits: PayloadLimits,
    spool_dir: PathBuf,
) -> Result<PreparedPayload, PayloadError> {
    tokio::task::spawn_blocking(move || prepare_payload(data, &artifact_name, &limits, &spool_dir))
        .await
        .map_err(|e| PayloadError::Io(io::Error::other(format!("payload worker failed: {e}"))))?
}

/// Makes `dir` the empty folder of this server's spool files: whatever an
/// earlier process left there (a crash between creating a spool file and
/// unlinking it) is removed. Call it at start-up, with the data dir held.
pub fn reset_spool_dir(dir: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let mut builder = std::fs::DirBuilder::new();
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt as _;
        builder.mode(0o700);
    }
    builder.create(dir)
}

/// An ELF payload: decoded whole into a spool file, the base64 text
/// dropped, then read back as the one object to inspect and packed from
/// that copy, so the body and the object are never in memory together.
fn prepare_elf(
    mut decoder: Base64Decoder,
    payload_size: u64,
    artifact_name: &str,
    spool_dir: &Path,
) -> Result<PreparedPayload, PayloadError> {
    let mut raw = Spool::create_in(spool_dir)?;
    decoder.copy_to(&mut raw.file)?;
    decoder.expect_end(payload_size)?;
    drop(decoder);
    raw.file.seek(SeekFrom::Start(0))?;
    let mut elf = Vec::with_capacity(capacity(payload_size));
    (&raw.file).take(payload_size).read_to_end(&mut elf)?;
    drop(raw);
    if elf.len() as u64 != payload_size {
        return Err(PayloadError::Io(io::Error::other(
            "the spooled payload is shorter than what was decoded",
        )));
    }
    let entry = pack::entry_name(artifact_name, true);
    let layer = pack_into_spool(&entry, payload_size, &elf[..], spool_dir)?;
    Ok(PreparedPayload {
        layer,
        elf: Some(elf),
        payload_is_elf: true,
        prepacked: false,
        payload_size,
    })
}

/// A payload with the zstd magic: spooled and hashed, the base64 text
/// dropped, then walked once; stored as is if it is a tar.zst, else
/// packed like any payload.
fn prepare_zstd(
    mut decoder: Base64Decoder,
    payload_size: u64,
    artifact_name: &str,
    limits: &PayloadLimits,
    spool_dir: &Path,
) -> Result<PreparedPayload, PayloadError> {
    let mut spool = Spool::create_in(spool_dir)?;
    let mut out = Hashing::new(&spool.file);
    decoder.copy_to(&mut out)?;
    decoder.expect_end(payload_size)?;
    drop(decoder);
    let (digest, size) = out.finish();
    spool.file.seek(SeekFrom::Start(0))?;
    let archive_limits = ArchiveLimits {
        max_unpacked_bytes: limits.max_unpacked_bytes,
        max_entries: limits.max_archive_entries,
    };
    let verdict = pack::inspect_tar_zstd(&spool.file, archive_limits)?;
    let (layer, elf, prepacked) = match verdict {
        ArchiveVerdict::Archive { elf, .. } => (
            Layer {
                spool,
                size,
                digest,
            },
            elf,
            true,
        ),
        ArchiveVerdict::NotAnArchive => {
            spool.file.seek(SeekFrom::Start(0))?;
            let source = BufReader::with_capacity(DECODE_CHUNK, &spool.file);
            let entry = pack::entry_name(artifact_name, false);
            (
                pack_into_spool(&entry, size, source, spool_dir)?,
                None,
                false,
            )
        }
    };
    Ok(PreparedPayload {
        layer,
        elf,
        payload_is_elf: false,
        prepacked,
        payload_size,
    })
}

fn pack_into_spool<R: Read>(
    entry: &str,
    size: u64,
    source: R,
    spool_dir: &Path,
) -> Result<Layer, PayloadError> {
    let spool = Spool::create_in(spool_dir)?;
    let out = pack::pack_tar_zstd_to(entry, size, source, Hashing::new(&spool.file))?;
    let (digest, size) = out.finish();
    Ok(Layer {
        spool,
        size,
        digest,
    })
}

/// `data` without surrounding ASCII whitespace (the same buffer).
fn trim_ascii(data: Bytes) -> Bytes {
    let trimmed = data.trim_ascii();
    if trimmed.is_empty() {
        return Bytes::new();
    }
    data.slice_ref(trimmed)
}

/// The decoded length of valid base64 `text` (padded or not).
fn decoded_len(text: &[u8]) -> u64 {
    let pad = text
        .iter()
        .rev()
        .take(2)
        .take_while(|b| **b == b'=')
        .count();
    let symbols = (text.len() - pad) as u64;
    symbols / 4 * 3
        + match symbols % 4 {
            2 => 1,
            3 => 2,
            _ => 0,
        }
}

fn capacity(size: u64) -> usize {
    usize::try_from(size).unwrap_or(0)
}

/// Base64 decoded a chunk at a time. Whole chunks take no padding; the
/// last one is decoded as before (padded, else unpadded), so exactly the
/// old inputs are accepted. Errors are kept in `failure` and the reader
/// reports a generic I/O error, which callers swap back.
struct Base64Decoder {
    text: Bytes,
    next: usize,
    buf: Vec<u8>,
    pos: usize,
    decoded: u64,
    max: u64,
    failure: Option<PayloadError>,
}

impl Base64Decoder {
    fn new(text: Bytes, max: u64) -> Self {
        Base64Decoder {
            text,
            next: 0,
            buf: Vec::with_capacity(DECODE_CHUNK / 4 * 3),
            pos: 0,
            decoded: 0,
            max,
            failure: None,
        }
    }

    /// Decodes the next chunk into `buf`; false at the end of the text.
    fn refill(&mut self) -> Result<bool, PayloadError> {
        let start = self.next;
        let Some(rest) = self.text.get(start..).filter(|r| !r.is_empty()) else {
            return Ok(false);
        };
        let last = rest.len() <= DECODE_CHUNK;
        let chunk = rest.get(..DECODE_CHUNK).unwrap_or(rest);
        self.buf.clear();
        self.pos = 0;
        let mut decoded = if last {
            STANDARD.decode_vec(chunk, &mut self.buf)
        } else {
            STANDARD_NO_PAD.decode_vec(chunk, &mut self.buf)
        };
        if last && decoded.is_err() {
            self.buf.clear();
            decoded = STANDARD_NO_PAD.decode_vec(chunk, &mut self.buf);
        }
        decoded.map_err(|e| PayloadError::InvalidBase64(shifted(e, start).to_string()))?;
        self.next = start + chunk.len();
        self.decoded += self.buf.len() as u64;
        if self.decoded > self.max {
            return Err(PayloadError::TooLarge { max: self.max });
        }
        Ok(true)
    }

    /// The first decoded bytes (the whole first chunk).
    fn head(&mut self) -> Result<&[u8], PayloadError> {
        if self.pos >= self.buf.len() {
            self.refill()?;
        }
        Ok(self.buf.get(self.pos..).unwrap_or_default())
    }

    /// Writes everything not yet read to `out`, a chunk at a time.
    fn copy_to<W: Write>(&mut self, out: &mut W) -> Result<(), PayloadError> {
        loop {
            out.write_all(self.buf.get(self.pos..).unwrap_or_default())?;
            self.pos = self.buf.len();
            if !self.refill()? {
                return Ok(());
            }
        }
    }

    /// Checks that the text is used up and gave `size` bytes (what
    /// `decoded_len` promised and the tar header says).
    fn expect_end(&mut self, size: u64) -> Result<(), PayloadError> {
        let unread = self.buf.len() > self.pos || self.refill()?;
        if unread || self.decoded != size {
            return Err(PayloadError::Io(io::Error::other(
                "decoded length differs from the computed length",
            )));
        }
        Ok(())
    }
}

impl Read for Base64Decoder {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.failure.is_none() && self.pos >= self.buf.len() {
            match self.refill() {
                Ok(true) => {}
                Ok(false) => return Ok(0),
                Err(e) => self.failure = Some(e),
            }
        }
        if self.failure.is_some() {
            return Err(io::Error::other("payload decoding stopped"));
        }
        let available = self.buf.get(self.pos..).unwrap_or_default();
        let n = available.len().min(out.len());
        out.get_mut(..n)
            .unwrap_or_default()
            .copy_from_slice(available.get(..n).unwrap_or_default());
        self.pos += n;
        Ok(n)
    }
}

/// Moves a chunk's error offsets to offsets in the whole text.
fn shifted(e: base64::DecodeError, offset: usize) -> base64::DecodeError {
    use base64::DecodeError as E;
    match e {
        E::InvalidByte(i, b) => E::InvalidByte(i + offset, b),
        E::InvalidLastSymbol(i, b) => E::InvalidLastSymbol(i + offset, b),
        E::InvalidLength(n) => E::InvalidLength(n + offset),
        E::InvalidPadding => E::InvalidPadding,
    }
}

/// Hashes and counts what is written through it.
struct Hashing<W> {
    inner: W,
    hasher: Sha256Hasher,
    written: u64,
}

impl<W: Write> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hasher: Sha256Hasher::new(),
            written: 0,
        }
    }

    fn finish(self) -> (Digest, u64) {
        (self.hasher.finish(), self.written)
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(buf.get(..n).unwrap_or_default());
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// An anonymous temp file: created under a `.`-name, unlinked at once
/// where the system allows it (it then lives as long as its handle, and
/// a crash leaves nothing behind), else removed on drop.
#[derive(Debug)]
struct Spool {
    file: File,
    leftover: Option<PathBuf>,
}

impl Spool {
    fn create_in(dir: &Path) -> io::Result<Spool> {
        // An anonymous file from the start where the system has them: the
        // file store can give it a name (`fs::link_anonymous`), so a
        // layer is written once, not spooled and then copied.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let anonymous = OpenOptions::new()
                .read(true)
                .write(true)
                .mode(0o666)
                .custom_flags(libc::O_TMPFILE)
                .open(dir);
            if let Ok(file) = anonymous {
                return Ok(Spool {
                    file,
                    leftover: None,
                });
            }
        }
        let path = dir.join(format!("{SPOOL_PREFIX}{}", uuid::Uuid::new_v4().simple()));
        let mut options = OpenOptions::new();
        options.read(true).write(true).create_new(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            options.mode(0o600);
        }
        let file = options.open(&path)?;
        let leftover = std::fs::remove_file(&path).err().map(|_| path);
        Ok(Spool { file, leftover })
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if let Some(path) = self.leftover.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;
    use tar::{EntryType, Header};

    const CAP: u64 = 64 * 1024 * 1024;

    fn b64(bytes: &[u8]) -> String {
        STANDARD.encode(bytes)
    }

    fn prepare_with(text: &[u8], limits: &PayloadLimits) -> Result<PreparedPayload, PayloadError> {
        let dir = tempfile::tempdir().unwrap();
        let out = prepare_payload(
            Bytes::copy_from_slice(text),
            "team/prog",
            limits,
            dir.path(),
        );
        // Spool files never keep a name.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
        out
    }

    fn prepare(payload: &[u8]) -> Result<PreparedPayload, PayloadError> {
        prepare_with(
            b64(payload).as_bytes(),
            &PayloadLimits::for_artifact_cap(CAP),
        )
    }

    fn layer_bytes(p: PreparedPayload) -> Vec<u8> {
        let size = p.layer.size();
        let mut out = Vec::new();
        p.layer
            .into_reader()
            .unwrap()
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out.len() as u64, size);
        out
    }

    /// `pack_tar_zstd` as it was before this module, frozen: the layer of
    /// a non-archive payload must stay byte-identical to it.
    fn reference_pack(entry: &str, payload: &[u8]) -> Vec<u8> {
        let encoder =
            zstd::stream::write::Encoder::new(Vec::with_capacity(payload.len() / 2 + 1024), 3)
                .unwrap();
        let mut builder = tar::Builder::new(encoder);
        let mut header = Header::new_gnu();
        header.set_size(payload.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        header.set_entry_type(EntryType::Regular);
        builder.append_data(&mut header, entry, payload).unwrap();
        let mut encoder = builder.into_inner().unwrap();
        encoder.flush().unwrap();
        encoder.finish().unwrap()
    }

    /// The old decoding of `data`: padded, else unpadded.
    fn reference_decode(text: &str) -> Option<Vec<u8>> {
        STANDARD
            .decode(text.trim().as_bytes())
            .or_else(|_| STANDARD_NO_PAD.decode(text.trim().as_bytes()))
            .ok()
    }

    /// Deterministic pseudo-random bytes (xorshift).
    fn noise(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 24) as u8
            })
            .collect()
    }

    fn elf_object(len: usize) -> Vec<u8> {
        let mut v = ELF_MAGIC.to_vec();
        v.extend(noise(len.saturating_sub(4), 7));
        v
    }

    // ---- hand-built archives -------------------------------------------

    /// A header with raw name bytes (no checks), `kind` and `size`.
    fn header(ustar: bool, name: &[u8], kind: EntryType, size: u64) -> Header {
        let mut h = if ustar {
            Header::new_ustar()
        } else {
            Header::new_gnu()
        };
        h.as_old_mut().name[..name.len()].copy_from_slice(name);
        h.set_size(size);
        h.set_mode(if kind == EntryType::Directory {
            0o755
        } else {
            0o644
        });
        h.set_mtime(0);
        h.set_entry_type(kind);
        h.set_cksum();
        h
    }

    fn file(name: &str, data: &[u8]) -> (Header, Vec<u8>) {
        (
            header(
                false,
                name.as_bytes(),
                EntryType::Regular,
                data.len() as u64,
            ),
            data.to_vec(),
        )
    }

    fn special(name: &str, kind: EntryType) -> (Header, Vec<u8>) {
        (header(false, name.as_bytes(), kind, 0), Vec::new())
    }

    fn long_name(name: &[u8]) -> (Header, Vec<u8>) {
        let mut data = name.to_vec();
        data.push(0);
        (
            header(
                false,
                b"././@LongLink",
                EntryType::GNULongName,
                data.len() as u64,
            ),
            data,
        )
    }

    fn pax(kind: EntryType, records: &[(&str, &[u8])]) -> (Header, Vec<u8>) {
        let mut data = Vec::new();
        for (k, v) in records {
            let body = k.len() + v.len() + 3;
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        (
            header(false, b"./PaxHeaders/x", kind, data.len() as u64),
            data,
        )
    }

    fn tar_of(entries: &[(Header, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (h, data) in entries {
            out.extend_from_slice(h.as_bytes());
            out.extend_from_slice(data);
            out.resize(out.len().div_ceil(512) * 512, 0);
        }
        out.resize(out.len() + 1024, 0);
        out
    }

    fn tar_zst(entries: &[(Header, Vec<u8>)]) -> Vec<u8> {
        zstd::encode_all(&tar_of(entries)[..], 3).unwrap()
    }

    enum Block<'a> {
        Raw(&'a [u8]),
        Rle(u8, u32),
    }

    /// A zstd frame written block by block: RLE blocks make a few bytes
    /// stand for 128 KiB each, the shape of a decompression bomb.
    fn zstd_frame(window_log: u8, blocks: &[Block<'_>]) -> Vec<u8> {
        let mut out = ZSTD_MAGIC.to_vec();
        out.push(0x00); // no content size, not single-segment, no checksum
        out.push((window_log - 10) << 3);
        for (i, block) in blocks.iter().enumerate() {
            let last = u32::from(i + 1 == blocks.len());
            let (kind, size, body): (u32, u32, &[u8]) = match block {
                Block::Raw(b) => (0, b.len() as u32, b),
                Block::Rle(byte, n) => (1, *n, std::slice::from_ref(byte)),
            };
            let h = last | (kind << 1) | (size << 3);
            out.extend_from_slice(&h.to_le_bytes()[..3]);
            out.extend_from_slice(body);
        }
        out
    }

    fn zero_blocks(total: u64) -> Vec<Block<'static>> {
        (0..total / (128 * 1024))
            .map(|_| Block::Rle(0, 128 * 1024))
            .collect()
    }

    fn refused(payload: &[u8]) -> (String, String) {
        match prepare(payload) {
            Err(PayloadError::UnsafeEntry { entry, reason }) => (entry, reason),
            other => panic!("expected UnsafeEntry, got {other:?}"),
        }
    }

    // ---- budgets ----------------------------------------------------------

    #[test]
    fn bomb_declaring_a_64_gib_entry_fails_fast_with_too_large() {
        let h = header(false, b"bomb.o", EntryType::Regular, 64 << 30);
        let mut blocks = vec![Block::Raw(h.as_bytes())];
        blocks.extend(zero_blocks(64 << 30));
        let bomb = zstd_frame(17, &blocks);
        assert!(
            bomb.len() > 2 << 20 && bomb.len() < 3 << 20,
            "{}",
            bomb.len()
        );
        let text = b64(&bomb);
        let started = Instant::now();
        let out = prepare_with(text.as_bytes(), &PayloadLimits::for_artifact_cap(CAP));
        let took = started.elapsed();
        eprintln!(
            "bomb: {} KiB frame declaring 64 GiB refused in {} ms",
            bomb.len() / 1024,
            took.as_millis()
        );
        assert!(
            matches!(out, Err(PayloadError::UnpackedTooLarge { max: CAP })),
            "{out:?}"
        );
        assert!(took.as_secs() < 5, "took {took:?}");
    }

    #[test]
    fn bomb_of_zeros_after_the_end_marker_fails_fast_with_too_large() {
        let tar = tar_of(&[file("ok.txt", b"fine")]);
        let mut blocks = vec![Block::Raw(&tar)];
        blocks.extend(zero_blocks(64 << 30));
        let bomb = zstd_frame(17, &blocks);
        let started = Instant::now();
        let out = prepare(&bomb);
        let took = started.elapsed();
        eprintln!(
            "tail bomb: 64 GiB of zeros after the end marker refused in {} ms",
            took.as_millis()
        );
        assert!(
            matches!(out, Err(PayloadError::UnpackedTooLarge { max: CAP })),
            "{out:?}"
        );
        assert!(took.as_secs() < 5, "took {took:?}");
    }

    #[test]
    fn archive_over_the_unpacked_budget_is_refused_and_at_the_budget_accepted() {
        let payload = tar_zst(&[file("a.bin", &[1u8; 10_000])]);
        let budget = tar_of(&[file("a.bin", &[1u8; 10_000])]).len() as u64;
        let mut limits = PayloadLimits::for_artifact_cap(CAP);
        limits.max_unpacked_bytes = budget;
        let text = b64(&payload);
        assert!(prepare_with(text.as_bytes(), &limits).unwrap().prepacked);
        limits.max_unpacked_bytes = budget - 1;
        assert!(matches!(
            prepare_with(text.as_bytes(), &limits),
            Err(PayloadError::UnpackedTooLarge { .. })
        ));
    }

    #[test]
    fn many_tiny_entries_over_the_entry_cap_fail() {
        let at_cap: Vec<_> = (0..DEFAULT_MAX_ARCHIVE_ENTRIES)
            .map(|i| file(&format!("f{i}"), b""))
            .collect();
        assert!(prepare(&tar_zst(&at_cap)).unwrap().prepacked);
        let mut over = at_cap;
        over.push(file("one-more", b""));
        let out = prepare(&tar_zst(&over));
        assert!(
            matches!(
                out,
                Err(PayloadError::TooManyEntries {
                    max: DEFAULT_MAX_ARCHIVE_ENTRIES
                })
            ),
            "{out:?}"
        );
    }

    #[test]
    fn zstd_window_over_8_mib_is_refused() {
        let tar = tar_of(&[file("ok.txt", b"fine")]);
        let frame = zstd_frame(27, &[Block::Raw(&tar)]);
        let out = prepare(&frame);
        assert!(
            matches!(&out, Err(PayloadError::InvalidArchive(m)) if m.contains("window")),
            "{out:?}"
        );
    }

    // ---- archive hygiene ------------------------------------------------

    #[test]
    fn traversal_and_absolute_paths_are_refused_naming_the_entry() {
        for (name, why) in [
            ("../../etc/x", "`..`"),
            ("/etc/passwd", "absolute"),
            ("a/../../x", "`..`"),
            ("ok/..", "`..`"),
            ("..\\..\\x", "backslash"),
        ] {
            let (entry, reason) = refused(&tar_zst(&[file("fine.txt", b"x"), file(name, b"x")]));
            assert_eq!(entry, name);
            assert!(reason.contains(why), "{name}: {reason}");
        }
    }

    #[test]
    fn links_devices_and_fifos_are_refused_naming_the_entry() {
        let mut symlink = header(false, b"link", EntryType::Symlink, 0);
        symlink.set_link_name("/etc/shadow").unwrap();
        symlink.set_cksum();
        let mut hardlink = header(false, b"hard", EntryType::Link, 0);
        hardlink.set_link_name("other").unwrap();
        hardlink.set_cksum();
        for (entry, name, why) in [
            ((symlink, Vec::new()), "link", "symbolic link"),
            ((hardlink, Vec::new()), "hard", "hard link"),
            (special("null", EntryType::Char), "null", "character device"),
            (special("sda", EntryType::Block), "sda", "block device"),
            (special("pipe", EntryType::Fifo), "pipe", "FIFO"),
            (special("cont", EntryType::Continuous), "cont", "contiguous"),
            (special("sparse", EntryType::GNUSparse), "sparse", "sparse"),
            (
                special("longlink", EntryType::GNULongLink),
                "longlink",
                "link",
            ),
            (special("solaris", EntryType::new(b'X')), "solaris", "'X'"),
        ] {
            let (entry, reason) = refused(&tar_zst(&[file("fine.txt", b"x"), entry]));
            assert_eq!(entry, name);
            assert!(reason.contains(why), "{name}: {reason}");
        }
    }

    #[test]
    fn gnu_long_name_with_dotdot_is_refused() {
        let long = format!("{}{}x", "d/".repeat(60), "../".repeat(70));
        let mut entries = vec![long_name(long.as_bytes())];
        entries.push(file("d/d/d/harmless-truncation", b"x"));
        let (entry, reason) = refused(&tar_zst(&entries));
        assert!(long.starts_with(&entry), "{entry}");
        assert!(reason.contains("`..`"), "{reason}");
    }

    #[test]
    fn pax_records_that_name_link_or_grant_are_refused() {
        let cases: [(&str, &[u8], &str); 5] = [
            ("path", b"../evil", "`..`"),
            ("path", b"/abs", "absolute"),
            ("linkpath", b"/etc/shadow", "linkpath"),
            ("GNU.sparse.name", b"../../x", "sparse"),
            (
                "SCHILY.xattr.security.capability",
                b"\x01",
                "extended attributes",
            ),
        ];
        for (key, value, why) in cases {
            let entries = [pax(EntryType::XHeader, &[(key, value)]), file("safe", b"x")];
            let out = prepare(&tar_zst(&entries));
            let Err(PayloadError::UnsafeEntry { reason, entry }) = out else {
                panic!("{key}: {out:?}");
            };
            assert!(reason.contains(why), "{key}: {reason} ({entry})");
        }
        // A path in a global header would rename every later entry.
        let entries = [
            pax(EntryType::XGlobalHeader, &[("path", b"x")]),
            file("safe", b"x"),
        ];
        let (_, reason) = refused(&tar_zst(&entries));
        assert!(reason.contains("global"), "{reason}");
        // A size that disagrees with the header frames differently elsewhere.
        let entries = [
            pax(EntryType::XHeader, &[("size", b"0")]),
            file("safe", b"xx"),
        ];
        let (entry, reason) = refused(&tar_zst(&entries));
        assert_eq!(entry, "safe");
        assert!(reason.contains("size"), "{reason}");
        // A record whose length does not match is malformed.
        let (mut h, mut data) = pax(EntryType::XHeader, &[("mtime", b"1")]);
        data[0] = b'9';
        h.set_cksum();
        let (_, reason) = refused(&tar_zst(&[(h, data), file("safe", b"x")]));
        assert!(reason.contains("malformed"), "{reason}");
    }

    #[test]
    fn ustar_prefix_and_raw_name_fields_are_checked() {
        let mut h = header(true, b"passwd", EntryType::Regular, 1);
        h.as_ustar_mut().unwrap().prefix[..4].copy_from_slice(b"/etc");
        h.set_cksum();
        let (entry, reason) = refused(&tar_zst(&[(h, b"x".to_vec())]));
        assert_eq!(entry, "/etc/passwd");
        assert!(reason.contains("absolute"), "{reason}");
        // A safe long name does not hide a hostile name field.
        let entries = [long_name(b"safe/name"), file("../../escape", b"x")];
        let (entry, _) = refused(&tar_zst(&entries));
        assert_eq!(entry, "../../escape");
    }

    #[test]
    fn setuid_dirs_with_data_and_slash_named_files_are_refused() {
        let mut suid = header(false, b"tool", EntryType::Regular, 1);
        suid.set_mode(0o4755);
        suid.set_cksum();
        let (entry, reason) = refused(&tar_zst(&[(suid, b"x".to_vec())]));
        assert_eq!(entry, "tool");
        assert!(reason.contains("setuid"), "{reason}");
        let hidden = tar_of(&[file("smuggled", b"x")]);
        let dir = (
            header(false, b"dir/", EntryType::Directory, hidden.len() as u64),
            hidden.clone(),
        );
        let (entry, reason) = refused(&tar_zst(&[dir]));
        assert_eq!(entry, "dir/");
        assert!(reason.contains("directory with data"), "{reason}");
        let (entry, reason) = refused(&tar_zst(&[file("dir/", &hidden)]));
        assert_eq!(entry, "dir/");
        assert!(reason.contains("directory name"), "{reason}");
        let entries = [long_name(b"a"), long_name(b"b"), file("c", b"x")];
        let (_, reason) = refused(&tar_zst(&entries));
        assert!(reason.contains("two GNU long names"), "{reason}");
    }

    #[test]
    fn data_after_the_end_marker_is_refused() {
        let mut tar = tar_of(&[file("ok.txt", b"fine")]);
        tar.extend_from_slice(&tar_of(&[file("../../hidden", b"x")]));
        let out = prepare(&zstd::encode_all(&tar[..], 3).unwrap());
        assert!(
            matches!(&out, Err(PayloadError::InvalidArchive(m)) if m.contains("end-of-archive")),
            "{out:?}"
        );
    }

    #[test]
    fn a_valid_nested_tar_is_stored_byte_identical() {
        let elf = elf_object(3000);
        let deep = format!("{}/deep.o", "sub".repeat(40));
        let mut builder = tar::Builder::new(Vec::new());
        let add =
            |builder: &mut tar::Builder<Vec<u8>>, path: &str, kind: EntryType, data: &[u8]| {
                let mut h = Header::new_gnu();
                h.set_entry_type(kind);
                h.set_size(data.len() as u64);
                h.set_mode(if kind == EntryType::Directory {
                    0o755
                } else {
                    0o644
                });
                h.set_mtime(1_700_000_000);
                builder.append_data(&mut h, path, data).unwrap();
            };
        let b = &mut builder;
        add(b, "./", EntryType::Directory, b"");
        add(b, "README.md", EntryType::Regular, b"# notes\n");
        add(b, "bpf/", EntryType::Directory, b"");
        add(b, "bpf/obj/", EntryType::Directory, b"");
        add(b, "bpf/obj/prog.o", EntryType::Regular, &elf);
        add(b, &deep, EntryType::Regular, &elf_object(100)); // GNU long name
        add(b, "bpf/empty", EntryType::Regular, b"");
        builder
            .append_pax_extensions([("mtime", &b"1700000000.5"[..]), ("uname", b"dev")])
            .unwrap();
        add(
            &mut builder,
            "bpf/pax-described.txt",
            EntryType::Regular,
            b"pax",
        );
        let tar = builder.into_inner().unwrap();
        let payload = zstd::encode_all(&tar[..], 19).unwrap();

        let prepared = prepare(&payload).unwrap();
        assert!(prepared.prepacked);
        assert!(!prepared.payload_is_elf);
        assert_eq!(prepared.payload_size, payload.len() as u64);
        assert_eq!(prepared.elf.as_deref(), Some(&elf[..]));
        assert_eq!(prepared.layer.digest(), &Digest::of(&payload));
        assert_eq!(layer_bytes(prepared), payload);
    }

    // ---- packing ------------------------------------------------------------

    #[test]
    fn elf_and_other_payloads_pack_exactly_like_pack_tar_zstd() {
        let mut mixed = noise(3 << 20, 3);
        mixed.extend(std::iter::repeat_n(b'a', 2 << 20));
        let payloads: Vec<Vec<u8>> = vec![
            b"x".to_vec(),
            noise(511, 1),
            noise(512, 2),
            vec![0u8; 100_000],
            mixed,
            elf_object(64),
            elf_object(700_000),
        ];
        for payload in payloads {
            let is_elf = payload.starts_with(&ELF_MAGIC);
            let prepared = prepare(&payload).unwrap();
            assert!(!prepared.prepacked);
            assert_eq!(prepared.payload_is_elf, is_elf);
            assert_eq!(prepared.elf.as_deref(), is_elf.then_some(&payload[..]));
            assert_eq!(prepared.payload_size, payload.len() as u64);
            let expected = reference_pack(&pack::entry_name("team/prog", is_elf), &payload);
            assert_eq!(prepared.layer.digest(), &Digest::of(&expected));
            assert_eq!(layer_bytes(prepared), expected, "{} bytes", payload.len());
        }
    }

    #[test]
    fn long_artifact_names_pack_like_pack_tar_zstd() {
        let name = format!("team/{}", "n".repeat(150));
        let dir = tempfile::tempdir().unwrap();
        let limits = PayloadLimits::for_artifact_cap(CAP);
        let prepared =
            prepare_payload(Bytes::from(b64(b"data")), &name, &limits, dir.path()).unwrap();
        let expected = reference_pack(&pack::entry_name(&name, false), b"data");
        assert_eq!(layer_bytes(prepared), expected);
    }

    #[test]
    fn zstd_that_is_not_a_tar_is_packed_like_before() {
        let not_tar = zstd::encode_all(&b"hello world, not a tar"[..], 3).unwrap();
        let mut garbage = ZSTD_MAGIC.to_vec();
        garbage.extend_from_slice(&[0u8; 64]);
        let mut truncated = tar_zst(&[file("a", &noise(100_000, 5))]);
        truncated.truncate(truncated.len() / 2);
        for payload in [not_tar, garbage, truncated] {
            let prepared = prepare(&payload).unwrap();
            assert!(!prepared.prepacked);
            assert_eq!(prepared.elf, None);
            let expected = reference_pack("prog.bin", &payload);
            assert_eq!(layer_bytes(prepared), expected);
        }
    }

    // ---- base64 and the payload cap ---------------------------------------

    #[test]
    fn invalid_base64_is_rejected() {
        let big = b64(&noise(600_000, 9)); // three chunks
        let mut bad_middle = big.clone().into_bytes();
        bad_middle[300_000] = b'!';
        let mut pad_at_chunk_end = big.clone().into_bytes();
        pad_at_chunk_end[DECODE_CHUNK - 2..DECODE_CHUNK].copy_from_slice(b"==");
        let mut bad_tail = big.into_bytes();
        let last = bad_tail.len() - 1;
        bad_tail[last] = b'*';
        let cases: Vec<Vec<u8>> = vec![
            b"!!!!".to_vec(),
            b"QQ=".to_vec(),
            b"Q".to_vec(),
            b"QQ==QQ==".to_vec(),
            b"QU JD".to_vec(),
            bad_middle,
            pad_at_chunk_end,
            bad_tail,
        ];
        let limits = PayloadLimits::for_artifact_cap(CAP);
        for text in cases {
            let out = prepare_with(&text, &limits);
            assert!(
                matches!(out, Err(PayloadError::InvalidBase64(_))),
                "{out:?}"
            );
        }
        let mut bad_middle = b64(&noise(600_000, 9)).into_bytes();
        bad_middle[300_000] = b'!';
        match prepare_with(&bad_middle, &limits) {
            Err(PayloadError::InvalidBase64(m)) => assert!(m.contains("300000"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn base64_accepts_exactly_what_the_old_decoder_accepted() {
        let alphabet = b"AQgw+/=!";
        let mut seed = 11u64;
        let limits = PayloadLimits::for_artifact_cap(CAP);
        for len in 0..14usize {
            for _ in 0..150 {
                seed += 1;
                let text: String = noise(len, seed)
                    .iter()
                    .map(|b| char::from(alphabet[usize::from(*b) % alphabet.len()]))
                    .collect();
                let text = format!(" {text}\n");
                let old = reference_decode(&text);
                match (prepare_with(text.as_bytes(), &limits), old) {
                    (Ok(p), Some(bytes)) => {
                        assert_eq!(p.payload_size, bytes.len() as u64, "{text:?}");
                        let is_elf = bytes.starts_with(&ELF_MAGIC);
                        let entry = pack::entry_name("team/prog", is_elf);
                        // (a zstd-magic prefix cannot come out of this alphabet)
                        assert_eq!(layer_bytes(p), reference_pack(&entry, &bytes), "{text:?}");
                    }
                    (Err(PayloadError::InvalidBase64(_)), None) => {}
                    (new, old) => panic!("{text:?}: new {new:?}, old {old:?}"),
                }
            }
        }
        // Padded and unpadded forms of multi-chunk payloads.
        for len in [DECODE_CHUNK / 4 * 3 - 1, DECODE_CHUNK / 4 * 3, 400_001] {
            let payload = noise(len, len as u64);
            let padded = b64(&payload);
            let unpadded = STANDARD_NO_PAD.encode(&payload);
            for text in [padded, unpadded] {
                let p = prepare_with(text.as_bytes(), &limits).unwrap();
                assert_eq!(layer_bytes(p), reference_pack("prog.bin", &payload));
            }
        }
    }

    #[test]
    fn payload_over_the_cap_is_rejected_before_decoding() {
        let limits = PayloadLimits::for_artifact_cap(1000);
        assert!(prepare_with(b64(&[7u8; 1000]).as_bytes(), &limits).is_ok());
        let over = prepare_with(b64(&[7u8; 1001]).as_bytes(), &limits);
        assert!(
            matches!(over, Err(PayloadError::TooLarge { max: 1000 })),
            "{over:?}"
        );
        // Invalid base64 at the very end: a cap checked after decoding
        // would report the base64 error; the cap is checked first.
        let mut text = b64(&[7u8; 3000]).into_bytes();
        let last = text.len() - 1;
        text[last] = b'!';
        let out = prepare_with(&text, &limits);
        assert!(
            matches!(out, Err(PayloadError::TooLarge { max: 1000 })),
            "{out:?}"
        );
    }

    #[test]
    fn errors_map_onto_the_rest_table() {
        let cases = [
            (
                PayloadError::InvalidBase64("x".into()),
                400,
                "invalid_base64",
            ),
            (PayloadError::TooLarge { max: 1 }, 413, "payload_too_large"),
            (
                PayloadError::UnpackedTooLarge { max: 1 },
                413,
                "payload_too_large",
            ),
            (
                PayloadError::TooManyEntries { max: 1 },
                400,
                "invalid_artifact",
            ),
            (
                PayloadError::UnsafeEntry {
                    entry: "../x".into(),
                    reason: "r".into(),
                },
                400,
                "invalid_artifact",
            ),
            (
                PayloadError::InvalidArchive("w".into()),
                400,
                "invalid_artifact",
            ),
            (
                PayloadError::Io(io::Error::other("disk")),
                500,
                "internal_error",
            ),
            (
                PayloadError::Io(io::Error::from_raw_os_error(ENOSPC)),
                507,
                "storage_full",
            ),
            (
                PayloadError::Io(io::Error::new(io::ErrorKind::StorageFull, "wrapped")),
                507,
                "storage_full",
            ),
        ];
        for (e, status, code) in cases {
            // The REST wire table at the HTTP edge answers it.
            let a = crate::http::error::RestError::from(ArtifactError::from(e));
            assert_eq!(
                (a.code.status().as_u16(), a.code.as_str()),
                (status, code),
                "{}",
                a.message
            );
        }
        let a = ArtifactError::from(PayloadError::UnsafeEntry {
            entry: "../x".into(),
            reason: "its path has a `..` component".into(),
        });
        assert!(a.to_string().contains("\"../x\""), "{a}");
    }

    #[tokio::test]
    async fn the_blocking_wrapper_runs_the_whole_path() {
        let dir = tempfile::tempdir().unwrap();
        let elf = elf_object(5000);
        let text = Bytes::from(b64(&elf));
        let prepared = prepare_payload_blocking(
            text,
            "team/prog".into(),
            PayloadLimits::for_artifact_cap(CAP),
            dir.path().to_path_buf(),
        )
        .await
        .unwrap();
        assert_eq!(prepared.elf.as_deref(), Some(&elf[..]));
        assert_eq!(layer_bytes(prepared), reference_pack("prog.o", &elf));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_spool_directory_is_an_io_error() {
        let limits = PayloadLimits::for_artifact_cap(CAP);
        let out = prepare_payload(
            Bytes::from_static(b"QUJD"),
            "p",
            &limits,
            Path::new("/nonexistent/spool"),
        );
        assert!(matches!(out, Err(PayloadError::Io(_))), "{out:?}");
    }

    // ---- measurements (run alone: they read this process's peak RSS) -----

    fn status_kib(field: &str) -> u64 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with(field)).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// Peak RSS growth over the current RSS while `f` runs, in MiB.
    fn peak_growth_mib(f: impl FnOnce()) -> f64 {
        // Writing 5 to clear_refs resets VmHWM to the current RSS.
        std::fs::write("/proc/self/clear_refs", "5").unwrap();
        let before = status_kib("VmRSS:");
        f();
        (status_kib("VmHWM:") - before) as f64 / 1024.0
    }

    /// One measurement per process (freed heap stays resident and would
    /// hide the next one's growth): `MEASURE=random|elf|tar.zst`. The
    /// base64 text is handed over, so the growth is over a process that
    /// already holds it (as a server holds the request body).
    #[test]
    #[ignore = "measurement: run alone with --ignored --nocapture and MEASURE set"]
    fn measure_peak_memory_of_a_64_mib_payload() {
        let what = std::env::var("MEASURE").unwrap_or_else(|_| "random".into());
        let dir = tempfile::tempdir().unwrap();
        let limits = PayloadLimits::for_artifact_cap(CAP);
        let mut payload = noise(64 << 20, 42);
        match what.as_str() {
            "random" => {}
            "elf" => payload[..4].copy_from_slice(&ELF_MAGIC),
            "tar.zst" => {
                let mut builder = tar::Builder::new(Vec::new());
                let mut h = Header::new_gnu();
                h.set_size(60 << 20);
                h.set_mode(0o644);
                builder
                    .append_data(&mut h, "big.bin", &payload[..60 << 20])
                    .unwrap();
                payload = zstd::encode_all(&builder.into_inner().unwrap()[..], 1).unwrap();
            }
            other => panic!("MEASURE={other}?"),
        }
        let text = Bytes::from(b64(&payload));
        drop(payload);
        let text_mib = text.len() >> 20;
        let started = Instant::now();
        let growth = peak_growth_mib(|| {
            let p = prepare_payload(text, "prog", &limits, dir.path()).unwrap();
            std::hint::black_box(p);
        });
        eprintln!(
            "MEASURE {what}: base64 {text_mib} MiB; peak RSS growth {growth:.1} MiB in {} ms",
            started.elapsed().as_millis()
        );
    }
}
