//! One backend test suite that every blob store must pass: each case is a
//! function taking an `Arc<dyn Backend>`, run against the filesystem
//! backend on a temp dir (`fs::<case>`) and against the S3 backend
//! (`s3::<case>`) on a fresh random key prefix of the bucket that
//! `BPF_TEST_S3_URL` names (with `AWS_ACCESS_KEY_ID` /
//! `AWS_SECRET_ACCESS_KEY`). Without `BPF_TEST_S3_URL` the S3 cases print
//! a skip message and pass, except under `CI=true`, where they fail.
//! `conformance/blob_backends.sh` runs this file against a Garage it starts.
//!
//! A counting global allocator measures peak heap use for the streaming
//! case; the cases run one at a time (a lock) so that peak is their own.
//!
//! `measure_256_mib_throughput` (ignored) prints MB/s of a 256 MiB write
//! (`open_append` + `sync`, then `rename`) and read on each configured
//! backend: `cargo test --release --test blob_backends -- --ignored --nocapture`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Read;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bpf_registry::oci::{Digest, RepoName, Sha256Hasher, Tag};
use bpf_registry::storage::blob_store::BlobStoreConfig;
use bpf_registry::storage::s3::S3Credentials;
use bpf_registry::storage::{
    paths, Backend, Entry, FsBackend, S3Backend, StorageError, StorePath, UploadId,
};

// --- peak heap ------------------------------------------------------------

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = LIVE.fetch_add(by, Ordering::Relaxed) + by;
    PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is forwarded unchanged to the system allocator; the
// counters only observe sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Runs `f` and returns how far the heap grew above its level at the start.
fn peak_growth(f: impl FnOnce()) -> usize {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    f();
    PEAK.load(Ordering::Relaxed).saturating_sub(base)
}

// --- subjects ---------------------------------------------------------------

static SERIAL: Mutex<()> = Mutex::new(());

enum Kind {
    Fs,
    S3,
}

/// A fresh, empty store of `kind`; `None` when S3 is not configured (and
/// not under CI).
fn subject(kind: Kind, case: &str) -> Option<(Arc<dyn Backend>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    match kind {
        Kind::Fs => {
            let b: Arc<dyn Backend> = Arc::new(FsBackend::open(dir.path()).unwrap());
            Some((b, dir))
        }
        Kind::S3 => {
            let Ok(url) = std::env::var("BPF_TEST_S3_URL") else {
                if std::env::var("CI").is_ok_and(|v| v == "true") {
                    panic!("s3::{case}: BPF_TEST_S3_URL is unset under CI=true (run conformance/blob_backends.sh)");
                }
                eprintln!("SKIP s3::{case}: BPF_TEST_S3_URL is unset (conformance/blob_backends.sh starts a Garage)");
                return None;
            };
            // Each case on its own random prefix of the bucket.
            let (location, query) = url.split_once('?').unwrap_or((&url, ""));
            let prefix = format!("t-{}", uuid::Uuid::new_v4().simple());
            let url = format!("{}/{prefix}?{query}", location.trim_end_matches('/'));
            let config = BlobStoreConfig::parse(&url).unwrap();
            let b = config.open(dir.path(), true).unwrap();
            Some((b, dir))
        }
    }
}

fn run(kind: Kind, case: &str, f: fn(&Arc<dyn Backend>)) {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((b, _dir)) = subject(kind, case) {
        f(&b);
    }
}

