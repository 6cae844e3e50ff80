//! A [`Backend`] that times every call of the backend it wraps into
//! `registry_storage_operation_duration_seconds{backend,operation}`.
//! The operation is the trait method's name (writes to and syncs of an
//! upload's append writer are `append_write` and `append_sync`); the
//! histograms are resolved once, when the wrapper is made, so a call costs
//! two clock reads and one observation. Errors are timed like successes.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::metrics::histogram::Histogram;

use super::{AppendWriter, Backend, Entry, ObjectReader, StorageResult, StorePath};
use crate::metrics::Metrics;

/// The timed operations, in the order of [`Op::NAMES`].
#[derive(Debug, Clone, Copy)]
enum Op {
    ReadSmall,
    WriteAtomic,
    Size,
    OpenRead,
    OpenAppend,
    AppendWrite,
    AppendSync,
    AppendWriteback,
    Rename,
    Delete,
    DeleteMany,
    DeleteDir,
    List,
    Age,
    ProbeWritable,
    Touch,
    RemoveStaleTemps,
}

impl Op {
    /// The `operation` label of each [`Op`], by its index.
    const NAMES: [&'static str; 17] = [
        "read_small",
        "write_atomic",
        "size",
        "open_read",
        "open_append",
        "append_write",
        "append_sync",
        "append_writeback",
        "rename",
        "delete",
        "delete_many",
        "delete_dir",
        "list",
        "age",
        "probe_writable",
        "touch",
        "remove_stale_temps",
    ];
}

/// One histogram per operation.
#[derive(Clone)]
struct Timers(Arc<[Histogram]>);

impl Timers {
    fn time<T>(&self, op: Op, f: impl FnOnce() -> T) -> T {
        let started = Instant::now();
        let out = f();
        if let Some(h) = self.0.get(op as usize) {
            h.observe(started.elapsed().as_secs_f64());
        }
        out
    }
}

/// The wrapper; `backend` names the wrapped one (`fs`).
pub struct InstrumentedBackend {
    inner: Arc<dyn Backend>,
    timers: Timers,
}

impl InstrumentedBackend {
    pub fn new(inner: Arc<dyn Backend>, backend: &'static str, metrics: &Metrics) -> Self {
        let timers = Op::NAMES
            .iter()
            .map(|op| metrics.storage_timer(backend, op))
            .collect();
        InstrumentedBackend {
            inner,
            timers: Timers(timers),
        }
    }
}

/// `inner` timed into `metrics` when there are metrics, else `inner`.
pub fn wrap(
    inner: Arc<dyn Backend>,
    backend: &'static str,
    metrics: Option<&Arc<Metrics>>,
) -> Arc<dyn Backend> {
    match metrics {
        Some(m) => Arc::new(InstrumentedBackend::new(inner, backend, m)),
        None => inner,
    }
}

struct TimedWriter {
    inner: Box<dyn AppendWriter>,
    timers: Timers,
}

impl AppendWriter for TimedWriter {
    fn write_all(&mut self, buf: &[u8]) -> StorageResult<()> {
        let w = &mut self.inner;
        self.timers.time(Op::AppendWrite, || w.write_all(buf))
    }

    fn sync(&mut self) -> StorageResult<()> {
        let w = &mut self.inner;
        self.timers.time(Op::AppendSync, || w.sync())
    }

    fn start_writeback(&mut self) -> StorageResult<()> {
        let w = &mut self.inner;
        self.timers
            .time(Op::AppendWriteback, || w.start_writeback())
    }

    fn announce_len(&mut self, len: u64) {
        self.inner.announce_len(len)
    }
}

impl Backend for InstrumentedBackend {
    fn read_small(&self, path: &StorePath, max: u64) -> StorageResult<Option<Vec<u8>>> {
        self.timers
            .time(Op::ReadSmall, || self.inner.read_small(path, max))
    }

    fn write_atomic(&self, path: &StorePath, data: &[u8]) -> StorageResult<()> {
        self.timers
            .time(Op::WriteAtomic, || self.inner.write_atomic(path, data))
    }

    fn write_objects(&self, items: Vec<(StorePath, super::ObjectSource)>) -> StorageResult<()> {
        self.timers
            .time(Op::WriteAtomic, || self.inner.write_objects(items))
    }

