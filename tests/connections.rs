//! Connection lifecycle and slow clients against a real server: silent
//! connections (plain HTTP/1, h2c after the preface, raw TCP to a TLS port,
//! TLS after the handshake) are closed after the header timeout and never
//! delay a new client, even with few file descriptors (the real binary
//! under `RLIMIT_NOFILE` 256); the connection cap evicts the longest-idle
//! connection and refuses cleanly when every connection is busy; a
//! trickling request body loses its concurrency permit (408, nothing
//! stored) while a slow but steady one succeeds; a client that stops
//! reading its response loses its permit too.
//!
//! The TLS tests make a CA and a certificate with the `openssl` command;
//! without it they are skipped, except under `CI=true` where they fail.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{sha256, TestServer};
use reqwest::StatusCode;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

const BIN: &str = env!("CARGO_BIN_EXE_bpf-registry");

/// How many silent connections the attacks open.
const SILENT: usize = 300;
/// The descriptor limit of the server process in the exhaustion tests.
const NOFILE: u64 = 256;
/// Liveness bound for a new client's `/healthz` beside the attack (the
/// target is one second; measured values are printed).
const HEALTHZ_BOUND: Duration = Duration::from_secs(2);

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// An empty SETTINGS frame.
const H2_SETTINGS: &[u8] = &[0, 0, 0, 4, 0, 0, 0, 0, 0];

// ---- helpers -------------------------------------------------------------------

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Reads until EOF, an error or `limit`; returns what came and how long
/// it took.
async fn read_until_closed<R: AsyncRead + Unpin>(
    s: &mut R,
    limit: Duration,
) -> (Vec<u8>, Duration) {
    let t0 = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
    (out, t0.elapsed())
}

/// Whether the peer closed the connection within `limit` (EOF or reset).
async fn closed_within<R: AsyncRead + Unpin>(s: &mut R, limit: Duration) -> bool {
    let t0 = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

/// `GET /healthz` on a new connection over any stream; returns the answer.
async fn healthz_on<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> String {
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .await
        .expect("write healthz");
    let (answer, _) = read_until_closed(s, Duration::from_secs(10)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

/// How long a new plain client takes to get `/healthz` answered 200.
async fn healthz_latency(addr: SocketAddr) -> Duration {
    let t0 = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(10), async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        healthz_on(&mut s).await
    })
    .await
    .unwrap_or_default();
    let took = t0.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "/healthz after {took:?}: {answer:?}"
    );
    took
}

/// How long a new TLS client takes to get `/healthz` answered 200
/// (handshake included).
async fn tls_healthz_latency(addr: SocketAddr, tls: &Tls) -> Duration {
    let t0 = Instant::now();
    let answer = tokio::time::timeout(Duration::from_secs(15), async {
        match tls.connect(addr).await {
            Ok(mut s) => healthz_on(&mut s).await,
            Err(e) => format!("handshake failed: {e}"),
        }
    })
    .await
    .unwrap_or_default();
    let took = t0.elapsed();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "TLS /healthz after {took:?}: {answer:?}"
    );
    took
}

/// The ways a connection can say nothing.
#[derive(Clone, Copy, Debug)]
enum Silence {
    /// Connect and send nothing (to a plain or a TLS port).
    Tcp,
    /// The HTTP/2 preface and an empty SETTINGS frame, then nothing.
    H2cPreface,
}

async fn open_silent(addr: SocketAddr, n: usize, how: Silence) -> Vec<TcpStream> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        let Ok(mut s) = TcpStream::connect(addr).await else {
            continue;
        };
        if let Silence::H2cPreface = how {
            let _ = s.write_all(H2_PREFACE).await;
            let _ = s.write_all(H2_SETTINGS).await;
        }
        held.push(s);
    }
    held
}

// ---- the real binary with a descriptor limit -------------------------------------

/// The `bpf-registry` binary on 127.0.0.1 with `RLIMIT_NOFILE` lowered to
/// `nofile`; killed when dropped.
struct Proc {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Proc {
    fn spawn(nofile: Option<u64>, env: &[(&str, String)]) -> Proc {
        let data = tempfile::tempdir().expect("tempdir");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let log = data.path().join("server.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut cmd = Command::new(BIN);
        cmd.env_clear()
            .env("BPF_REGISTRY_HTTP_ADDR", addr.to_string())
            .env("BPF_REGISTRY_DATA_DIR", data.path().join("store"))
            .env("BPF_REGISTRY_LOG_LEVEL", "WARN")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().expect("log file"))
            .stderr(log_file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        if let Some(nofile) = nofile {
            let mut hard = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes into the struct we own.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut hard) },
                0
            );
            let limit = libc::rlimit {
                rlim_cur: nofile as libc::rlim_t,
                rlim_max: hard.rlim_max,
            };
            // SAFETY: setrlimit is async-signal-safe; only the child changes.
            unsafe {
                use std::os::unix::process::CommandExt as _;
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &limit) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let child = cmd.spawn().expect("start bpf-registry");
        Proc {
            child,
            addr,
            log,
            _data: data,
        }
    }