macro_rules! suite {
    ($($case:ident),* $(,)?) => {
        mod fs {
            $( #[test] fn $case() { super::run(super::Kind::Fs, stringify!($case), super::cases::$case) } )*
        }
        mod s3 {
            $( #[test] fn $case() { super::run(super::Kind::S3, stringify!($case), super::cases::$case) } )*
        }
    };
}

suite!(
    write_atomic_replaces_the_whole_object,
    read_small_is_none_when_missing_and_enforces_its_cap,
    ranged_reads_start_at_zero_middle_and_end,
    open_append_truncate_drops_unacknowledged_bytes,
    open_append_truncate_inside_a_session_keeps_its_head,
    unsynced_writer_bytes_never_survive_a_reopen,
    empty_synced_append_is_an_empty_object,
    rename_of_a_multi_part_upload_yields_the_exact_bytes,
    rename_of_a_plain_object_moves_and_replaces,
    rename_of_a_missing_object_fails,
    list_shows_files_and_folders_and_hides_internal_names,
    delete_reports_whether_the_object_existed,
    delete_many_reports_each_and_removes_all,
    delete_dir_removes_everything_below_and_nothing_beside,
    age_grows_and_touch_restarts_it,
    probe_writable_succeeds,
    remove_stale_temps_takes_only_old_temp_objects,
    large_object_streams_with_bounded_memory,
    announced_append_stores_exactly_its_bytes_and_refuses_other_lengths,
);

/// The S3 backend on a fresh random prefix of `BPF_TEST_S3_URL`'s bucket;
/// `None` (a skip) without it, except under `CI=true`.
fn s3_backend(case: &str) -> Option<Arc<S3Backend>> {
    s3_backend_via(case, |endpoint| endpoint.to_string())
}

/// `s3_backend`, reaching the store at `endpoint(its endpoint)`.
fn s3_backend_via(case: &str, endpoint: impl FnOnce(&str) -> String) -> Option<Arc<S3Backend>> {
    let Ok(url) = std::env::var("BPF_TEST_S3_URL") else {
        if std::env::var("CI").is_ok_and(|v| v == "true") {
            panic!(
                "{case}: BPF_TEST_S3_URL is unset under CI=true (run conformance/blob_backends.sh)"
            );
        }
        eprintln!("SKIP {case}: BPF_TEST_S3_URL is unset");
        return None;
    };
    let (location, query) = url.split_once('?').unwrap_or((&url, ""));
    let prefix = format!("t-{}", uuid::Uuid::new_v4().simple());
    let url = format!("{}/{prefix}?{query}", location.trim_end_matches('/'));
    let BlobStoreConfig::S3(mut location) = BlobStoreConfig::parse(&url).unwrap() else {
        panic!("not an s3 URL: {url}");
    };
    location.endpoint = endpoint(&location.endpoint);
    let credentials = S3Credentials::from_env().unwrap();
    Some(Arc::new(S3Backend::open(&location, &credentials).unwrap()))
}

/// A chunked upload in parts of at least 5 MiB (but the last) becomes its
/// blob by copies inside the store (S3 `UploadPartCopy`), not by reading
/// its bytes back: the bytes are exact and the join was done in the store.
/// Parts under 5 MiB are joined by reading (the other S3 cases).
#[test]
fn s3_large_parts_are_joined_inside_the_store() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s3) = s3_backend("s3_large_parts_are_joined_inside_the_store") else {
        return;
    };
    let b: Arc<dyn Backend> = s3.clone();
    let mib = 1024 * 1024;
    let sessions = [
        bytes(40, 6 * mib),
        bytes(41, 5 * mib),
        bytes(42, 2 * mib + 3),
    ];
    let data = paths::upload_data(&UploadId::new_random());
    let mut offset = 0u64;
    let mut whole = Vec::new();
    for s in &sessions {
        let chunks: Vec<&[u8]> = s.chunks(256 * 1024).collect();
        append(&b, &data, offset, &chunks);
        offset += s.len() as u64;
        whole.extend_from_slice(s);
    }
    let blob = paths::blob(&Digest::of(&whole));
    b.rename(&data, &blob).unwrap();
    assert_eq!(
        s3.joined_in_store(),
        1,
        "the parts were joined inside the store"
    );
    let (got, len) = read_all(&b, &blob, 0).unwrap();
    assert_eq!(len, whole.len() as u64);
    assert!(got == whole, "joined bytes differ");
    assert_eq!(b.size(&data).unwrap(), None, "the source is gone");
    // A part under 5 MiB before the last: joined by reading, as exact.
    let data = paths::upload_data(&UploadId::new_random());
    let small_first = [bytes(43, mib), bytes(44, 6 * mib)];
    append(&b, &data, 0, &[&small_first[0]]);
    append(&b, &data, mib as u64, &[&small_first[1]]);
    let whole = small_first.concat();
    let blob = paths::blob(&Digest::of(&whole));
    b.rename(&data, &blob).unwrap();
    assert_eq!(s3.joined_in_store(), 1, "not joined inside the store");
    assert!(read_all(&b, &blob, 0).unwrap().0 == whole);
}

/// A part whose length was announced is sent while it is written (one
/// streamed PUT). A writer dropped before its sync, after it was given
/// every announced byte, must still store nothing: the store never
/// completes that PUT, so no part appears beside the acknowledged ones,
/// not even later.
#[test]
fn s3_an_announced_part_dropped_unsynced_is_never_stored() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Some(s3) = s3_backend("s3_an_announced_part_dropped_unsynced_is_never_stored") else {
        return;
    };
    let b: Arc<dyn Backend> = s3;
    let data = paths::upload_data(&UploadId::new_random());
    let acked = bytes(60, 100_000);
    announced_append(&b, &data, 0, &acked);
    for len in [1usize, 70_000, 3 * 1024 * 1024] {
        let mut w = b.open_append(&data, acked.len() as u64).unwrap();
        w.announce_len(len as u64);
        for c in bytes(61, len).chunks(16 * 1024) {
            w.write_all(c).unwrap();
        }
        // However long the writer waits before it is dropped.
        std::thread::sleep(Duration::from_millis(500));
        drop(w);
    }
    // Time for a PUT that was (wrongly) completed to land.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(b.size(&data).unwrap(), Some(acked.len() as u64));
    assert!(read_all(&b, &data, 0).unwrap().0 == acked);
}

