//! The backend's own I/O runtime, and how a synchronous call waits for an
//! async one. The backend's connections, timers and background tasks live
//! on a small runtime of its own; a call polls its future on the calling
//! thread (inside that runtime's context) and parks between wake-ups. So a
//! call works from any thread: a blocking-pool thread (the usual case), a
//! worker of the caller's runtime (some services call the backend from an
//! async task), or a current-thread runtime's only thread (the test
//! servers), none of which drives the I/O the call waits for.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use tokio::runtime::{Handle, Runtime, RuntimeFlavor};

/// Worker threads of the I/O runtime: they only move bytes between sockets
/// and channels.
const IO_THREADS: usize = 2;

pub struct IoRuntime {
    runtime: Option<Runtime>,
    handle: Handle,
}

impl IoRuntime {
    pub fn start() -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(IO_THREADS)
            .thread_name("s3-io")
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        Ok(IoRuntime {
            runtime: Some(runtime),
            handle,
        })
    }

    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs `f` to completion, blocking the calling thread. On a worker of
    /// a multi-thread runtime, `block_in_place` first hands that worker's
    /// other tasks to another thread.
    pub fn wait<F: Future>(&self, f: F) -> F::Output {
        let run = || {
            let _entered = self.handle.enter();
            park_until_ready(f)
        };
        match Handle::try_current() {
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(run)
            }
            _ => run(),
        }
    }
}

impl Drop for IoRuntime {
    fn drop(&mut self) {
        // The last user may be an async task, where a runtime may not wait
        // for its threads: they are told to stop and left to finish.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

struct Unpark(std::thread::Thread);

impl Wake for Unpark {
    fn wake(self: Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.0.unpark();
    }
}

/// Polls `f` on this thread, parking it until a wake-up (the I/O runtime's
/// threads deliver them).
fn park_until_ready<F: Future>(f: F) -> F::Output {
    let mut f = std::pin::pin!(f);
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    loop {
        match f.as_mut().poll(&mut cx) {
            Poll::Ready(v) => return v,
            Poll::Pending => std::thread::park(),
        }
    }
}