    /// Waits until the server answers (plain, or TLS with `tls`).
    async fn wait_ready(&mut self, tls: Option<&Tls>) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = tokio::time::timeout(Duration::from_secs(2), async {
                match tls {
                    None => match TcpStream::connect(self.addr).await {
                        Ok(mut s) => healthz_on(&mut s).await,
                        Err(_) => String::new(),
                    },
                    Some(tls) => match tls.connect(self.addr).await {
                        Ok(mut s) => healthz_on(&mut s).await,
                        Err(_) => String::new(),
                    },
                }
            })
            .await
            .unwrap_or_default();
            if answer.starts_with("HTTP/1.1 200") {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited ({status}): {}", self.log());
            }
            assert!(Instant::now() < deadline, "not ready: {}", self.log());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- TLS -----------------------------------------------------------------------

/// A CA and a server certificate for 127.0.0.1 made with `openssl`, and a
/// client that trusts the CA. `None` when openssl is missing (outside CI).
struct Tls {
    dir: tempfile::TempDir,
    connector: tokio_rustls::TlsConnector,
}

impl Tls {
    fn make() -> Option<Tls> {
        let dir = tempfile::tempdir().expect("tempdir");
        let run = |args: &[&str]| -> bool {
            match Command::new("openssl")
                .args(args)
                .current_dir(dir.path())
                .output()
            {
                Ok(out) => {
                    assert!(
                        out.status.success(),
                        "openssl {args:?}: {}",
                        String::from_utf8_lossy(&out.stderr)
                    );
                    true
                }
                Err(e) => {
                    assert!(
                        std::env::var("CI").as_deref() != Ok("true"),
                        "openssl is needed for the TLS tests under CI: {e}"
                    );
                    eprintln!("skipped: no openssl command ({e})");
                    false
                }
            }
        };
        let ok = run(&[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=bpf-registry test CA",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        if !ok {
            return None;
        }
        std::fs::write(
            dir.path().join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        run(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            "server.key",
            "-subj",
            "/CN=127.0.0.1",
            "-out",
            "server.csr",
        ]);
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-sha256",
            "-extfile",
            "ext.cnf",
            "-out",
            "server.pem",
        ]);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(dir.path().join("ca.pem")).unwrap() {
            roots.add(cert.unwrap()).unwrap();
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Some(Tls {
            dir,
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    fn env(&self) -> Vec<(&'static str, String)> {
        let p = |f: &str| self.dir.path().join(f).to_string_lossy().into_owned();
        vec![
            ("BPF_REGISTRY_TLS_CERT", p("server.pem")),
            ("BPF_REGISTRY_TLS_KEY", p("server.key")),
        ]
    }

    async fn connect(
        &self,
        addr: SocketAddr,
    ) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
        let tcp = TcpStream::connect(addr).await?;
        let name = ServerName::try_from("127.0.0.1").unwrap();
        self.connector.connect(name, tcp).await
    }
}

// ---- silent connections with few descriptors ----------------------------------------

#[tokio::test]
async fn silent_plain_connections_do_not_exhaust_descriptors_or_delay_healthz() {
    let mut server = Proc::spawn(Some(NOFILE), &[]);
    server.wait_ready(None).await;
    let held = open_silent(server.addr, SILENT, Silence::Tcp).await;
    let took = healthz_latency(server.addr).await;
    eprintln!(
        "plain: /healthz beside {} silent connections: {took:?}",
        held.len()
    );
    assert!(took < HEALTHZ_BOUND, "/healthz took {took:?}");
    drop(held);
}

#[tokio::test]
async fn silent_h2c_connections_do_not_exhaust_descriptors_or_delay_healthz() {
    let mut server = Proc::spawn(Some(NOFILE), &[]);
    server.wait_ready(None).await;
    let held = open_silent(server.addr, SILENT, Silence::H2cPreface).await;
    let took = healthz_latency(server.addr).await;
    eprintln!(
        "h2c: /healthz beside {} silent connections: {took:?}",
        held.len()
    );
    assert!(took < HEALTHZ_BOUND, "/healthz took {took:?}");
    drop(held);
}

#[tokio::test]
async fn silent_tcp_on_the_tls_port_does_not_hold_up_handshakes() {
    let Some(tls) = Tls::make() else { return };
    let mut server = Proc::spawn(Some(NOFILE), &tls.env());
    server.wait_ready(Some(&tls)).await;
    let held = open_silent(server.addr, SILENT, Silence::Tcp).await;
    let took = tls_healthz_latency(server.addr, &tls).await;
    eprintln!(
        "TLS: /healthz beside {} silent TCP connections: {took:?}",
        held.len()
    );
    assert!(took < HEALTHZ_BOUND, "TLS /healthz took {took:?}");
    drop(held);
}

#[tokio::test]
async fn silent_tls_connections_after_the_handshake_do_not_delay_healthz() {
    let Some(tls) = Tls::make() else { return };
    let mut server = Proc::spawn(Some(NOFILE), &tls.env());
    server.wait_ready(Some(&tls)).await;
    let mut held = Vec::new();
    // Bounded, so a server that stops handshaking fails the test quickly.
    let until = Instant::now() + Duration::from_secs(20);
    for _ in 0..SILENT {
        if Instant::now() > until {
            break;
        }
        if let Ok(Ok(s)) =
            tokio::time::timeout(Duration::from_secs(2), tls.connect(server.addr)).await
        {
            held.push(s);
        }
    }
    let took = tls_healthz_latency(server.addr, &tls).await;
    eprintln!(
        "TLS: /healthz beside {} silent TLS connections: {took:?}",
        held.len()
    );
    assert!(took < HEALTHZ_BOUND, "TLS /healthz took {took:?}");
    drop(held);
}

#[tokio::test]
async fn descriptor_exhaustion_with_a_too_high_cap_does_not_stop_the_accept_loop() {
    // A cap above what RLIMIT_NOFILE allows: accept fails with EMFILE.
    let mut server = Proc::spawn(
        Some(NOFILE),
        &[("BPF_REGISTRY_MAX_CONNECTIONS", "4000".to_string())],
    );
    server.wait_ready(None).await;
    let held = open_silent(server.addr, SILENT, Silence::Tcp).await;
    let took = healthz_latency(server.addr).await;
    eprintln!(
        "EMFILE: /healthz beside {} silent connections: {took:?}",
        held.len()
    );
    assert!(took < Duration::from_secs(5), "/healthz took {took:?}");
    drop(held);
    let log = server.log();
    assert!(
        log.contains("BPF_REGISTRY_MAX_CONNECTIONS"),
        "no start-up warning about the cap: {log}"
    );
}

// ---- timeouts ------------------------------------------------------------------

#[tokio::test]
async fn silent_plain_and_h2c_connections_are_closed_after_the_header_timeout() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_HEADER_READ_TIMEOUT", "1s")]).await;
    for how in [Silence::Tcp, Silence::H2cPreface] {
        let mut held = open_silent(server.addr, 1, how).await;
        let t0 = Instant::now();
        assert!(
            closed_within(&mut held[0], Duration::from_secs(6)).await,
            "{how:?}: still open after {:?}",
            t0.elapsed()
        );
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_millis(500),
            "{how:?}: closed after {took:?}"
        );
    }
}

/// An HTTP/2 `GET /healthz` on stream 1 (HPACK: `:method GET`,
/// `:scheme http`, literal `:path`, literal `:authority`).
fn h2_get_healthz() -> Vec<u8> {
    let mut block = vec![0x82, 0x86, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 1, b'x']);
    let len = block.len() as u32;
    let mut frame = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8];
    // HEADERS, END_STREAM | END_HEADERS, stream 1.
    frame.extend_from_slice(&[1, 0x05, 0, 0, 0, 1]);
    frame.extend_from_slice(&block);
    frame
}

