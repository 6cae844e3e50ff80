//! The filesystem backend's appending writer (upload files): bytes go to
//! disk with direct I/O from an aligned staging block where the file
//! system takes it, so a push costs one copy and the acknowledging sync
//! waits only for the device, not for the page cache's writeback; where
//! it does not, they are written through the page cache with writeback
//! started while the rest arrives.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use super::{AppendWriter, StorageError, StorageResult, StorePath};

/// The alignment direct I/O needs of memory, file offset and length:
/// 4 KiB covers 512-byte and 4 KiB logical blocks.
const ALIGN: usize = 4096;

/// The staging block: large enough that a direct write's per-call cost
/// is noise, small enough to be noise in a push's memory.
const STAGE: usize = 512 * 1024;

pub(super) struct FsAppend {
    /// The file opened without direct I/O: the unaligned head and tail of
    /// an append, the sync, and every write once direct I/O is off.
    file: File,
    path: StorePath,
    /// The file offset the next byte lands at.
    end: u64,
    /// Bytes before this offset were handed to writeback already (or
    /// were there when the writer opened).
    kicked: u64,
    /// The thread that starts writeback, once there was some to start.
    kicker: Option<Kicker>,
    /// Direct I/O, while the file system takes it.
    direct: Option<Direct>,
    /// Where the announced bytes end (`announce_len`), until the sync.
    announced_end: Option<u64>,
}

/// The file opened with `O_DIRECT` and the aligned block staged for it.
struct Direct {
    file: File,
    /// Holds `STAGE + ALIGN` bytes, so that an aligned `STAGE` fits in it
    /// at `start` (no allocator with alignment, no unsafe code).
    buffer: Vec<u8>,
    start: usize,
    /// Staged bytes, from `start`.
    filled: usize,
    /// The (aligned) file offset of the first staged byte.
    at: u64,
}

fn io_err(p: &StorePath) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |e| StorageError::io(p, e)
}

/// Opens `full` for direct writes, if the file system takes them.
#[cfg(target_os = "linux")]
fn open_direct(full: &Path) -> Option<Direct> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let file = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(full)
        .ok()?;
    let buffer = vec![0u8; STAGE + ALIGN];
    let start = buffer.as_ptr().align_offset(ALIGN);
    if start > ALIGN {
        return None;
    }
    Some(Direct {
        file,
        buffer,
        start,
        filled: 0,
        at: 0,
    })
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_full: &Path) -> Option<Direct> {
    None
}

impl FsAppend {
    /// A writer appending to `file` (the object at `path`, full path
    /// `full`) from offset `end`; with `direct_io`, by direct I/O where
    /// the file system takes it.
    pub(super) fn new(
        file: File,
        path: &StorePath,
        full: &Path,
        end: u64,
        direct_io: bool,
    ) -> FsAppend {
        FsAppend {
            file,
            path: path.clone(),
            end,
            kicked: end,
            kicker: None,
            direct: if direct_io { open_direct(full) } else { None },
            announced_end: None,
        }
    }

    /// The announced length does not match what was written (more, or at
    /// the sync fewer): an error, as on every backend.
    fn length_differs(&self, announced_end: u64, end: u64) -> StorageError {
        StorageError::io(
            &self.path,
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("the writer was told its bytes end at {announced_end}, not {end}"),
            ),
        )
    }

    /// Writes `buf` at `at` through the page cache.
    fn write_buffered(&self, buf: &[u8], at: u64) -> StorageResult<()> {
        write_at(&self.file, &self.path, buf, at)
    }

    /// Writes the staged block: its aligned part directly, a last partial
    /// block (only at a sync) through the page cache. A direct write the
    /// file system refuses turns direct I/O off for good, with the same
    /// bytes written through the page cache instead: nothing is lost.
    fn flush_stage(&mut self) -> StorageResult<()> {
        let Some(d) = self.direct.as_mut() else {
            return Ok(());
        };
        let filled = std::mem::take(&mut d.filled);
        let staged = &d.buffer[d.start..d.start + filled];
        let aligned = filled - filled % ALIGN;
        let refused = write_at(&d.file, &self.path, &staged[..aligned], d.at).err();
        let Some(e) = refused else {
            return write_at(
                &self.file,
                &self.path,
                &staged[aligned..],
                d.at + aligned as u64,
            );
        };
        tracing::warn!(path = %self.path.as_str(), error = %e,
            "direct write refused; writing through the page cache from now on");
        let result = write_at(&self.file, &self.path, staged, d.at);
        self.direct = None;
        result
    }
}

