//! The data folder's lock file (`<data dir>/.lock`, an advisory `flock`).
//! With the embedded SQLite store everything that writes the store holds it
//! exclusive for its lifetime: a server (its SQLite file, upload slots and
//! garbage-collection protection are one process's), `gc`, `scrub --repair`
//! and `sign`. So at most one of them runs on a data folder, and a second
//! one is refused at start with [`LockError::Busy`]. With PostgreSQL the
//! metadata is shared and servers take it shared (replicas may share a
//! folder). Read-only commands (`gc
//! --dry-run`, `scrub` without `--repair`) take no lock: they run beside a
//! server, and what they report may include writes in flight
//! ([`DataDirLock::is_held`] lets them say so). The kernel drops the lock
//! when the process dies, `kill -9` included.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use super::paths;

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockMode {
    Shared,
    Exclusive,
}

/// Why the exclusive lock could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("data dir {0} is in use by another bpf-registry server or a maintenance command (gc, scrub --repair, sign): only one may use it at a time; stop the other first")]
    Busy(PathBuf),
    #[error("cannot lock data dir {0}: {1}")]
    Io(PathBuf, #[source] io::Error),
}

impl LockError {
    /// As an `io::Error` carrying the message (`WouldBlock` when busy).
    pub fn into_io(self) -> io::Error {
        let kind = match &self {
            LockError::Busy(_) => io::ErrorKind::WouldBlock,
            LockError::Io(_, e) => e.kind(),
        };
        io::Error::new(kind, self.to_string())
    }
}

impl DataDirLock {
    /// Takes the lock exclusive for a process that writes the store.
    pub fn acquire_exclusive(data_dir: &Path) -> Result<DataDirLock, LockError> {
        Self::try_acquire(data_dir, LockMode::Exclusive).map_err(|e| {
            if e.kind() == io::ErrorKind::WouldBlock {
                LockError::Busy(data_dir.to_path_buf())
            } else {
                LockError::Io(data_dir.to_path_buf(), e)
            }
        })
    }

    /// Whether a writer holds the lock right now (probed with a shared
    /// lock, released at once). `false` when the folder does not exist.
    pub fn is_held(data_dir: &Path) -> bool {
        data_dir.is_dir()
            && matches!(
                Self::try_acquire(data_dir, LockMode::Shared),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock
            )
    }

    /// Takes the lock without waiting; `WouldBlock` if it is held in a
    /// conflicting mode.
    pub fn try_acquire(data_dir: &Path, mode: LockMode) -> io::Result<DataDirLock> {
        std::fs::create_dir_all(data_dir)?;
        let path = data_dir.join(paths::lock_file().as_str());
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)?;
        flock(&file, mode)?;
        Ok(DataDirLock { _file: file })
    }
}

#[cfg(unix)]
fn flock(file: &File, mode: LockMode) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let op = match mode {
        LockMode::Shared => libc::LOCK_SH,
        LockMode::Exclusive => libc::LOCK_EX,
    } | libc::LOCK_NB;
    loop {
        // SAFETY: the descriptor belongs to `file`, open for the whole call.
        let rc = unsafe { libc::flock(file.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

#[cfg(not(unix))]
fn flock(_file: &File, _mode: LockMode) -> io::Result<()> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_excludes_everything_and_names_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!DataDirLock::is_held(dir.path()));
        let held = DataDirLock::acquire_exclusive(dir.path()).unwrap();
        assert!(DataDirLock::is_held(dir.path()));
        let e = DataDirLock::acquire_exclusive(dir.path()).unwrap_err();
        assert!(matches!(e, LockError::Busy(_)));
        assert!(e.to_string().contains(&dir.path().display().to_string()));
        assert_eq!(e.into_io().kind(), io::ErrorKind::WouldBlock);
        drop(held);
        assert!(!DataDirLock::is_held(dir.path()));
        let _again = DataDirLock::acquire_exclusive(dir.path()).unwrap();
    }

    #[test]
    fn shared_excludes_exclusive() {
        let dir = tempfile::tempdir().unwrap();
        let a = DataDirLock::try_acquire(dir.path(), LockMode::Shared).unwrap();
        let _b = DataDirLock::try_acquire(dir.path(), LockMode::Shared).unwrap();
        let e = DataDirLock::try_acquire(dir.path(), LockMode::Exclusive).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        drop(a);
        drop(_b);
        let _x = DataDirLock::try_acquire(dir.path(), LockMode::Exclusive).unwrap();
        assert!(DataDirLock::try_acquire(dir.path(), LockMode::Shared).is_err());
    }
}