/// A streamed part PUT cannot be retried once its body is consumed: when
/// its connection breaks mid-body (a store node killed under it), the
/// writer's sync must still store the part, from the bytes it kept, and
/// exactly those. A proxy in front of the store cuts the first part PUT.
#[test]
fn s3_an_announced_part_whose_put_is_cut_is_stored_by_sync() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut cutter = None;
    let Some(s3) = s3_backend_via(
        "s3_an_announced_part_whose_put_is_cut_is_stored_by_sync",
        |endpoint| {
            let proxy = CuttingProxy::start(endpoint);
            let url = proxy.url();
            cutter = Some(proxy);
            url
        },
    ) else {
        return;
    };
    let cutter = cutter.unwrap();
    let b: Arc<dyn Backend> = s3;
    let data = paths::upload_data(&UploadId::new_random());
    // Cut early (mid-body, while blocks are given) and late (at the sync).
    let mut whole = Vec::new();
    for (seed, len, cut_after) in [(70, 3 * 1024 * 1024, 64 * 1024), (71, 200_000, 150_000)] {
        cutter.arm(cut_after);
        let part = bytes(seed, len);
        announced_append(&b, &data, whole.len() as u64, &part);
        assert!(cutter.cut(), "the proxy cut no part PUT");
        whole.extend_from_slice(&part);
        assert_eq!(b.size(&data).unwrap(), Some(whole.len() as u64));
    }
    assert!(
        read_all(&b, &data, 0).unwrap().0 == whole,
        "stored bytes differ"
    );
}

/// A TCP proxy that forwards everything, except that once armed it cuts
/// the next part PUT (a read from the client that starts a `PUT` of a
/// `/.parts.` key, on a new or a pooled connection) after forwarding
/// `cut_after` bytes of it.
struct CuttingProxy {
    port: u16,
    /// Bytes to forward of the next part PUT before the cut; 0 = disarmed.
    armed: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
    seen_cuts: std::cell::Cell<usize>,
}

impl CuttingProxy {
    fn start(endpoint: &str) -> CuttingProxy {
        use std::io::Write;
        use std::net::{Shutdown, TcpListener, TcpStream};
        let upstream = endpoint
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let armed = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (armed2, cuts2) = (armed.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(mut client) = client else { return };
                let Ok(mut server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let (armed, cuts) = (armed2.clone(), cuts2.clone());
                let (Ok(mut back_to), Ok(mut back_from)) = (client.try_clone(), server.try_clone())
                else {
                    continue;
                };
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut back_from, &mut back_to);
                    let _ = back_to.shutdown(Shutdown::Both);
                });
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 16 * 1024];
                    // Bytes still to forward before the cut, once counting.
                    let mut left: Option<usize> = None;
                    loop {
                        let k = match client.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => k,
                        };
                        let chunk = &buf[..k];
                        let head = &chunk[..k.min(1024)];
                        if left.is_none()
                            && head.starts_with(b"PUT ")
                            && head.windows(8).any(|w| w == b"/.parts.")
                        {
                            let cut_after = armed.swap(0, Ordering::SeqCst);
                            if cut_after > 0 {
                                left = Some(cut_after);
                            }
                        }
                        let forward = left.map_or(k, |left| k.min(left));
                        if server.write_all(&chunk[..forward]).is_err() {
                            break;
                        }
                        if let Some(l) = left.as_mut() {
                            *l -= forward;
                            if *l == 0 {
                                cuts.fetch_add(1, Ordering::SeqCst);
                                let _ = client.shutdown(Shutdown::Both);
                                let _ = server.shutdown(Shutdown::Both);
                                return;
                            }
                        }
                    }
                    let _ = server.shutdown(Shutdown::Write);
                });
            }
        });
        CuttingProxy {
            port,
            armed,
            cuts,
            seen_cuts: std::cell::Cell::new(0),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn arm(&self, cut_after: usize) {
        self.armed.store(cut_after, Ordering::SeqCst);
    }

    /// Whether a cut happened since the last call.
    fn cut(&self) -> bool {
        let now = self.cuts.load(Ordering::SeqCst);
        let new = now > self.seen_cuts.get();
        self.seen_cuts.set(now);
        new
    }
}

