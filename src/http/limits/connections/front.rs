//! The plain HTTP/1.1 front of a connection: it reads request heads
//! itself and serves the fleet's watchable answers (`GET
//! /hosts/{id}/desired`, `GET /artifacts/for-host/{id}`) through the same
//! router, so a long-poll's wait is parked with nothing but the socket,
//! its request head and what the wait compares: no hyper connection, no
//! buffers, no request future (about 40 KiB per waiter otherwise). The
//! first request it does not serve hands the connection, with the bytes
//! read so far, to hyper for the rest of its life.
//!
//! The front only decides which code path serves a request; the router
//! makes every decision (routing, authentication, authorization, the
//! answer) from the same head, run after run.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, Method, Request, Uri, Version};
use axum::response::Response;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt as _, ReadBuf};
use tokio::net::TcpStream;
use tower::ServiceExt as _;

use super::super::write_stall::WriteStall;
use super::{idle_for, Activity, ConnectionPolicy, InFlight};
use crate::fleet::watch::{Parking, Wake};

/// A head not complete within this many bytes goes to hyper (which has
/// its own limit and answers 431).
const MAX_HEAD: usize = 16 * 1024;
/// Headers the front parses; a request with more goes to hyper.
const MAX_HEADERS: usize = 64;
/// Bytes asked of the socket per read of a head.
const READ_AHEAD: usize = 4096;
/// Bytes a client may send ahead (pipelined) while its long-poll is
/// parked; more closes the connection.
const MAX_AHEAD: usize = 64 * 1024;

/// How the front left a connection.
pub(super) enum Ended {
    /// Closed (the client left, went idle, was evicted, or the server
    /// stops).
    Closed,
    /// A request the front does not serve: hyper takes the connection,
    /// these bytes first.
    HandOver(Vec<u8>),
}

/// What the front needs of its connection.
pub(super) struct Front<'a> {
    pub(super) peer: std::net::SocketAddr,
    pub(super) app: &'a axum::Router,
    pub(super) activity: &'a Arc<Activity>,
    pub(super) policy: &'a ConnectionPolicy,
    pub(super) signal: &'a mut tokio::sync::watch::Receiver<()>,
    pub(super) accepted: Instant,
}

/// A request head the front serves.
struct Head {
    uri: Uri,
    headers: HeaderMap,
    /// `Connection: close`: the connection ends after the answer.
    close: bool,
}

enum Parsed {
    Complete(Head, usize),
    Partial,
    NotOurs,
}

/// Whether `path` (with its query) is one of the watchable answers.
fn is_watchable(path: &str) -> bool {
    let path = path.split_once('?').map_or(path, |(p, _)| p);
    let one_segment = |s: &str| !s.is_empty() && !s.contains('/');
    if let Some(rest) = path.strip_prefix("/hosts/") {
        return rest.strip_suffix("/desired").is_some_and(one_segment);
    }
    path.strip_prefix("/artifacts/for-host/")
        .is_some_and(one_segment)
}

/// The head at the start of `buf`, if the front serves it.
fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let len = match req.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            // The request line alone says whether it is ours.
            return match (req.method, req.path) {
                (Some(m), Some(p)) if m != "GET" || !is_watchable(p) => Parsed::NotOurs,
                _ if buf.len() >= MAX_HEAD => Parsed::NotOurs,
                _ => Parsed::Partial,
            };
        }
        Err(_) => return Parsed::NotOurs,
    };
    match head_of(&req) {
        Some(head) => Parsed::Complete(head, len),
        None => Parsed::NotOurs,
    }
}

