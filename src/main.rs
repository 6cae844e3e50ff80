//! The `bpf-registry` binary: reads the configuration, sets up logging,
//! binds, serves until SIGTERM/SIGINT. `gc`, `scrub` and `migrate` run the
//! maintenance commands of `bpf_registry::cli` instead, `sign` the one of
//! `bpf_registry::signing::cli`.

use bpf_registry::config::{Config, VARIABLES};

fn usage() -> String {
    let mut s = String::from(
        "bpf-registry: an OCI 1.1 registry for eBPF artifacts\n\nUsage: bpf-registry [--help] [--version]\n       bpf-registry gc [--dry-run] [--delete-untagged] [--json]   (collect garbage; server stopped)\n       bpf-registry scrub [--repair] [--json]                     (verify the store)\n       bpf-registry sign [--json]                                 (sign unsigned artifacts; server stopped)\n       bpf-registry migrate --metadata <postgres://..|sqlite:PATH> [--blob-store <s3://..|fs:DIR>] [--json]\n                                                                  (copy the store to other engines; server stopped)\n\nConfiguration (environment variables):\n",
    );
    for (var, default, meaning) in VARIABLES {
        s.push_str(&format!("  {var:<36} default {default:<18} {meaning}\n"));
    }
    s
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("--help") | Some("-h") | Some("help") => {
            print!("{}", usage());
            return;
        }
        Some("--version") | Some("-V") => {
            println!("bpf-registry {}", env!("CARGO_PKG_VERSION"));
            return;
        }
        Some("gc") => std::process::exit(bpf_registry::cli::gc(args.get(1..).unwrap_or_default())),
        Some("scrub") => {
            std::process::exit(bpf_registry::cli::scrub(args.get(1..).unwrap_or_default()))
        }
        Some("migrate") => std::process::exit(bpf_registry::cli::migrate(
            args.get(1..).unwrap_or_default(),
        )),
        Some("sign") => std::process::exit(bpf_registry::signing::cli::sign(
            args.get(1..).unwrap_or_default(),
        )),
        Some(other) => {
            eprintln!("error: unknown argument {other:?}\n\n{}", usage());
            std::process::exit(2);
        }
        None => {}
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            std::process::exit(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(format!(
            "bpf_registry={0},tower_http={0}",
            config.log_level.as_filter()
        )))
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(serve(config)) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

async fn serve(config: Config) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.http_addr)
        .await
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!("cannot listen on {}: {e}", config.http_addr),
            )
        })?;
    tracing::info!(
        addr = %listener.local_addr()?,
        data_dir = %config.data_dir.display(),
        "listening"
    );
    bpf_registry::run(listener, config, shutdown_signal()).await?;
    tracing::info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
    tracing::info!("shutdown requested; finishing in-flight requests");
}

/// jemalloc, not glibc's malloc: with ten thousand connections open,
/// glibc's bins fragment and its slow path was half the CPU of waking
/// every long-poll waiter (see the README's "What watching costs").
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read once at start (`_RJEM_MALLOC_CONF` in the
/// environment overrides them): one arena per CPU, not four; small
/// thread caches; freed pages handed back after a second and never kept
/// lazily, so a large push or pull leaves the peak RSS where glibc's did.
#[export_name = "_rjem_malloc_conf"]
#[allow(non_upper_case_globals)]
pub static malloc_conf: &[u8; 73] =
    b"percpu_arena:percpu,tcache_max:4096,dirty_decay_ms:1000,muzzy_decay_ms:0\0";