// --- fixtures ---------------------------------------------------------------

/// Deterministic pseudo-random bytes (xorshift).
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

fn repo() -> RepoName {
    RepoName::parse("team/app").unwrap()
}

fn tag(name: &str) -> StorePath {
    paths::tag(&repo(), &Tag::parse(name).unwrap())
}

fn read_all(b: &Arc<dyn Backend>, p: &StorePath, offset: u64) -> Option<(Vec<u8>, u64)> {
    let r = b.open_read(p, offset).unwrap()?;
    let mut out = Vec::new();
    let mut reader = r.reader;
    reader.read_to_end(&mut out).unwrap();
    Some((out, r.len))
}

/// Appends `chunks` as one writer session starting at `offset`, synced.
fn append(b: &Arc<dyn Backend>, p: &StorePath, offset: u64, chunks: &[&[u8]]) {
    let mut w = b.open_append(p, offset).unwrap();
    for c in chunks {
        w.write_all(c).unwrap();
    }
    w.sync().unwrap();
}

/// Appends `bytes` as one writer session starting at `offset`, its length
/// announced first (as a request with a `Content-Length`), synced.
fn announced_append(b: &Arc<dyn Backend>, p: &StorePath, offset: u64, bytes: &[u8]) {
    let mut w = b.open_append(p, offset).unwrap();
    w.announce_len(bytes.len() as u64);
    for c in bytes.chunks(64 * 1024) {
        w.write_all(c).unwrap();
    }
    w.sync().unwrap();
}

fn names(mut entries: Vec<Entry>) -> Vec<(String, bool)> {
    entries.sort_by(|a, b| a.name.cmp(&b.name));
    entries.into_iter().map(|e| (e.name, e.is_dir)).collect()
}

mod cases {
    use super::*;

    pub fn write_atomic_replaces_the_whole_object(b: &Arc<dyn Backend>) {
        let p = tag("v1");
        b.write_atomic(&p, &bytes(1, 10_000)).unwrap();
        b.write_atomic(&p, b"short").unwrap();
        assert_eq!(b.read_small(&p, 100).unwrap().unwrap(), b"short");
        assert_eq!(b.size(&p).unwrap(), Some(5));
        assert_eq!(read_all(b, &p, 0).unwrap(), (b"short".to_vec(), 5));
        b.write_atomic(&p, b"").unwrap();
        assert_eq!(b.size(&p).unwrap(), Some(0));
        assert_eq!(b.read_small(&p, 0).unwrap().unwrap(), b"");
    }

    pub fn read_small_is_none_when_missing_and_enforces_its_cap(b: &Arc<dyn Backend>) {
        let p = tag("v1");
        assert_eq!(b.read_small(&p, 10).unwrap(), None);
        assert_eq!(b.size(&p).unwrap(), None);
        assert!(b.open_read(&p, 0).unwrap().is_none());
        assert!(b.open_read(&p, 3).unwrap().is_none());
        b.write_atomic(&p, b"0123456789").unwrap();
        assert_eq!(b.read_small(&p, 10).unwrap().unwrap(), b"0123456789");
        assert!(matches!(
            b.read_small(&p, 9),
            Err(StorageError::TooLarge(_, 9))
        ));
        // Upload data written in sessions is read whole too, cap included.
        let data = paths::upload_data(&UploadId::new_random());
        append(b, &data, 0, &[b"abc"]);
        append(b, &data, 3, &[b"def"]);
        assert_eq!(b.read_small(&data, 6).unwrap().unwrap(), b"abcdef");
        assert!(matches!(
            b.read_small(&data, 5),
            Err(StorageError::TooLarge(..))
        ));
    }

    pub fn ranged_reads_start_at_zero_middle_and_end(b: &Arc<dyn Backend>) {
        let content = bytes(2, 3 * 1024 * 1024 + 17);
        let len = content.len() as u64;
        let blob = paths::blob(&Digest::of(&content));
        b.write_atomic(&blob, &content).unwrap();
        // The same bytes as upload data in three sessions (three parts).
        let data = paths::upload_data(&UploadId::new_random());
        let (one, rest) = content.split_at(1000);
        let (two, three) = rest.split_at(2 * 1024 * 1024);
        append(b, &data, 0, &[one]);
        append(b, &data, 1000, &[two]);
        append(b, &data, 1000 + two.len() as u64, &[three]);
        assert_eq!(b.size(&data).unwrap(), Some(len));
        for p in [&blob, &data] {
            for offset in [
                0,
                1,
                999,
                1000,
                1001,
                len / 2,
                2 * 1024 * 1024 + 1000,
                len - 1,
                len,
            ] {
                let (got, whole) = read_all(b, p, offset).unwrap();
                assert_eq!(whole, len, "{p} at {offset}: len is the whole length");
                assert!(got == content[offset as usize..], "{p} at {offset}");
            }
            let (got, whole) = read_all(b, p, len + 10).unwrap();
            assert_eq!((got.len(), whole), (0, len), "{p} past the end");
        }
    }