/// Reads HTTP/2 frames until one of `kind` arrives on `stream`.
async fn read_h2_frame(s: &mut TcpStream, kind: u8, stream: u32) -> bool {
    loop {
        let mut head = [0u8; 9];
        if s.read_exact(&mut head).await.is_err() {
            return false;
        }
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        if s.read_exact(&mut payload).await.is_err() {
            return false;
        }
        if head[3] == kind && id == stream {
            return true;
        }
    }
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_after_its_last_stream() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_HEADER_READ_TIMEOUT", "1s")]).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    s.write_all(H2_PREFACE).await.unwrap();
    s.write_all(H2_SETTINGS).await.unwrap();
    s.write_all(&h2_get_healthz()).await.unwrap();
    let answered = tokio::time::timeout(Duration::from_secs(5), read_h2_frame(&mut s, 1, 1))
        .await
        .unwrap_or(false);
    assert!(answered, "no HTTP/2 response headers");
    let t0 = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(6)).await,
        "idle HTTP/2 connection still open after {:?}",
        t0.elapsed()
    );
}

#[tokio::test]
async fn silent_tls_connections_are_closed_after_the_handshake_and_header_timeouts() {
    let Some(tls) = Tls::make() else { return };
    let mut env = tls.env();
    env.push(("BPF_REGISTRY_HEADER_READ_TIMEOUT", "2s".into()));
    env.push(("BPF_REGISTRY_TLS_HANDSHAKE_TIMEOUT", "1s".into()));
    let mut server = Proc::spawn(None, &env);
    server.wait_ready(Some(&tls)).await;
    // No ClientHello: the handshake timeout.
    let mut raw = TcpStream::connect(server.addr).await.expect("connect");
    let t0 = Instant::now();
    assert!(
        closed_within(&mut raw, Duration::from_secs(6)).await,
        "silent TCP on the TLS port still open after {:?}",
        t0.elapsed()
    );
    let took = t0.elapsed();
    assert!(
        took < Duration::from_secs(2) + Duration::from_millis(900),
        "raw TCP closed after {took:?}"
    );
    // A finished handshake, then nothing: the header timeout (from accept).
    let mut s = tls.connect(server.addr).await.expect("handshake");
    let t0 = Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(8)).await,
        "silent TLS connection still open after {:?}",
        t0.elapsed()
    );
    assert!(
        t0.elapsed() >= Duration::from_millis(1000),
        "closed after {:?}",
        t0.elapsed()
    );
    // A well-behaved TLS client is served.
    let took = tls_healthz_latency(server.addr, &tls).await;
    assert!(took < HEALTHZ_BOUND);
}