/// Writes all of `buf` at offset `at` of `file` (the object at `path`).
fn write_at(file: &File, path: &StorePath, buf: &[u8], at: u64) -> StorageResult<()> {
    use std::os::unix::fs::FileExt as _;
    if buf.is_empty() {
        return Ok(());
    }
    file.write_all_at(buf, at).map_err(io_err(path))
}

impl AppendWriter for FsAppend {
    fn write_all(&mut self, buf: &[u8]) -> StorageResult<()> {
        let end = self.end.saturating_add(buf.len() as u64);
        if let Some(announced_end) = self.announced_end.filter(|e| end > *e) {
            return Err(self.length_differs(announced_end, end));
        }
        let Some(d) = self.direct.as_mut() else {
            self.write_buffered(buf, self.end)?;
            self.end = self.end.saturating_add(buf.len() as u64);
            return Ok(());
        };
        let mut rest = buf;
        // An append that starts inside a block (after a sync of a length
        // that is not a multiple of the block) fills that block through
        // the page cache, so the staged block starts aligned.
        let inside = (self.end % ALIGN as u64) as usize;
        if d.filled == 0 && inside != 0 {
            let head = rest.len().min(ALIGN - inside);
            let at = self.end;
            self.write_buffered(&rest[..head], at)?;
            self.end += head as u64;
            rest = &rest[head..];
        }
        while !rest.is_empty() {
            let Some(d) = self.direct.as_mut() else {
                self.write_buffered(rest, self.end)?;
                self.end = self.end.saturating_add(rest.len() as u64);
                return Ok(());
            };
            if d.filled == 0 {
                d.at = self.end;
            }
            let n = rest.len().min(STAGE - d.filled);
            let from = d.start + d.filled;
            d.buffer[from..from + n].copy_from_slice(&rest[..n]);
            d.filled += n;
            self.end += n as u64;
            rest = &rest[n..];
            if d.filled == STAGE {
                self.flush_stage()?;
            }
        }
        Ok(())
    }

    /// Writes what is staged, waits until the writeback already started
    /// was submitted, then `fdatasync`: the bytes and the file's length
    /// are on disk when this returns.
    fn sync(&mut self) -> StorageResult<()> {
        if let Some(announced_end) = self.announced_end.take() {
            if announced_end != self.end {
                return Err(self.length_differs(announced_end, self.end));
            }
        }
        self.flush_stage()?;
        if let Some(k) = self.kicker.take() {
            k.finish().map_err(io_err(&self.path))?;
        }
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.kicked = self.end;
        Ok(())
    }

    fn announce_len(&mut self, len: u64) {
        self.announced_end = Some(self.end.saturating_add(len));
    }

    /// Starts writeback of the bytes written through the page cache since
    /// the last kick only (a chunk appended to a large upload does not
    /// walk the pages of the chunks before it), on the kicker thread.
    /// Direct writes need none.
    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) -> StorageResult<()> {
        if self.direct.is_some() {
            return Ok(());
        }
        let len = self.end.saturating_sub(self.kicked);
        let (Ok(from), Ok(n)) = (i64::try_from(self.kicked), i64::try_from(len)) else {
            return Ok(()); // past what the call takes: the final sync does it all
        };
        if n == 0 {
            return Ok(());
        }
        if self.kicker.is_none() {
            self.kicker = Some(Kicker::start(&self.file).map_err(io_err(&self.path))?);
        }
        let sent = self
            .kicker
            .as_ref()
            .is_some_and(|k| k.ranges.send((from, n)).is_ok());
        if !sent {
            // The thread stopped on an error: report it.
            if let Some(k) = self.kicker.take() {
                k.finish().map_err(io_err(&self.path))?;
            }
        }
        self.kicked = self.end;
        Ok(())
    }
}