/// A GET of a watchable answer over HTTP/1.1 without a body, upgrade or
/// expectation; anything else is hyper's.
fn head_of(req: &httparse::Request<'_, '_>) -> Option<Head> {
    if req.method != Some("GET") || req.version != Some(1) {
        return None;
    }
    let path = req.path.filter(|p| is_watchable(p))?;
    let uri = Uri::try_from(path).ok()?;
    let mut headers = HeaderMap::with_capacity(req.headers.len());
    let mut close = false;
    for h in req.headers.iter() {
        let name = HeaderName::from_bytes(h.name.as_bytes()).ok()?;
        let value = HeaderValue::from_bytes(h.value).ok()?;
        if name == header::TRANSFER_ENCODING
            || name == header::EXPECT
            || name == header::UPGRADE
            || (name == header::CONTENT_LENGTH && value.as_bytes() != b"0")
        {
            return None;
        }
        if name == header::CONNECTION {
            // Not text: hyper's to judge.
            value.to_str().ok()?;
            if has_token(&value, "upgrade") {
                return None;
            }
            close |= has_token(&value, "close");
        }
        headers.append(name, value);
    }
    Some(Head {
        uri,
        headers,
        close,
    })
}

impl Front<'_> {
    /// Serves requests until the connection ends or one is not the
    /// front's.
    pub(super) async fn serve(self, io: &mut WriteStall<TcpStream>) -> Ended {
        let mut buf: Vec<u8> = Vec::new();
        let mut idle_from = self.accepted;
        let mut stopping = false;
        loop {
            let (head, len) = loop {
                match parse(&buf) {
                    Parsed::Complete(head, len) => break (head, len),
                    Parsed::NotOurs => return Ended::HandOver(buf),
                    Parsed::Partial => {}
                }
                // Readable first, a buffer only then: a connection waiting
                // for its next request holds none. The idle timer is boxed
                // and readiness polled without a waiter of its own, so the
                // room this wait takes in the connection's future is no
                // larger than a parked long-poll's (which it shares).
                tokio::select! {
                    r = readable(io.get_ref()) => {
                        if r.is_err() || read_some(io.get_ref(), &mut buf).is_err() {
                            return Ended::Closed;
                        }
                    }
                    _ = Box::pin(idle_for(self.activity, idle_from, self.policy.header_read_timeout)) => return Ended::Closed,
                    _ = self.activity.evict.notified() => return Ended::Closed,
                    _ = self.signal.changed() => return Ended::Closed,
                }
            };
            buf.drain(..len);
            // A parked connection keeps no read buffer of its own (and a
            // pipelined rest no more than its size).
            if buf.is_empty() {
                buf = Vec::new();
            } else {
                buf.shrink_to_fit();
            }
            // In progress until answered: never idle or evicted meanwhile.
            let in_flight = InFlight::begin(self.activity);
            let parking = Parking::default();
            let resp = loop {
                let resp = Box::pin(self.run(&head, &parking)).await;
                let Some(mut parked) = parking.take_parked() else {
                    break resp;
                };
                // A parked run's answer is a placeholder: not kept (with
                // its headers) while the wait lasts.
                drop(resp);
                let wake = tokio::select! {
                    w = parked.wait() => w,
                    _ = client_gone(io.get_ref(), &mut buf) => return Ended::Closed,
                    _ = self.signal.changed(), if !stopping => {
                        stopping = true;
                        Wake::Over
                    }
                };
                parking.resume(parked, wake);
            };
            let close = head.close || stopping || wants_close(&resp);
            if Box::pin(write_response(io, resp, close)).await.is_err() || close {
                return Ended::Closed;
            }
            drop(in_flight);
            idle_from = Instant::now();
        }
    }

    /// One run of the request through the router.
    async fn run(&self, head: &Head, parking: &Parking) -> Response {
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = head.uri.clone();
        *req.version_mut() = Version::HTTP_11;
        *req.headers_mut() = head.headers.clone();
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(parking.clone());
        match self.app.clone().oneshot(req).await {
            Ok(resp) => resp,
            Err(never) => match never {},
        }
    }
}