    pub fn open_append_truncate_drops_unacknowledged_bytes(b: &Arc<dyn Backend>) {
        let data = paths::upload_data(&UploadId::new_random());
        append(b, &data, 0, &[b"hello"]);
        append(b, &data, 5, &[b" ", b"world"]);
        // A request whose bytes were stored but never acknowledged...
        append(b, &data, 11, &[b"garbage", b"garbage"]);
        append(b, &data, 25, &[b"more garbage"]);
        // ...is cut off by the next session at the acknowledged offset.
        append(b, &data, 11, &[b"!"]);
        assert_eq!(
            read_all(b, &data, 0).unwrap(),
            (b"hello world!".to_vec(), 12)
        );
        assert_eq!(b.size(&data).unwrap(), Some(12));
        assert_eq!(read_all(b, &data, 4).unwrap().0, b"o world!");
        // Back to zero drops everything.
        append(b, &data, 0, &[b"new"]);
        assert_eq!(b.read_small(&data, 100).unwrap().unwrap(), b"new");
    }

    pub fn open_append_truncate_inside_a_session_keeps_its_head(b: &Arc<dyn Backend>) {
        let data = paths::upload_data(&UploadId::new_random());
        append(b, &data, 0, &[b"abc"]);
        append(b, &data, 3, &[b"defghij"]);
        append(b, &data, 5, &[b"XY"]);
        assert_eq!(b.read_small(&data, 100).unwrap().unwrap(), b"abcdeXY");
        append(b, &data, 1, &[b"-"]);
        assert_eq!(b.read_small(&data, 100).unwrap().unwrap(), b"a-");
    }

    pub fn unsynced_writer_bytes_never_survive_a_reopen(b: &Arc<dyn Backend>) {
        let data = paths::upload_data(&UploadId::new_random());
        append(b, &data, 0, &[b"abc"]);
        {
            let mut w = b.open_append(&data, 3).unwrap();
            w.write_all(b"lost").unwrap();
            // A big unsynced session too (a multipart upload on S3).
            w.write_all(&bytes(3, 9 * 1024 * 1024)).unwrap();
        }
        append(b, &data, 3, &[b"d"]);
        assert_eq!(b.read_small(&data, 100).unwrap().unwrap(), b"abcd");
    }

    pub fn announced_append_stores_exactly_its_bytes_and_refuses_other_lengths(
        b: &Arc<dyn Backend>,
    ) {
        let data = paths::upload_data(&UploadId::new_random());
        let first = bytes(50, 300_000);
        announced_append(b, &data, 0, &first);
        assert!(read_all(b, &data, 0).unwrap().0 == first);
        let at = first.len() as u64;
        // Fewer bytes than announced: the sync fails and stores nothing.
        let mut w = b.open_append(&data, at).unwrap();
        w.announce_len(10);
        w.write_all(b"short").unwrap();
        assert!(w.sync().is_err(), "a sync short of the announced length");
        drop(w);
        // More: the write that passes the announced length fails.
        let mut w = b.open_append(&data, at).unwrap();
        w.announce_len(3);
        assert!(w.write_all(b"too long").is_err(), "more than announced");
        drop(w);
        // Neither left a byte behind the acknowledged ones; the next
        // session (announced, and larger than one S3 chunk: a multipart
        // upload) appends right after them.
        let second = bytes(51, 9 * 1024 * 1024);
        announced_append(b, &data, at, &second);
        let (got, len) = read_all(b, &data, 0).unwrap();
        assert_eq!(len, at + second.len() as u64);
        assert!(got == [first, second].concat());
    }

    pub fn empty_synced_append_is_an_empty_object(b: &Arc<dyn Backend>) {
        let data = paths::upload_data(&UploadId::new_random());
        append(b, &data, 0, &[]);
        assert_eq!(b.size(&data).unwrap(), Some(0));
        assert_eq!(read_all(b, &data, 0).unwrap(), (Vec::new(), 0));
        let blob = paths::blob(&Digest::of(b""));
        b.rename(&data, &blob).unwrap();
        assert_eq!(b.size(&blob).unwrap(), Some(0));
        assert_eq!(b.size(&data).unwrap(), None);
    }

