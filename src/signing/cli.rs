//! `bpf-registry sign`: signs the stored eBPF artifacts that have no
//! signature from the configured key, e.g. after signing was turned on for
//! a registry that already holds artifacts. It reads the same
//! `BPF_REGISTRY_*` configuration as the server and changes the store, so
//! it takes the data folder's lock exclusively: on the embedded SQLite store
//! it refuses to run beside a running server, which owns that file.

use super::{registry_host, SignReport, SignerConfig, SigningService};
use crate::config::Config;
use crate::storage::lock::{DataDirLock, LockMode};

pub const SIGN_USAGE: &str = "Usage: bpf-registry sign [--json]

Signs every stored eBPF artifact (and tagged multi-platform version index)
that has no signature from the key of BPF_REGISTRY_SIGNER (vault or key),
cosign-style: a signature manifest tagged sha256-<hex>.sig that is also a
referrer of the artifact. Stop the server first.
Exit status 0 when every artifact is signed, 1 when signing failed, 2 on a
usage or configuration error.
  --json  print the report as JSON
";

const EXIT_FAILED: i32 = 1;
const EXIT_USAGE: i32 = 2;

/// Runs the command; returns the process exit status.
pub fn sign(args: &[String]) -> i32 {
    let mut json = false;
    for a in args {
        match a.as_str() {
            "--help" | "-h" => {
                print!("{SIGN_USAGE}");
                return 0;
            }
            "--json" => json = true,
            other => {
                eprintln!("error: unknown argument {other:?}\n\n{SIGN_USAGE}");
                return EXIT_USAGE;
            }
        }
    }
    let config = match Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: invalid configuration: {e}");
            return EXIT_USAGE;
        }
    };
    if matches!(config.signing.signer, SignerConfig::None) {
        eprintln!("error: BPF_REGISTRY_SIGNER is none: set it to vault or key to sign");
        return EXIT_USAGE;
    }
    crate::cli::setup(&config);
    let _lock = match DataDirLock::try_acquire(&config.data_dir, LockMode::Exclusive) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
            eprintln!(
                "error: {} is in use by a running bpf-registry server; stop it first",
                config.data_dir.display()
            );
            return EXIT_FAILED;
        }
        Err(e) => {
            eprintln!("error: cannot lock {}: {e}", config.data_dir.display());
            return EXIT_FAILED;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return EXIT_FAILED;
        }
    };
    let registry = match runtime.block_on(crate::open_registry(&config, None)) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot open {}: {e}", config.data_dir.display());
            return EXIT_FAILED;
        }
    };
    let host = config.external_url.as_deref().and_then(registry_host);
    let report: Result<SignReport, String> = runtime.block_on(async {
        let svc = SigningService::start(&config.signing, registry, host).await?;
        svc.sign_unsigned().await.map_err(|e| e.to_string())
    });
    let report = match report {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_FAILED;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        for s in &report.signed {
            println!("sign: signed {s}");
        }
        println!(
            "sign: {} signed, {} already signed",
            report.signed.len(),
            report.already_signed
        );
        if let Some(e) = &report.error {
            println!("sign: FAILED: {e}");
        }
    }
    if report.error.is_some() {
        EXIT_FAILED
    } else {
        0
    }
}
