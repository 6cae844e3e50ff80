//! HTTPS: a rustls server configuration from the PEM files of
//! `BPF_REGISTRY_TLS_CERT` / `BPF_REGISTRY_TLS_KEY`; ALPN offers HTTP/2
//! and HTTP/1.1. The handshake runs in each connection's own task, under
//! the connection cap and `BPF_REGISTRY_TLS_HANDSHAKE_TIMEOUT`
//! (`http::limits::serve`), so a slow or silent client never holds up
//! the others.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

fn invalid(m: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, m)
}

/// Loads the certificate chain and key into a server configuration. An
/// unreadable or mismatched pair stops the start-up with a message naming
/// the variable.
pub fn server_config(cert: &Path, key: &Path) -> std::io::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| invalid(format!("BPF_REGISTRY_TLS_CERT {}: {e}", cert.display())))?
        .collect::<Result<_, _>>()
        .map_err(|e| invalid(format!("BPF_REGISTRY_TLS_CERT {}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(invalid(format!(
            "BPF_REGISTRY_TLS_CERT {}: no PEM certificate in the file",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| invalid(format!("BPF_REGISTRY_TLS_KEY {}: {e}", key.display())))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(format!("TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            invalid(format!(
                "BPF_REGISTRY_TLS_CERT/BPF_REGISTRY_TLS_KEY: the key does not fit the certificate or is unsupported: {e}"
            ))
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
