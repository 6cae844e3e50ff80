//! The filesystem backend. Every durable write goes through
//! `write_atomic` (or [`write_file_atomic`] for a file outside the
//! backend's objects, the token key) or `rename`: temp file in the same
//! folder, fsync, rename, fsync the folder. Temp files have a random
//! internal name (`paths::temp_name`) and are removed by a guard if the
//! write does not complete; listings hide every internal name.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use super::{
    paths, AppendWriter, Backend, Entry, ObjectReader, ObjectSource, StorageError, StorageResult,
    StorePath,
};

pub struct FsBackend {
    root: PathBuf,
    /// The root folder, held open so hot reads resolve a short relative
    /// path (`openat`) instead of walking the whole absolute path.
    root_dir: File,
}

impl FsBackend {
    /// Opens (creating if missing) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        let root_dir = File::open(&root)?;
        Ok(FsBackend { root, root_dir })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Opens an object for reading relative to the held root folder.
    #[cfg(target_os = "linux")]
    fn open_relative(&self, p: &StorePath) -> io::Result<File> {
        use std::os::fd::{AsRawFd, FromRawFd};
        let c = std::ffi::CString::new(p.as_str()).map_err(io::Error::other)?;
        // SAFETY: `root_dir` is an open folder for the whole call and `c` a
        // NUL-terminated path; a non-negative result is a fresh descriptor
        // that the returned `File` owns.
        let fd = unsafe {
            libc::openat(
                self.root_dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: see above; `fd` is owned by nobody else.
        Ok(unsafe { File::from_raw_fd(fd) })
    }

    #[cfg(not(target_os = "linux"))]
    fn open_relative(&self, p: &StorePath) -> io::Result<File> {
        File::open(self.full(p))
    }

    fn full(&self, p: &StorePath) -> PathBuf {
        self.root.join(p.as_str())
    }
}

fn io_err(p: &StorePath) -> impl FnOnce(io::Error) -> StorageError + '_ {
    move |e| StorageError::io(p, e)
}

fn not_found<T>(r: io::Result<T>) -> io::Result<Option<T>> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates `dir` and every missing parent, fsyncing each parent whose
/// entries changed, so a new folder survives a crash.
fn create_dir_durable(dir: &Path) -> io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        create_dir_durable(parent)?;
    }
    match fs::create_dir(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(()),
        Err(e) => return Err(e),
    }
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(())
}

/// Removes a temp file unless `keep` was called.
struct TempGuard {
    path: PathBuf,
    armed: bool,
}

impl TempGuard {
    fn keep(mut self) {
        self.armed = false;
    }
}

impl Drop for TempGuard {
    fn drop(&mut self) {
        if self.armed {
            let _ = fs::remove_file(&self.path);
        }
    }
}

fn temp_path(target: &Path) -> PathBuf {
    let final_name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(paths::temp_name(&final_name))
}

/// Writes a whole file atomically and durably: a temp file with a random
/// internal name in the same folder (created with `mode` on Unix, if
/// given), fsync, rename over `target`, fsync the folder. Missing folders
/// are created durably. Readers see the old file or the new one, never a
/// mix; a crash leaves at most the temp file, which `gc` removes.
pub fn write_file_atomic(target: &Path, data: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    create_dir_durable(&dir)?;
    let tmp = temp_path(target);
    let guard = TempGuard {
        path: tmp.clone(),
        armed: true,
    };
    let mut opts = OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    if let Some(mode) = mode {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(&tmp)?;
    f.write_all(data)?;
    f.sync_all()?;
    drop(f);
    fs::rename(&tmp, target)?;
    guard.keep();
    sync_dir(&dir)
}

/// One object of [`Backend::write_objects`]: written and synced into its
/// temp file (blocking; one thread per object).
fn write_temp(target: &Path, source: ObjectSource) -> io::Result<(PathBuf, TempGuard)> {
    let tmp = temp_path(target);
    let guard = TempGuard {
        path: tmp.clone(),
        armed: true,
    };
    let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    match source {
        ObjectSource::Bytes(b) => f.write_all(&b)?,
        ObjectSource::File { file, len } => {
            // `copy_file_range` on Linux: no pass through user space.
            let copied = io::copy(&mut file.take(len), &mut f)?;
            if copied != len {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "source file shorter than stated",
                ));
            }
        }
    }
    f.sync_data()?;
    Ok((tmp, guard))
}