/// What a ready socket has, appended to `buf` (at most [`READ_AHEAD`]
/// bytes); an error when the client closed or the read failed. Read
/// through the stack: readiness can be stale (a head read whole leaves
/// it set), and a buffer reserved before the read would then stay with
/// a parked connection, empty.
fn read_some(tcp: &TcpStream, buf: &mut Vec<u8>) -> io::Result<()> {
    let mut chunk = [0u8; READ_AHEAD];
    match tcp.try_read(&mut chunk) {
        Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(n) => {
            buf.extend_from_slice(&chunk[..n]);
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Reads what a client sends while its long-poll is parked, and returns
/// when it left (or sent more than [`MAX_AHEAD`]); pipelined bytes are
/// kept in `ahead` for the next head.
async fn client_gone(tcp: &TcpStream, ahead: &mut Vec<u8>) {
    while ahead.len() <= MAX_AHEAD {
        if readable(tcp).await.is_err() || read_some(tcp, ahead).is_err() {
            return;
        }
    }
}

/// Until `tcp` is readable. `poll_read_ready` keeps the connection's one
/// read waker in the socket's registration, where `readable()` would hold
/// a waiter node of about 150 bytes in every parked connection's future;
/// one task reads each connection, so one waker is all it needs.
fn readable(tcp: &TcpStream) -> impl std::future::Future<Output = io::Result<()>> + '_ {
    std::future::poll_fn(move |cx| tcp.poll_read_ready(cx))
}

/// Whether a `Connection` value lists `token` (case-insensitive).
fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .to_str()
        .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
}

/// Whether the router's answer asks to close the connection.
fn wants_close(resp: &Response) -> bool {
    resp.headers()
        .get(header::CONNECTION)
        .is_some_and(|v| has_token(v, "close"))
}

/// Writes `resp` as HTTP/1.1: its length when known (every watchable
/// answer is a buffer), else chunked.
async fn write_response<I>(io: &mut I, resp: Response, close: bool) -> io::Result<()>
where
    I: AsyncWrite + Unpin,
{
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let bodiless = status == axum::http::StatusCode::NOT_MODIFIED
        || status == axum::http::StatusCode::NO_CONTENT
        || status.is_informational();
    let mut out = Vec::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH
            || name == header::TRANSFER_ENCODING
            || name == header::CONNECTION
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        out.extend_from_slice(httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let exact = http_body::Body::size_hint(&body).exact();
    let chunked = !bodiless && exact.is_none();
    if bodiless {
        out.extend_from_slice(b"\r\n");
        io.write_all(&out).await?;
        return io.flush().await;
    }
    match exact {
        Some(n) => out.extend_from_slice(format!("content-length: {n}\r\n\r\n").as_bytes()),
        None => out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n"),
    }
    let mut sent: u64 = 0;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(io::Error::other)?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if data.is_empty() {
            continue;
        }
        sent += data.len() as u64;
        if exact.is_some_and(|n| sent > n) {
            return Err(io::Error::other("the answer is longer than its length"));
        }
        if chunked {
            out.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        }
        // The head and the first piece go out in one write.
        out.extend_from_slice(&data);
        if chunked {
            out.extend_from_slice(b"\r\n");
        }
        io.write_all(&out).await?;
        out.clear();
    }
    if chunked {
        out.extend_from_slice(b"0\r\n\r\n");
    }
    if exact.is_some_and(|n| sent != n) {
        return Err(io::Error::other("the answer is shorter than its length"));
    }
    io.write_all(&out).await?;
    io.flush().await
}

/// A connection's stream with bytes already read put back in front.
pub(super) struct Rewind<I> {
    prefix: bytes::Bytes,
    inner: I,
}

impl<I> Rewind<I> {
    pub(super) fn new(prefix: Vec<u8>, inner: I) -> Self {
        Rewind {
            prefix: prefix.into(),
            inner,
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Rewind<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Rewind<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_watchable_answers_are_the_fronts() {
        for ours in [
            "/hosts/h1/desired",
            "/hosts/h1/desired?wait=30s",
            "/artifacts/for-host/h1",
            "/artifacts/for-host/h1?wait=1s&x=y",
        ] {
            assert!(is_watchable(ours), "{ours}");
        }
        for not in [
            "/hosts/h1",
            "/hosts//desired",
            "/hosts/a/b/desired",
            "/hosts/h1/deployments",
            "/artifacts/for-host/",
            "/artifacts/for-host/a/b",
            "/artifacts",
            "/v2/hosts/h1/desired",
        ] {
            assert!(!is_watchable(not), "{not}");
        }
    }

    fn parsed(raw: &str) -> Parsed {
        parse(raw.as_bytes())
    }

    #[test]
    fn a_get_without_a_body_is_the_fronts_anything_else_hypers() {
        let raw = "GET /hosts/h1/desired?wait=5s HTTP/1.1\r\nHost: x\r\nIf-None-Match: \"a\"\r\n\r\nGET /x";
        match parsed(raw) {
            Parsed::Complete(head, len) => {
                assert_eq!(&raw[len..], "GET /x");
                assert_eq!(head.uri.query(), Some("wait=5s"));
                assert_eq!(head.headers.get("if-none-match").unwrap(), "\"a\"");
                assert!(!head.close);
            }
            _ => panic!("not served by the front"),
        }
        match parsed("GET /hosts/h1/desired HTTP/1.1\r\nConnection: Keep-Alive, Close\r\n\r\n") {
            Parsed::Complete(head, _) => assert!(head.close),
            _ => panic!("not served by the front"),
        }
        for other in [
            "PUT /hosts/h1/desired HTTP/1.1\r\n\r\n",
            "HEAD /hosts/h1/desired HTTP/1.1\r\n\r\n",
            "GET /hosts/h1/desired HTTP/1.0\r\n\r\n",
            "GET /hosts/h1/desired HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc",
            "GET /hosts/h1/desired HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
            "GET /hosts/h1/desired HTTP/1.1\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            "GET /hosts/h1/desired HTTP/1.1\r\nExpect: 100-continue\r\n\r\n",
            "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            "GET /v2/ HTTP/1.1\r\n",
            "POST /artifacts HTTP/1.1\r\nContent-Le",
            "garbage\r\n\r\n",
        ] {
            assert!(matches!(parsed(other), Parsed::NotOurs), "{other:?}");
        }
        assert!(matches!(parsed("GET /hosts/h1/des"), Parsed::Partial));
        assert!(matches!(
            parsed("GET /hosts/h1/desired HTTP/1.1\r\nHost: x\r\n"),
            Parsed::Partial
        ));
        let long = format!(
            "GET /hosts/h1/desired HTTP/1.1\r\nX-Long: {}\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert!(matches!(parsed(&long), Parsed::NotOurs));
    }

    #[tokio::test]
    async fn a_read_that_finds_nothing_leaves_no_buffer() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let mut buf = Vec::new();
        // Nothing sent: a stale readiness must not leave an empty buffer.
        read_some(&server, &mut buf).unwrap();
        assert_eq!((buf.len(), buf.capacity()), (0, 0));
        client.write_all(b"GET /").await.unwrap();
        readable(&server).await.unwrap();
        read_some(&server, &mut buf).unwrap();
        assert_eq!(buf, b"GET /");
        drop(client);
        readable(&server).await.unwrap();
        assert!(read_some(&server, &mut buf).is_err(), "a close is an error");
    }

    #[tokio::test]
    async fn rewind_reads_the_prefix_first() {
        use tokio::io::AsyncReadExt as _;
        let (mut a, b) = tokio::io::duplex(64);
        a.write_all(b"world").await.unwrap();
        drop(a);
        let mut r = Rewind::new(b"hello ".to_vec(), b);
        let mut s = String::new();
        r.read_to_string(&mut s).await.unwrap();
        assert_eq!(s, "hello world");
    }
}