    pub fn rename_of_a_multi_part_upload_yields_the_exact_bytes(b: &Arc<dyn Backend>) {
        let id = UploadId::new_random();
        let data = paths::upload_data(&id);
        // Sessions of 1 byte, 9 MiB (more than one PUT), 3 MiB, 0 and 100.
        let sessions = [
            bytes(10, 1),
            bytes(11, 9 * 1024 * 1024),
            bytes(12, 3 * 1024 * 1024),
            Vec::new(),
            bytes(13, 100),
        ];
        let mut offset = 0u64;
        let mut whole = Vec::new();
        for s in &sessions {
            let chunks: Vec<&[u8]> = s.chunks(64 * 1024).collect();
            append(b, &data, offset, &chunks);
            offset += s.len() as u64;
            whole.extend_from_slice(s);
        }
        let digest = Digest::of(&whole);
        let blob = paths::blob(&digest);
        b.write_atomic(&blob, b"an older, wrong object").unwrap();
        b.rename(&data, &blob).unwrap();
        let (got, len) = read_all(b, &blob, 0).unwrap();
        assert_eq!(len, whole.len() as u64);
        assert!(got == whole, "renamed bytes differ");
        assert_eq!(Digest::of(&got), digest);
        assert_eq!(b.size(&data).unwrap(), None, "the source is gone");
        let left = names(b.list(&paths::upload_dir(&id)).unwrap());
        assert!(left.is_empty(), "nothing listed for the upload: {left:?}");
        // A single-session upload too.
        let data = paths::upload_data(&UploadId::new_random());
        append(b, &data, 0, &[b"one part"]);
        let blob = paths::blob(&Digest::of(b"one part"));
        b.rename(&data, &blob).unwrap();
        assert_eq!(b.read_small(&blob, 100).unwrap().unwrap(), b"one part");
        assert_eq!(b.size(&data).unwrap(), None);
    }

    pub fn rename_of_a_plain_object_moves_and_replaces(b: &Arc<dyn Backend>) {
        let d = Digest::of(b"x");
        let (from, to) = (paths::blob(&d), paths::quarantine(&d));
        b.write_atomic(&from, b"corrupt bytes").unwrap();
        b.write_atomic(&to, b"an earlier quarantined copy").unwrap();
        b.rename(&from, &to).unwrap();
        assert_eq!(b.read_small(&to, 100).unwrap().unwrap(), b"corrupt bytes");
        assert_eq!(b.size(&from).unwrap(), None);
    }

    pub fn rename_of_a_missing_object_fails(b: &Arc<dyn Backend>) {
        let d = Digest::of(b"missing");
        let to = paths::blob(&d);
        assert!(b
            .rename(&paths::upload_data(&UploadId::new_random()), &to)
            .is_err());
        assert_eq!(b.size(&to).unwrap(), None);
    }

    pub fn list_shows_files_and_folders_and_hides_internal_names(b: &Arc<dyn Backend>) {
        b.write_atomic(&tag("v1"), b"d1").unwrap();
        b.write_atomic(&tag("v2.parts"), b"d2").unwrap();
        b.write_atomic(&paths::temp_beside(&tag("v3")), b"temp")
            .unwrap();
        let nested = RepoName::parse("team/app/sub").unwrap();
        b.write_atomic(&paths::tag(&nested, &Tag::parse("x").unwrap()), b"d")
            .unwrap();
        let dotted = RepoName::parse("team/app.parts").unwrap();
        b.write_atomic(&paths::tag(&dotted, &Tag::parse("x").unwrap()), b"d")
            .unwrap();
        assert_eq!(
            names(b.list(&paths::tags_dir(&repo())).unwrap()),
            [("v1".to_string(), false), ("v2.parts".to_string(), false)]
        );
        assert_eq!(
            names(
                b.list(&paths::repositories_child(&["team".into()]))
                    .unwrap()
            ),
            [("app".to_string(), true), ("app.parts".to_string(), true)]
        );
        assert_eq!(
            names(b.list(&paths::repo_dir(&repo())).unwrap()),
            [("_tags".to_string(), true), ("sub".to_string(), true)]
        );
        // An upload: its data (written in sessions) and state are files.
        let id = UploadId::new_random();
        append(b, &paths::upload_data(&id), 0, &[b"abc"]);
        append(b, &paths::upload_data(&id), 3, &[b"def"]);
        b.write_atomic(&paths::upload_state(&id), b"{}").unwrap();
        assert_eq!(
            names(b.list(&paths::upload_dir(&id)).unwrap()),
            [("data".to_string(), false), ("state".to_string(), false)]
        );
        assert_eq!(
            names(b.list(&paths::uploads_dir()).unwrap()),
            [(id.to_string(), true)]
        );
        assert!(b.list(&paths::blobs_dir()).unwrap().is_empty());
    }

