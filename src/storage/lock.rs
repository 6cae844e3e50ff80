//! The data folder's lock file (`<data dir>/.lock`, an advisory `flock`).
//! A server holds it shared for its lifetime, as do read-only maintenance
//! commands; `gc` and `scrub --repair` hold it exclusive, so they never
//! run beside a server (which runs its own collector) or each other. The
//! kernel drops the lock when the process dies, `kill -9` included.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

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

impl DataDirLock {
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