/// Starts writeback of byte ranges of one file on a thread of its own:
/// submitting the writes blocks while the disk is busy, and the thread
/// that copies the body into the file should not wait for that.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
struct Kicker {
    ranges: std::sync::mpsc::Sender<(i64, i64)>,
    done: std::thread::JoinHandle<io::Result<()>>,
}

impl Kicker {
    #[cfg(target_os = "linux")]
    fn start(file: &File) -> io::Result<Kicker> {
        use std::os::fd::AsRawFd;
        let file = file.try_clone()?;
        let (ranges, rx) = std::sync::mpsc::channel::<(i64, i64)>();
        let done = std::thread::Builder::new()
            .name("writeback".into())
            .spawn(move || {
                for (from, n) in rx {
                    // SAFETY: the descriptor is owned by `file`, open for
                    // the whole call; the range is plain integers.
                    let rc = unsafe {
                        libc::sync_file_range(
                            file.as_raw_fd(),
                            from,
                            n,
                            libc::SYNC_FILE_RANGE_WRITE,
                        )
                    };
                    if rc != 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                Ok(())
            })?;
        Ok(Kicker { ranges, done })
    }

    /// Waits until every range handed over was submitted.
    fn finish(self) -> io::Result<()> {
        drop(self.ranges);
        self.done
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("the writeback thread panicked")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer(dir: &Path, direct: bool) -> (FsAppend, std::path::PathBuf) {
        let path = crate::storage::paths::upload_data(&crate::storage::UploadId::new_random());
        let full = dir.join(path.as_str());
        std::fs::create_dir_all(full.parent().unwrap()).unwrap();
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&full)
            .unwrap();
        (FsAppend::new(file, &path, &full, 0, direct), full)
    }

    /// Appends of every awkward length, with syncs between them that
    /// leave the file's end inside a block, read back byte for byte.
    #[test]
    fn unaligned_appends_and_syncs_keep_every_byte() {
        let dir = tempfile::tempdir().unwrap();
        let (mut w, full) = writer(dir.path(), true);
        let mut expected = Vec::new();
        let lengths = [
            1usize,
            4095,
            4097,
            STAGE - 3,
            STAGE,
            7,
            STAGE * 2 + 11,
            0,
            4096,
        ];
        for (i, len) in lengths.iter().enumerate() {
            let bytes: Vec<u8> = (0..*len).map(|j| (i * 31 + j) as u8).collect();
            // Two writes per append: the second starts inside the stage.
            let half = len / 3;
            w.write_all(&bytes[..half]).unwrap();
            w.write_all(&bytes[half..]).unwrap();
            expected.extend_from_slice(&bytes);
            if i % 2 == 0 {
                w.sync().unwrap();
                assert_eq!(std::fs::read(&full).unwrap(), expected, "after append {i}");
            }
        }
        w.sync().unwrap();
        assert_eq!(std::fs::read(&full).unwrap(), expected);
        // The bytes above went the direct way (none was refused), where
        // the file system has it; CI's has.
        assert!(
            w.direct.is_some() || std::env::var("CI").is_err(),
            "direct I/O was refused under CI=true"
        );
    }

    /// Reopening at an offset inside a block (a resumed upload) appends
    /// after it, through both paths.
    #[test]
    fn an_append_resumed_inside_a_block_lands_after_it() {
        let dir = tempfile::tempdir().unwrap();
        for direct in [true, false] {
            let (w, full) = writer(dir.path(), direct);
            drop(w);
            std::fs::write(&full, vec![9u8; 5000]).unwrap();
            let file = OpenOptions::new().write(true).open(&full).unwrap();
            let path = crate::storage::paths::upload_data(&crate::storage::UploadId::new_random());
            let mut w = FsAppend::new(file, &path, &full, 5000, direct);
            let more: Vec<u8> = (0..STAGE + 100).map(|j| j as u8).collect();
            w.write_all(&more).unwrap();
            w.sync().unwrap();
            let got = std::fs::read(&full).unwrap();
            assert_eq!(got.len(), 5000 + more.len());
            assert!(got[..5000].iter().all(|b| *b == 9));
            assert_eq!(&got[5000..], &more[..]);
        }
    }
}