struct FsAppend {
    file: File,
    path: StorePath,
    /// The file offset the next write lands at.
    end: u64,
    /// Bytes before this offset were handed to writeback already (or
    /// were there when the writer opened).
    kicked: u64,
    /// The thread that starts writeback, once there was some to start.
    kicker: Option<Kicker>,
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

impl AppendWriter for FsAppend {
    fn write_all(&mut self, buf: &[u8]) -> StorageResult<()> {
        self.file.write_all(buf).map_err(io_err(&self.path))?;
        self.end = self.end.saturating_add(buf.len() as u64);
        Ok(())
    }

    /// `fdatasync`, once the writeback already started was submitted: the
    /// bytes and the file's length are on disk when this returns.
    fn sync(&mut self) -> StorageResult<()> {
        if let Some(k) = self.kicker.take() {
            k.finish().map_err(io_err(&self.path))?;
        }
        self.file.sync_data().map_err(io_err(&self.path))?;
        self.kicked = self.end;
        Ok(())
    }

    /// Starts writeback of the bytes written since the last kick only (a
    /// chunk appended to a large upload does not walk the pages of the
    /// chunks before it), on the kicker thread.
    #[cfg(target_os = "linux")]
    fn start_writeback(&mut self) -> StorageResult<()> {
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

impl Backend for FsBackend {
    fn read_small(&self, path: &StorePath, max: u64) -> StorageResult<Option<Vec<u8>>> {
        let Some(file) = not_found(self.open_relative(path)).map_err(io_err(path))? else {
            return Ok(None);
        };
        // Size the buffer from the file's length: one read for a small file.
        let len = file.metadata().map_err(io_err(path))?.len();
        if len > max {
            return Err(StorageError::TooLarge(path.to_string(), max));
        }
        let mut buf = Vec::with_capacity(usize::try_from(len).unwrap_or(0).saturating_add(1));
        file.take(max.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(io_err(path))?;
        if buf.len() as u64 > max {
            return Err(StorageError::TooLarge(path.to_string(), max));
        }
        Ok(Some(buf))
    }

    fn write_atomic(&self, path: &StorePath, data: &[u8]) -> StorageResult<()> {
        write_file_atomic(&self.full(path), data, None).map_err(io_err(path))
    }

    fn write_objects(&self, items: Vec<(StorePath, ObjectSource)>) -> StorageResult<()> {
        let mut dirs: Vec<(PathBuf, StorePath)> = Vec::new();
        let mut jobs = Vec::with_capacity(items.len());
        for (path, source) in items {
            let full = self.full(&path);
            let dir = full
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_else(|| self.root.clone());
            create_dir_durable(&dir).map_err(io_err(&path))?;
            if !dirs.iter().any(|(d, _)| d == &dir) {
                dirs.push((dir, path.clone()));
            }
            jobs.push((path, full, source));
        }
        // The files are written and synced side by side (the journal
        // commits their syncs together), then renamed, then each folder
        // is synced once.
        let mut written = Vec::with_capacity(jobs.len());
        let mut last = jobs.pop();
        std::thread::scope(|scope| -> StorageResult<()> {
            let others: Vec<_> = jobs
                .into_iter()
                .map(|(path, full, source)| {
                    let h = scope.spawn(move || write_temp(&full, source).map(|t| (t, full)));
                    (path, h)
                })
                .collect();
            let mut first_error = None;
            if let Some((path, full, source)) = last.take() {
                match write_temp(&full, source) {
                    Ok(t) => written.push((path, full, t)),
                    Err(e) => first_error = Some(StorageError::io(&path, e)),
                }
            }
            for (path, h) in others {
                match h.join() {
                    Ok(Ok((t, full))) => written.push((path, full, t)),
                    Ok(Err(e)) => {
                        first_error.get_or_insert(StorageError::io(&path, e));
                    }
                    Err(_) => {
                        first_error.get_or_insert(StorageError::io(
                            &path,
                            io::Error::other("a writer thread failed"),
                        ));
                    }
                }
            }
            match first_error {
                Some(e) => Err(e),
                None => Ok(()),
            }
        })?;
        for (path, full, (tmp, guard)) in written {
            fs::rename(&tmp, &full).map_err(io_err(&path))?;
            guard.keep();
        }
        for (dir, path) in &dirs {
            sync_dir(dir).map_err(io_err(path))?;
        }
        Ok(())
    }

    fn size(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        let m = not_found(fs::metadata(self.full(path))).map_err(io_err(path))?;
        Ok(m.filter(|m| m.is_file()).map(|m| m.len()))
    }

    fn open_read(&self, path: &StorePath, offset: u64) -> StorageResult<Option<ObjectReader>> {
        let Some(mut file) = not_found(File::open(self.full(path))).map_err(io_err(path))? else {
            return Ok(None);
        };
        let len = file.metadata().map_err(io_err(path))?.len();
        if offset > 0 {
            file.seek(SeekFrom::Start(offset)).map_err(io_err(path))?;
        }
        Ok(Some(ObjectReader {
            reader: Box::new(file),
            len,
        }))
    }

    fn open_file(&self, path: &StorePath) -> StorageResult<Option<File>> {
        not_found(File::open(self.full(path))).map_err(io_err(path))
    }

    fn open_append(
        &self,
        path: &StorePath,
        truncate_to: u64,
    ) -> StorageResult<Box<dyn AppendWriter>> {
        let full = self.full(path);
        if let Some(dir) = full.parent() {
            create_dir_durable(dir).map_err(io_err(path))?;
        }
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&full)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len != truncate_to {
            file.set_len(truncate_to).map_err(io_err(path))?;
        }
        file.seek(SeekFrom::Start(truncate_to))
            .map_err(io_err(path))?;
        Ok(Box::new(FsAppend {
            file,
            path: path.clone(),
            end: truncate_to,
            kicked: truncate_to,
            kicker: None,
        }))
    }

    fn rename(&self, from: &StorePath, to: &StorePath) -> StorageResult<()> {
        let src = self.full(from);
        let dst = self.full(to);
        let dir = dst
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| self.root.clone());
        create_dir_durable(&dir).map_err(io_err(to))?;
        // The source's bytes must be on disk before its name moves.
        File::open(&src)
            .and_then(|f| f.sync_all())
            .map_err(io_err(from))?;
        fs::rename(&src, &dst).map_err(io_err(to))?;
        sync_dir(&dir).map_err(io_err(to))
    }

    fn delete(&self, path: &StorePath) -> StorageResult<bool> {
        let full = self.full(path);
        match fs::remove_file(&full) {
            Ok(()) => {
                if let Some(dir) = full.parent() {
                    sync_dir(dir).map_err(io_err(path))?;
                }
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    fn delete_many(&self, paths: &[StorePath]) -> StorageResult<Vec<bool>> {
        let mut existed = Vec::with_capacity(paths.len());
        // Each folder that lost an entry, synced once after all removals.
        let mut dirs: Vec<(PathBuf, &StorePath)> = Vec::new();
        for path in paths {
            let full = self.full(path);
            match fs::remove_file(&full) {
                Ok(()) => {
                    if let Some(dir) = full.parent() {
                        if !dirs.iter().any(|(d, _)| d == dir) {
                            dirs.push((dir.to_path_buf(), path));
                        }
                    }
                    existed.push(true);
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => existed.push(false),
                Err(e) => return Err(StorageError::io(path, e)),
            }
        }
        for (dir, path) in &dirs {
            sync_dir(dir).map_err(io_err(path))?;
        }
        Ok(existed)
    }

    fn delete_dir(&self, path: &StorePath) -> StorageResult<()> {
        match fs::remove_dir_all(self.full(path)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(StorageError::io(path, e)),
        }
    }

    fn list(&self, path: &StorePath) -> StorageResult<Vec<Entry>> {
        let Some(rd) = not_found(fs::read_dir(self.full(path))).map_err(io_err(path))? else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for ent in rd {
            let ent = ent.map_err(io_err(path))?;
            let Ok(name) = ent.file_name().into_string() else {
                continue;
            };
            // Temp files and the lock are not objects.
            if paths::is_internal(&name) {
                continue;
            }
            let is_dir = ent.file_type().map_err(io_err(path))?.is_dir();
            out.push(Entry { name, is_dir });
        }
        Ok(out)
    }

    fn age_secs(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        let m = not_found(fs::metadata(self.full(path))).map_err(io_err(path))?;
        Ok(m.map(|m| {
            m.modified()
                .ok()
                .and_then(|t| SystemTime::now().duration_since(t).ok())
                .map(|d| d.as_secs())
                .unwrap_or(0)
        }))
    }

    fn probe_writable(&self) -> StorageResult<()> {
        let probe = self.root.join(paths::temp_name("probe"));
        let p = StorePath::probe();
        let r = File::create(&probe).and_then(|mut f| f.write_all(b"ok"));
        let _ = fs::remove_file(&probe);
        r.map_err(io_err(&p))
    }

    fn touch(&self, path: &StorePath) -> StorageResult<bool> {
        // The owner may set the times through a read-only descriptor. The
        // new time is not fsynced: after a crash it may be the old one,
        // which at worst lets GC take an unreferenced blob early.
        let Some(file) = not_found(File::open(self.full(path))).map_err(io_err(path))? else {
            return Ok(false);
        };
        file.set_modified(SystemTime::now()).map_err(io_err(path))?;
        Ok(true)
    }

    fn remove_stale_temps(&self, min_age_secs: u64) -> StorageResult<(u64, u64)> {
        let mut removed = (0u64, 0u64);
        // Folders as components relative to the root (for the legacy rule).
        let mut stack: Vec<Vec<String>> = vec![Vec::new()];
        let root = StorePath::probe();
        while let Some(rel) = stack.pop() {
            let dir = rel.iter().fold(self.root.clone(), |p, c| p.join(c));
            let Some(rd) = not_found(fs::read_dir(&dir)).map_err(io_err(&root))? else {
                continue;
            };
            let comps: Vec<&str> = rel.iter().map(String::as_str).collect();
            for ent in rd.flatten() {
                let Ok(ft) = ent.file_type() else { continue };
                let Ok(name) = ent.file_name().into_string() else {
                    continue;
                };
                if ft.is_dir() {
                    // The store makes no internal folders; one that is
                    // there (a filesystem's `.snapshot`) is not ours.
                    if !paths::is_internal(&name) {
                        let mut next = rel.clone();
                        next.push(name);
                        stack.push(next);
                    }
                    continue;
                }
                if !paths::is_temp_leftover(&comps, &name) {
                    continue;
                }
                let Ok(meta) = ent.metadata() else { continue };
                let age = meta
                    .modified()
                    .ok()
                    .and_then(|t| SystemTime::now().duration_since(t).ok())
                    .map(|d| d.as_secs())
                    .unwrap_or(0);
                if age >= min_age_secs && fs::remove_file(ent.path()).is_ok() {
                    removed.0 += 1;
                    removed.1 += meta.len();
                }
            }
        }
        Ok(removed)
    }
}