    pub fn delete_reports_whether_the_object_existed(b: &Arc<dyn Backend>) {
        let p = tag("v1");
        assert!(!b.delete(&p).unwrap());
        b.write_atomic(&p, b"d").unwrap();
        assert!(b.delete(&p).unwrap());
        assert_eq!(b.size(&p).unwrap(), None);
        assert!(!b.delete(&p).unwrap());
        let data = paths::upload_data(&UploadId::new_random());
        append(b, &data, 0, &[b"abc"]);
        append(b, &data, 3, &[b"def"]);
        assert!(b.delete(&data).unwrap());
        assert_eq!(b.size(&data).unwrap(), None);
    }

    pub fn delete_many_reports_each_and_removes_all(b: &Arc<dyn Backend>) {
        let all: Vec<StorePath> = (0..30).map(|i| tag(&format!("t{i}"))).collect();
        for p in all.iter().step_by(2) {
            b.write_atomic(p, b"d").unwrap();
        }
        let existed = b.delete_many(&all).unwrap();
        let want: Vec<bool> = (0..30).map(|i| i % 2 == 0).collect();
        assert_eq!(existed, want);
        assert!(b.list(&paths::tags_dir(&repo())).unwrap().is_empty());
        assert!(b.delete_many(&[]).unwrap().is_empty());
    }

    pub fn delete_dir_removes_everything_below_and_nothing_beside(b: &Arc<dyn Backend>) {
        let app = repo();
        let sibling = RepoName::parse("team/application").unwrap();
        let nested = RepoName::parse("team/app/sub").unwrap();
        let t = Tag::parse("v1").unwrap();
        for r in [&app, &sibling, &nested] {
            b.write_atomic(&paths::tag(r, &t), b"d").unwrap();
        }
        let id = UploadId::new_random();
        append(b, &paths::upload_data(&id), 0, &[b"abc"]);
        b.write_atomic(&paths::upload_state(&id), b"{}").unwrap();
        b.delete_dir(&paths::repo_dir(&app)).unwrap();
        b.delete_dir(&paths::upload_dir(&id)).unwrap();
        assert_eq!(b.size(&paths::tag(&app, &t)).unwrap(), None);
        assert_eq!(b.size(&paths::tag(&nested, &t)).unwrap(), None);
        assert_eq!(b.size(&paths::tag(&sibling, &t)).unwrap(), Some(1));
        assert_eq!(b.size(&paths::upload_data(&id)).unwrap(), None);
        assert!(b.list(&paths::uploads_dir()).unwrap().is_empty());
        // A missing folder is not an error.
        b.delete_dir(&paths::upload_dir(&UploadId::new_random()))
            .unwrap();
    }

    pub fn age_grows_and_touch_restarts_it(b: &Arc<dyn Backend>) {
        let blob = paths::blob(&Digest::of(b"aged"));
        assert_eq!(b.age_secs(&blob).unwrap(), None);
        assert!(!b.touch(&blob).unwrap());
        b.write_atomic(&blob, b"aged").unwrap();
        let data = paths::upload_data(&UploadId::new_random());
        append(b, &data, 0, &[b"abc"]);
        std::thread::sleep(Duration::from_millis(2200));
        let before = b.age_secs(&blob).unwrap().unwrap();
        assert!(before >= 2, "age {before} after 2.2 s");
        assert!(b.age_secs(&data).unwrap().unwrap() >= 2);
        assert!(b.touch(&blob).unwrap());
        assert!(b.touch(&data).unwrap());
        let after = b.age_secs(&blob).unwrap().unwrap();
        assert!(after <= 1, "age {after} right after touch");
        assert!(b.age_secs(&data).unwrap().unwrap() <= 1);
        // Touch changes nothing else.
        assert_eq!(b.read_small(&blob, 100).unwrap().unwrap(), b"aged");
        assert_eq!(b.read_small(&data, 100).unwrap().unwrap(), b"abc");
        // A folder's age: what an upload folder without state is purged by.
        let dir_age = b.age_secs(&paths::blobs_dir()).unwrap();
        assert!(dir_age.is_some_and(|a| a <= 3), "{dir_age:?}");
    }