#[tokio::test]
async fn shutdown_is_not_held_up_by_silent_connections() {
    let mut server = TestServer::start().await;
    let _plain = open_silent(server.addr, 3, Silence::Tcp).await;
    let _h2c = open_silent(server.addr, 3, Silence::H2cPreface).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("shutdown waited for silent connections");
    eprintln!("shutdown beside silent connections: {:?}", t0.elapsed());
}

// ---- the connection cap --------------------------------------------------------

#[tokio::test]
async fn at_the_connection_cap_the_longest_idle_connection_makes_room() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_MAX_CONNECTIONS", "4")]).await;
    let mut held = open_silent(server.addr, 4, Silence::Tcp).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = healthz_latency(server.addr).await;
    assert!(took < HEALTHZ_BOUND, "/healthz took {took:?}");
    assert!(
        closed_within(&mut held[0], Duration::from_secs(2)).await,
        "the oldest silent connection was not closed to make room"
    );
}

#[tokio::test]
async fn at_the_connection_cap_with_every_connection_busy_a_new_one_gets_503() {
    let server = TestServer::start_with_env(&[("BPF_REGISTRY_MAX_CONNECTIONS", "4")]).await;
    let c = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut busy = Vec::new();
    for _ in 0..4 {
        let r = c
            .post(server.url("/v2/cap/busy/blobs/uploads/"))
            .send()
            .await
            .expect("start upload");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        let loc = common::location(&r);
        busy.push(loc);
    }
    let mut held = Vec::new();
    for loc in &busy {
        let mut s = TcpStream::connect(server.addr).await.expect("connect");
        let head = format!("PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n");
        s.write_all(head.as_bytes()).await.unwrap();
        held.push(s);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let (answer, took) = read_until_closed(&mut s, Duration::from_secs(5)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 503"), "answer: {text:?}");
    assert!(
        text.to_ascii_lowercase().contains("retry-after: 1"),
        "{text}"
    );
    assert!(took < Duration::from_secs(2), "refusal took {took:?}");
    // One busy connection finishes: a new client is served again.
    held[0].write_all(&[0u8; 10]).await.unwrap();
    let (answer, _) = read_until_closed(&mut held[0], Duration::from_millis(500)).await;
    assert!(String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 202"));
    drop(held.remove(0));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let took = healthz_latency(server.addr).await;
    assert!(took < HEALTHZ_BOUND);
}

// ---- slow bodies and slow readers ------------------------------------------------

/// A request declaring a `len`-byte body of which one byte comes every
/// `every`; returns the server's answer.
async fn trickle(
    addr: SocketAddr,
    head: &str,
    content_type: &str,
    len: usize,
    every: Duration,
) -> String {
    let s = TcpStream::connect(addr).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let head = format!(
        "{head} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n\r\n"
    );
    w.write_all(head.as_bytes()).await.expect("write");
    let writer = tokio::spawn(async move {
        for _ in 0..len {
            tokio::time::sleep(every).await;
            if w.write_all(b"x").await.is_err() {
                break;
            }
        }
        w
    });
    let (answer, _) = read_until_closed(&mut r, Duration::from_secs(40)).await;
    writer.abort();
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn trickling_bodies_lose_their_permits_and_store_nothing() {
    const TRICKLERS: usize = 50;
    let server = TestServer::start_with_env(&[
        ("BPF_REGISTRY_MAX_CONCURRENT_REQUESTS", "50"),
        ("BPF_REGISTRY_MIN_BODY_RATE", "1000"),
        ("BPF_REGISTRY_BODY_RATE_WINDOW", "2s"),
    ])
    .await;
    let c = reqwest::Client::new();
    let mut sessions = Vec::new();
    for _ in 0..TRICKLERS {
        let r = c
            .post(server.url("/v2/slow/trickle/blobs/uploads/"))
            .send()
            .await
            .expect("start upload");
        assert_eq!(r.status(), StatusCode::ACCEPTED);
        sessions.push(common::location(&r));
    }
    // The first session has an acknowledged chunk before its body trickles.
    let first = b"acknowledged chunk".to_vec();
    let r = c
        .patch(server.abs(&sessions[0]))
        .header("content-type", "application/octet-stream")
        .header("content-range", format!("0-{}", first.len() - 1))
        .body(first.clone())
        .send()
        .await
        .expect("patch");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let first_loc = common::location(&r);
    sessions[0] = first_loc.clone();
    let t0 = Instant::now();
    let tricklers: Vec<_> = sessions
        .iter()
        .map(|loc| {
            let head = format!("PATCH {loc}");
            let addr = server.addr;
            tokio::spawn(async move {
                trickle(
                    addr,
                    &head,
                    "application/octet-stream",
                    1000,
                    Duration::from_millis(500),
                )
                .await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let r = c.get(server.url("/v2/")).send().await.expect("get");
    assert_eq!(
        r.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "the tricklers should hold every permit at first"
    );
    let freed = loop {
        let r = c.get(server.url("/v2/")).send().await.expect("get");
        if r.status() != StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(r.status(), StatusCode::OK);
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "GET /v2/ still 429 after {:?}",
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{TRICKLERS} trickling PATCHes lost their permits after {freed:?}");
    for t in tricklers {
        let answer = t.await.expect("trickler");
        assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
        assert!(answer.contains("BLOB_UPLOAD_INVALID"), "answer: {answer:?}");
    }
    // Only the acknowledged bytes are kept; the upload then completes.
    let r = c.get(server.abs(&first_loc)).send().await.expect("status");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        common::header(&r, "range").as_deref(),
        Some(format!("0-{}", first.len() - 1).as_str())
    );
    let rest = b" and the rest".to_vec();
    let mut whole = first.clone();
    whole.extend_from_slice(&rest);
    let r = c
        .put(server.abs(&common::with_query(
            &first_loc,
            &format!("digest={}", sha256(&whole)),
        )))
        .header("content-type", "application/octet-stream")
        .body(rest)
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
    let r = c
        .get(server.url(&format!("/v2/slow/trickle/blobs/{}", sha256(&whole))))
        .send()
        .await
        .expect("get blob");
    assert_eq!(r.bytes().await.unwrap().as_ref(), whole.as_slice());
}

#[tokio::test]
async fn a_trickling_rest_body_gets_408_in_the_rest_dialect() {
    let server = TestServer::start_with_env(&[
        ("BPF_REGISTRY_MIN_BODY_RATE", "1000"),
        ("BPF_REGISTRY_BODY_RATE_WINDOW", "1s"),
    ])
    .await;
    let answer = trickle(
        server.addr,
        "POST /artifacts",
        "application/json",
        5000,
        Duration::from_millis(300),
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "answer: {answer:?}");
    assert!(
        answer.contains("\"error\":\"request_timeout\""),
        "answer: {answer:?}"
    );
    let r = reqwest::get(server.url("/artifacts")).await.expect("list");
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(v["artifacts"], serde_json::json!([]));
}

#[tokio::test]
async fn a_slow_but_steady_body_is_accepted() {
    // 64 KiB/s against a minimum of 16 KiB/s measured over 1 s windows.
    let server = TestServer::start_with_env(&[
        ("BPF_REGISTRY_MIN_BODY_RATE", "16384"),
        ("BPF_REGISTRY_BODY_RATE_WINDOW", "1s"),
    ])
    .await;
    let c = reqwest::Client::new();
    let r = c
        .post(server.url("/v2/slow/steady/blobs/uploads/"))
        .send()
        .await
        .expect("start upload");
    assert_eq!(r.status(), StatusCode::ACCEPTED);
    let loc = common::location(&r);
    let data = common::pseudo_random(256 * 1024, 7);
    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "PATCH {loc} HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
        data.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let t0 = Instant::now();
    for chunk in data.chunks(8 * 1024) {
        tokio::time::sleep(Duration::from_millis(125)).await;
        s.write_all(chunk)
            .await
            .expect("the server cut a steady body");
    }
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut answer))
        .await
        .expect("answer")
        .expect("read");
    let text = String::from_utf8_lossy(&answer[..n]);
    assert!(
        text.starts_with("HTTP/1.1 202"),
        "after {:?}: {text}",
        t0.elapsed()
    );
    let r = c
        .put(server.abs(&common::with_query(
            &server.abs(&raw_location(&text)),
            &format!("digest={}", sha256(&data)),
        )))
        .send()
        .await
        .expect("put");
    assert_eq!(r.status(), StatusCode::CREATED);
}

/// The `Location` header of a raw HTTP/1.1 answer.
fn raw_location(answer: &str) -> String {
    answer
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .expect("a Location header")
}

#[tokio::test]
async fn a_client_that_stops_reading_its_response_loses_its_permit() {
    let server = TestServer::start_with_env(&[
        ("BPF_REGISTRY_MAX_CONCURRENT_REQUESTS", "1"),
        ("BPF_REGISTRY_BODY_IDLE_TIMEOUT", "1s"),
    ])
    .await;
    let c = reqwest::Client::new();
    let blob = common::pseudo_random(32 * 1024 * 1024, 3);
    let digest = server.push_blob(&c, "slow/reader", &blob).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut s = socket.connect(server.addr).await.expect("connect");
    let req = format!("GET /v2/slow/reader/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut first = [0u8; 64];
    s.read_exact(&mut first).await.expect("response starts");
    let t0 = Instant::now();
    let freed = loop {
        let r = c.get(server.url("/v2/")).send().await.expect("get");
        if r.status() == StatusCode::OK {
            break t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "GET /v2/ still {} after {:?}",
            r.status(),
            t0.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("a stalled reader lost its permit after {freed:?}");
    drop(s);
}

// ---- a blob cut short on disk while pulled over TLS ------------------------------

/// curl against the TLS server, trusting the test CA.
fn tls_curl(tls: &Tls) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("curl");
    c.args(["-sS", "--max-time", "120", "--cacert"])
        .arg(tls.dir.path().join("ca.pem"));
    c
}

/// Over TLS the server's own code reads every byte it sends (to encrypt
/// it), so a mapped window past the end of a blob file cut short on disk
/// would stop the whole process with SIGBUS; the server checks the file's
/// length before it maps each window. The pull is slowed (`--limit-rate`)
/// and the cut made far ahead of it (the server is at most the socket
/// buffers and a few windows ahead): the pull breaks, the server lives.
#[tokio::test]
async fn a_blob_cut_short_on_disk_while_pulled_over_tls_breaks_the_pull_not_the_server() {
    let Some(tls) = Tls::make() else { return };
    let mut server = Proc::spawn(None, &tls.env());
    server.wait_ready(Some(&tls)).await;
    let base = format!("https://127.0.0.1:{}", server.addr.port());
    let mib = 1024 * 1024;
    let blob = server._data.path().join("blob.bin");
    let data: Vec<u8> = (0..48 * mib).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(&blob, &data).unwrap();
    let digest = sha256(&data);
    let post = tls_curl(&tls)
        .args(["-f", "-D", "-", "-o", "/dev/null", "-X", "POST"])
        .arg(format!("{base}/v2/bpf/cut/blobs/uploads/"))
        .output()
        .await
        .expect("curl");
    assert!(
        post.status.success(),
        "{}",
        String::from_utf8_lossy(&post.stderr)
    );
    let head = String::from_utf8_lossy(&post.stdout).to_string();
    let loc = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("location")
                .then(|| v.trim().to_string())
        })
        .expect("a Location");
    let sep = if loc.contains('?') { '&' } else { '?' };
    let url = if loc.starts_with("http") {
        loc.clone()
    } else {
        format!("{base}{loc}")
    };
    let put = tls_curl(&tls)
        .args(["-f", "-o", "/dev/null", "-X", "PUT", "-T"])
        .arg(&blob)
        .arg(format!("{url}{sep}digest={digest}"))
        .output()
        .await
        .expect("curl");
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let stored = server
        ._data
        .path()
        .join("store/blobs/sha256")
        .join(digest.trim_start_matches("sha256:"));
    assert!(stored.is_file(), "no blob file at {}", stored.display());
    let out = server._data.path().join("pulled.bin");
    let mut pull = tls_curl(&tls)
        .args(["--limit-rate", "4M", "-o"])
        .arg(&out)
        .arg(format!("{base}/v2/bpf/cut/blobs/{digest}"))
        .spawn()
        .expect("curl");
    let until = Instant::now() + Duration::from_secs(60);
    while std::fs::metadata(&out).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(Instant::now() < until, "the pull never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cut = 32 * mib as u64 + 100;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&stored)
        .unwrap()
        .set_len(cut)
        .unwrap();
    let status = pull.wait().await.expect("curl ran");
    assert!(!status.success(), "the pull must break, not complete");
    let got = std::fs::read(&out).unwrap();
    assert!(
        (got.len() as u64) < cut,
        "{} bytes served from a {cut}-byte file",
        got.len()
    );
    assert!(
        got[..] == data[..got.len()],
        "the bytes served are the blob's"
    );
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server died: {}",
        server.log()
    );
    let health = tls_curl(&tls)
        .args(["-f", "-o", "/dev/null"])
        .arg(format!("{base}/healthz"))
        .status()
        .await
        .expect("curl");
    assert!(
        health.success(),
        "healthz after the broken pull: {}",
        server.log()
    );
}

// ---- long-polls held in their request (TLS) ------------------------------------------

/// One request on its own TLS connection; the head and body of the answer
/// (the server closes after it: `Connection: close`).
async fn tls_request(tls: &Tls, addr: SocketAddr, head: &str, body: &str) -> (String, String) {
    let mut s = tls.connect(addr).await.expect("TLS connect");
    let req = format!(
        "{head}\r\nHost: x\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let (answer, _) = read_until_closed(&mut s, Duration::from_secs(20)).await;
    let text = String::from_utf8_lossy(&answer).into_owned();
    let (h, b) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (h.to_string(), b.to_string())
}

/// Over TLS a long-poll is held in its request (the plain front does not
/// park it): it must keep its watcher place all the while, so the cap
/// still refuses the next one.
#[tokio::test]
async fn a_long_poll_held_over_tls_keeps_its_watcher_place() {
    let Some(tls) = Tls::make() else { return };
    let mut env = tls.env();
    env.push(("BPF_REGISTRY_MAX_WATCHERS", "1".to_string()));
    let mut server = Proc::spawn(None, &env);
    server.wait_ready(Some(&tls)).await;
    let facts = r#"{"architecture":"x86_64","kernel_release":"5.15.0","btf":true,"labels":{}}"#;
    let (h, _) = tls_request(
        &tls,
        server.addr,
        "PUT /hosts/tls-1 HTTP/1.1\r\nContent-Type: application/json",
        facts,
    )
    .await;
    assert!(h.starts_with("HTTP/1.1 201"), "{h}");
    let (h, _) = tls_request(&tls, server.addr, "GET /hosts/tls-1/desired HTTP/1.1", "").await;
    let etag = h
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("etag").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| panic!("no ETag: {h}"));
    // The first long-poll, held (nothing changes for 30 s).
    let hold = || async {
        let mut held = tls.connect(server.addr).await.expect("TLS connect");
        held.write_all(
            format!("GET /hosts/tls-1/desired?wait=30s HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
        held
    };
    let mut held = hold().await;
    // While it is held, another long-poll is over the cap of 1.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (h, b) = tls_request(
            &tls,
            server.addr,
            &format!("GET /hosts/tls-1/desired?wait=1s HTTP/1.1\r\nIf-None-Match: {etag}"),
            "",
        )
        .await;
        if h.starts_with("HTTP/1.1 429") {
            assert!(b.contains("too_many_watchers"), "{b}");
            break;
        }
        assert!(
            h.starts_with("HTTP/1.1 304"),
            "neither refused nor waited: {h}"
        );
        // The probe may have taken the place before the held request was
        // read (a busy machine): then the held one was refused, which is
        // the cap working. Hold again and probe again.
        let mut answer = [0u8; 512];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(5), held.read(&mut answer)).await
        {
            let answer = String::from_utf8_lossy(&answer[..n]);
            assert!(
                answer.starts_with("HTTP/1.1 429"),
                "the held long-poll ended: {answer}"
            );
            assert!(
                Instant::now() < deadline,
                "the held long-poll kept losing its place"
            );
            held = hold().await;
            continue;
        }
        assert!(
            Instant::now() < deadline,
            "a second long-poll was let in while the first is held: {h}"
        );
    }
    drop(held);
}

// ---- blob reads pipelined on one plain connection -----------------------------------

/// One HTTP/1.1 answer with a `Content-Length` read off a kept-alive
/// connection: its head and body; what follows stays in `buf`.
async fn read_sized_answer(s: &mut TcpStream, buf: &mut Vec<u8>) -> (String, Vec<u8>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut chunk = vec![0u8; 1 << 16];
    let need = |buf: &Vec<u8>| -> Option<(usize, usize)> {
        let end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let len = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse::<usize>().expect("a length"));
        Some((end, len))
    };
    loop {
        if let Some((end, len)) = need(buf) {
            if buf.len() >= end + len {
                let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                let body = buf[end..end + len].to_vec();
                buf.drain(..end + len);
                return (head, body);
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .expect("an answer within 30 s")
            .expect("read");
        assert!(n > 0, "closed mid-answer after {} bytes", buf.len());
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The server's `registry_blob_bytes_total{direction="out"}`.
async fn blob_bytes_out(server: &TestServer) -> f64 {
    let text = reqwest::get(server.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    text.lines()
        .find_map(|l| l.strip_prefix("registry_blob_bytes_total{direction=\"out\"} "))
        .map_or(0.0, |v| v.trim().parse().expect("a number"))
}

/// Blob reads pipelined on one kept-alive plain connection: a whole blob
/// (sent from mapped windows), a range of it, a blob of another
/// repository asked through this one (404, nothing of it sent), that blob
/// through its own repository, then `GET /v2/`. Every answer is complete
/// and in order, the bytes are the blob's, and the metrics count exactly
/// the blob bytes sent.
#[tokio::test]
async fn pipelined_blob_reads_on_one_connection_are_whole_ordered_and_counted() {
    let server = TestServer::start().await;
    let c = reqwest::Client::new();
    // Above the verify-on-read size: a file-backed answer.
    let blob = common::pseudo_random(3 * 1024 * 1024 + 123, 11);
    let digest = server.push_blob(&c, "front/pull", &blob).await;
    let other = common::pseudo_random(2 * 1024 * 1024, 12);
    let other_digest = server.push_blob(&c, "front/other", &other).await;
    let before = blob_bytes_out(&server).await;

    let mut s = TcpStream::connect(server.addr).await.expect("connect");
    let (from, to) = (1_000_001usize, 2_500_000usize);
    let reqs = format!(
        "GET /v2/front/pull/blobs/{digest} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /v2/front/pull/blobs/{digest} HTTP/1.1\r\nHost: x\r\nRange: bytes={from}-{to}\r\n\r\n\
         GET /v2/front/pull/blobs/{other_digest} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /v2/front/other/blobs/{other_digest} HTTP/1.1\r\nHost: x\r\n\r\n\
         GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n"
    );
    s.write_all(reqs.as_bytes()).await.unwrap();
    let mut buf = Vec::new();

    let (head, body) = read_sized_answer(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("docker-content-digest: {digest}")),
        "{head}"
    );
    assert_eq!(body.len(), blob.len());
    assert!(body == blob, "the whole blob's bytes");

    let (head, body) = read_sized_answer(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-range: bytes {from}-{to}/{}", blob.len())),
        "{head}"
    );
    assert!(body == blob[from..=to], "the range's bytes");

    let (head, body) = read_sized_answer(&mut s, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 404"),
        "another repository's blob: {head}"
    );
    assert!(
        String::from_utf8_lossy(&body).contains("BLOB_UNKNOWN"),
        "{}",
        String::from_utf8_lossy(&body)
    );

    let (head, body) = read_sized_answer(&mut s, &mut buf).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body == other, "the other blob's bytes");

    let (head, _) = read_sized_answer(&mut s, &mut buf).await;
    assert!(
        head.starts_with("HTTP/1.1 200"),
        "GET /v2/ by hyper: {head}"
    );
    drop(s);

    let sent = (blob.len() + (to - from + 1) + other.len()) as f64;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let counted = blob_bytes_out(&server).await - before;
        if counted == sent {
            break;
        }
        assert!(
            Instant::now() < until,
            "blob bytes out counted {counted}, sent {sent}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
