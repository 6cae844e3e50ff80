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

use super::fs_append::FsAppend;
use super::{
    paths, AppendWriter, Backend, Entry, ObjectReader, ObjectSource, StorageError, StorageResult,
    StorePath,
};

pub struct FsBackend {
    root: PathBuf,
    /// The root folder, held open so hot reads resolve a short relative
    /// path (`openat`) instead of walking the whole absolute path.
    root_dir: File,
    /// Upload files written with direct I/O where the file system takes
    /// it (see `fs_append`).
    direct_writes: bool,
}

impl FsBackend {
    /// Opens (creating if missing) a store rooted at `root`.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        fs::create_dir_all(&root)?;
        let root_dir = File::open(&root)?;
        Ok(FsBackend {
            root,
            root_dir,
            direct_writes: true,
        })
    }

    /// The same store with upload files written through the page cache
    /// only (`false`), or by direct I/O where the file system takes it.
    pub fn with_direct_writes(mut self, on: bool) -> Self {
        self.direct_writes = on;
        self
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
    if let ObjectSource::File { file, len } = &source {
        if link_anonymous(file, *len, &tmp) {
            file.sync_data()?;
            return Ok((tmp, guard));
        }
    }
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

/// Gives `file`, an anonymous file (`O_TMPFILE`, no name yet) of exactly
/// `len` bytes on this file system, the name `at`: the object then costs
/// no copy. False, with nothing changed, for any other file (one with a
/// name, a shorter or longer one, another file system): it is copied.
#[cfg(target_os = "linux")]
fn link_anonymous(file: &File, len: u64, at: &Path) -> bool {
    use std::ffi::CString;
    use std::os::fd::AsRawFd;
    use std::os::unix::ffi::OsStrExt as _;
    use std::os::unix::fs::MetadataExt as _;
    let Ok(meta) = file.metadata() else {
        return false;
    };
    // A file with a name may be changed through it: never share its inode.
    if meta.nlink() != 0 || meta.len() != len {
        return false;
    }
    let from = format!("/proc/self/fd/{}", file.as_raw_fd());
    let (Ok(from), Ok(to)) = (CString::new(from), CString::new(at.as_os_str().as_bytes())) else {
        return false;
    };
    // SAFETY: two NUL-terminated paths that live across the call.
    let rc = unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    };
    rc == 0
}

#[cfg(not(target_os = "linux"))]
fn link_anonymous(_file: &File, _len: u64, _at: &Path) -> bool {
    false
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
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&full)
            .map_err(io_err(path))?;
        let len = file.metadata().map_err(io_err(path))?.len();
        if len != truncate_to {
            file.set_len(truncate_to).map_err(io_err(path))?;
        }
        // The writer writes at offsets it tracks: no file cursor to seek.
        Ok(Box::new(FsAppend::new(
            file,
            path,
            &full,
            truncate_to,
            self.direct_writes,
        )))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn anonymous_file_in(dir: &Path, bytes: &[u8]) -> Option<File> {
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            let mut f = OpenOptions::new()
                .read(true)
                .write(true)
                .custom_flags(libc::O_TMPFILE)
                .open(dir)
                .ok()?;
            f.write_all(bytes).ok()?;
            f.seek(SeekFrom::Start(0)).ok()?;
            Some(f)
        }
        #[cfg(not(target_os = "linux"))]
        {
            let _ = (dir, bytes);
            None
        }
    }

    /// An anonymous file is given its name (same inode, no copy); a named
    /// one, or one whose length is not the stated one, is copied and left
    /// as it was.
    #[test]
    fn an_anonymous_file_becomes_the_object_and_a_named_one_is_copied() {
        use std::os::unix::fs::MetadataExt as _;
        let dir = tempfile::tempdir().unwrap();
        let store = FsBackend::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..70_000u32).map(|i| (i % 251) as u8).collect();
        let Some(anonymous) = anonymous_file_in(dir.path(), &bytes) else {
            assert!(
                std::env::var("CI").is_err(),
                "O_TMPFILE is missing on this file system under CI=true"
            );
            return;
        };
        let ino = anonymous.metadata().unwrap().ino();
        let named_path = dir.path().join("named");
        fs::write(&named_path, &bytes).unwrap();
        let named = File::open(&named_path).unwrap();
        let short = anonymous_file_in(dir.path(), &bytes).unwrap();
        let objects = [b"linked", b"copied", b"short!"]
            .map(|name| paths::blob(&crate::oci::Digest::of(name)));
        store
            .write_objects(vec![
                (
                    objects[0].clone(),
                    ObjectSource::File {
                        file: anonymous,
                        len: bytes.len() as u64,
                    },
                ),
                (
                    objects[1].clone(),
                    ObjectSource::File {
                        file: named,
                        len: bytes.len() as u64,
                    },
                ),
                (
                    objects[2].clone(),
                    ObjectSource::File {
                        file: short,
                        len: 1_000,
                    },
                ),
            ])
            .unwrap();
        let linked = fs::metadata(store.full(&objects[0])).unwrap();
        assert_eq!(linked.ino(), ino, "the anonymous file is the object");
        assert_eq!(fs::read(store.full(&objects[0])).unwrap(), bytes);
        assert_eq!(fs::read(store.full(&objects[1])).unwrap(), bytes);
        assert_ne!(
            fs::metadata(store.full(&objects[1])).unwrap().ino(),
            fs::metadata(&named_path).unwrap().ino()
        );
        assert_eq!(fs::read(store.full(&objects[2])).unwrap(), &bytes[..1_000]);
        assert_eq!(fs::metadata(&named_path).unwrap().nlink(), 1);
    }
}