    fn size(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        self.timers.time(Op::Size, || self.inner.size(path))
    }

    fn open_read(&self, path: &StorePath, offset: u64) -> StorageResult<Option<ObjectReader>> {
        self.timers
            .time(Op::OpenRead, || self.inner.open_read(path, offset))
    }

    fn open_file(&self, path: &StorePath) -> StorageResult<Option<std::fs::File>> {
        self.timers
            .time(Op::OpenRead, || self.inner.open_file(path))
    }

    fn open_append(
        &self,
        path: &StorePath,
        truncate_to: u64,
    ) -> StorageResult<Box<dyn AppendWriter>> {
        let w = self
            .timers
            .time(Op::OpenAppend, || self.inner.open_append(path, truncate_to))?;
        Ok(Box::new(TimedWriter {
            inner: w,
            timers: self.timers.clone(),
        }))
    }

    fn rename(&self, from: &StorePath, to: &StorePath) -> StorageResult<()> {
        self.timers.time(Op::Rename, || self.inner.rename(from, to))
    }

    fn delete(&self, path: &StorePath) -> StorageResult<bool> {
        self.timers.time(Op::Delete, || self.inner.delete(path))
    }

    fn delete_many(&self, paths: &[StorePath]) -> StorageResult<Vec<bool>> {
        self.timers
            .time(Op::DeleteMany, || self.inner.delete_many(paths))
    }

    fn delete_dir(&self, path: &StorePath) -> StorageResult<()> {
        self.timers
            .time(Op::DeleteDir, || self.inner.delete_dir(path))
    }

    fn list(&self, path: &StorePath) -> StorageResult<Vec<Entry>> {
        self.timers.time(Op::List, || self.inner.list(path))
    }

    fn age_secs(&self, path: &StorePath) -> StorageResult<Option<u64>> {
        self.timers.time(Op::Age, || self.inner.age_secs(path))
    }

    fn probe_writable(&self) -> StorageResult<()> {
        self.timers
            .time(Op::ProbeWritable, || self.inner.probe_writable())
    }

    fn touch(&self, path: &StorePath) -> StorageResult<bool> {
        self.timers.time(Op::Touch, || self.inner.touch(path))
    }

    fn chunk_min_length(&self) -> Option<u64> {
        self.inner.chunk_min_length()
    }

    fn remove_stale_temps(&self, min_age_secs: u64) -> StorageResult<(u64, u64)> {
        self.timers.time(Op::RemoveStaleTemps, || {
            self.inner.remove_stale_temps(min_age_secs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::{paths, FsBackend};

    #[test]
    fn every_operation_is_timed_under_its_name_and_answers_like_the_inner_backend() {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Metrics::new();
        let fs: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
        let b = InstrumentedBackend::new(fs, "fs", &metrics);
        let p = paths::blob(&crate::oci::Digest::of(b"hello"));
        b.write_atomic(&p, b"hello").unwrap();
        assert_eq!(
            b.read_small(&p, 100).unwrap().as_deref(),
            Some(&b"hello"[..])
        );
        assert_eq!(b.size(&p).unwrap(), Some(5));
        let q = paths::upload_data(&crate::storage::UploadId::new_random());
        let mut w = b.open_append(&q, 0).unwrap();
        w.write_all(b"xy").unwrap();
        w.sync().unwrap();
        drop(w);
        assert_eq!(b.size(&q).unwrap(), Some(2));
        assert!(b.delete(&q).unwrap());
        assert!(!b.delete(&q).unwrap());
        let text = metrics.encode(Default::default()).unwrap();
        for op in [
            "write_atomic",
            "read_small",
            "size",
            "open_append",
            "append_write",
            "append_sync",
            "delete",
        ] {
            let series = format!(
                "registry_storage_operation_duration_seconds_count{{backend=\"fs\",operation=\"{op}\"}}"
            );
            let line = text
                .lines()
                .find(|l| l.starts_with(&series))
                .unwrap_or_else(|| panic!("no {series} in\n{text}"));
            let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
            let want = match op {
                "size" | "delete" => 2,
                _ => 1,
            };
            assert_eq!(n, want, "{line}");
        }
    }
}