    pub fn probe_writable_succeeds(b: &Arc<dyn Backend>) {
        b.probe_writable().unwrap();
        b.probe_writable().unwrap();
        assert_eq!(
            b.remove_stale_temps(0).unwrap(),
            (0, 0),
            "the probe left nothing"
        );
    }

    pub fn remove_stale_temps_takes_only_old_temp_objects(b: &Arc<dyn Backend>) {
        let blob = paths::blob(&Digest::of(b"kept"));
        b.write_atomic(&blob, b"kept").unwrap();
        let temp = paths::temp_beside(&blob);
        b.write_atomic(&temp, b"leftover").unwrap();
        assert_eq!(b.remove_stale_temps(3600).unwrap(), (0, 0), "too young");
        assert_eq!(b.remove_stale_temps(0).unwrap(), (1, 8));
        assert_eq!(b.size(&temp).unwrap(), None);
        assert_eq!(b.size(&blob).unwrap(), Some(4));
    }

    /// 64 MiB (more than a writer may hold: whole-buffering would show)
    /// written in one session, renamed and read back, under 48 MiB of
    /// peak heap growth.
    pub fn large_object_streams_with_bounded_memory(b: &Arc<dyn Backend>) {
        const LEN: usize = 64 * 1024 * 1024;
        const BLOCK: usize = 256 * 1024;
        let block = bytes(20, BLOCK);
        let data = paths::upload_data(&UploadId::new_random());
        let mut want = Sha256Hasher::new();
        for _ in 0..LEN / BLOCK {
            want.update(&block);
        }
        let digest = want.finish();
        let blob = paths::blob(&digest);
        let growth = peak_growth(|| {
            let mut w = b.open_append(&data, 0).unwrap();
            for _ in 0..LEN / BLOCK {
                w.write_all(&block).unwrap();
            }
            w.sync().unwrap();
            drop(w);
            b.rename(&data, &blob).unwrap();
            let r = b.open_read(&blob, 0).unwrap().unwrap();
            assert_eq!(r.len, LEN as u64);
            let mut reader = r.reader;
            let mut got = Sha256Hasher::new();
            let mut buf = vec![0u8; BLOCK];
            let mut total = 0usize;
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                got.update(&buf[..n]);
                total += n;
            }
            assert_eq!(total, LEN);
            assert_eq!(got.finish(), digest);
        });
        assert!(
            growth < 48 * 1024 * 1024,
            "peak heap grew by {} MiB for a {} MiB object",
            growth >> 20,
            LEN >> 20
        );
    }
}

/// Not a check: prints MB/s of 256 MiB written in one session (and in four
/// sessions, whose rename concatenates parts), renamed, and read back.
#[test]
#[ignore]
fn measure_256_mib_throughput() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    const MIB: usize = 1024 * 1024;
    const LEN: usize = 256 * MIB;
    let block = bytes(30, MIB);
    let mbps = |secs: f64| LEN as f64 / MIB as f64 / secs;
    for (name, kind) in [("fs", Kind::Fs), ("s3", Kind::S3)] {
        let Some((b, _dir)) = subject(kind, "measure_256_mib_throughput") else {
            continue;
        };
        for sessions in [1usize, 4] {
            let data = paths::upload_data(&UploadId::new_random());
            let blob = paths::blob(&Digest::of(format!("{name}{sessions}").as_bytes()));
            let per = LEN / sessions;
            let t = std::time::Instant::now();
            for s in 0..sessions {
                let mut w = b.open_append(&data, (s * per) as u64).unwrap();
                for _ in 0..per / MIB {
                    w.write_all(&block).unwrap();
                }
                w.sync().unwrap();
            }
            let written = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            b.rename(&data, &blob).unwrap();
            let renamed = t.elapsed().as_secs_f64();
            let t = std::time::Instant::now();
            let r = b.open_read(&blob, 0).unwrap().unwrap();
            let mut reader = r.reader;
            let mut buf = vec![0u8; MIB];
            let mut total = 0usize;
            loop {
                let n = reader.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                total += n;
            }
            let read = t.elapsed().as_secs_f64();
            assert_eq!(total, LEN);
            println!(
                "MEASURE {name} 256 MiB in {sessions} session(s): append+sync {:.0} MB/s ({written:.2} s), \
                 rename {renamed:.2} s, write+rename {:.0} MB/s, read {:.0} MB/s ({read:.2} s)",
                mbps(written),
                mbps(written + renamed),
                mbps(read),
            );
            b.delete(&blob).unwrap();
        }
    }
}
