//! The local key file signer (`BPF_REGISTRY_SIGNER=key`): a PEM PKCS#8
//! private key, ECDSA P-256 or Ed25519, read once at start-up. The file
//! must not be accessible by group or others (like `ssh` refuses such a
//! key), and must parse; otherwise the registry does not start. A local key
//! has one version, `1`; rotating it means a new key id (the fingerprint).

use std::path::Path;
use std::sync::Arc;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};

use super::verify::{pem_decode, Algorithm, KeySet, PublicKey};
use super::{BoxFuture, RawSignature, Signer, SignerError};

enum Key {
    Ecdsa(EcdsaKeyPair),
    Ed25519(Ed25519KeyPair),
}

/// Signs in process with a private key from a file.
pub struct LocalSigner {
    key: Key,
    rng: SystemRandom,
    keys: Arc<KeySet>,
}

impl std::fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalSigner({})", self.keys.key_id)
    }
}

impl LocalSigner {
    /// Loads the key file; the error says what is wrong and how to fix it.
    pub fn load(path: &Path) -> Result<LocalSigner, String> {
        let shown = path.display();
        let meta = std::fs::metadata(path)
            .map_err(|e| format!("cannot read the signing key {shown}: {e}"))?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(format!(
                    "the signing key {shown} is accessible by group or others (mode {mode:04o}); \
                     it must be readable by its owner only: chmod 600 {shown}"
                ));
            }
        }
        if !meta.is_file() {
            return Err(format!("the signing key {shown} is not a regular file"));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read the signing key {shown}: {e}"))?;
        Self::from_pem(&text).map_err(|e| format!("the signing key {shown} is unusable: {e}"))
    }

    /// Parses a PEM PKCS#8 private key.
    pub fn from_pem(text: &str) -> Result<LocalSigner, String> {
        for (label, hint) in [
            (
                "ENCRYPTED PRIVATE KEY",
                "it is encrypted; decrypt it to a file only the registry can read: openssl pkcs8 -in key.pem -out plain.pem",
            ),
            (
                "EC PRIVATE KEY",
                "it is a SEC1 key; convert it to PKCS#8: openssl pkcs8 -topk8 -nocrypt -in key.pem -out key.p8.pem",
            ),
            (
                "ENCRYPTED SIGSTORE PRIVATE KEY",
                "cosign's encrypted key format is not supported; use a PEM PKCS#8 key (openssl genpkey)",
            ),
            (
                "ENCRYPTED COSIGN PRIVATE KEY",
                "cosign's encrypted key format is not supported; use a PEM PKCS#8 key (openssl genpkey)",
            ),
        ] {
            if text.contains(&format!("-----BEGIN {label}-----")) {
                return Err(hint.to_string());
            }
        }
        let der = pem_decode(text, "PRIVATE KEY")?;
        let (key, public) = if let Ok(k) =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &der)
        {
            let public = PublicKey::from_p256_point(k.public_key().as_ref())?;
            (Key::Ecdsa(k), public)
        } else if let Ok(k) = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&der) {
            let public = PublicKey::from_ed25519_raw(k.public_key().as_ref())?;
            (Key::Ed25519(k), public)
        } else {
            return Err(
                    "not a PKCS#8 ECDSA P-256 or Ed25519 private key (other curves and RSA are not supported)"
                        .into(),
                );
        };
        let keys = KeySet {
            key_id: format!("key:{}", public.fingerprint()),
            algorithm: public.algorithm(),
            latest: 1,
            versions: [(1, public)].into_iter().collect(),
        };
        Ok(LocalSigner {
            key,
            rng: SystemRandom::new(),
            keys: Arc::new(keys),
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.keys.algorithm
    }

    fn sign_now(&self, payload: &[u8]) -> Result<RawSignature, SignerError> {
        let bytes = match &self.key {
            Key::Ecdsa(k) => k
                .sign(&self.rng, payload)
                .map_err(|_| SignerError::Invalid("ECDSA signing failed".into()))?
                .as_ref()
                .to_vec(),
            Key::Ed25519(k) => k.sign(payload).as_ref().to_vec(),
        };
        Ok(RawSignature {
            bytes,
            key_version: 1,
        })
    }
}

impl Signer for LocalSigner {
    fn key_id(&self) -> &str {
        &self.keys.key_id
    }

    fn sign<'a>(&'a self, payload: &'a [u8]) -> BoxFuture<'a, Result<RawSignature, SignerError>> {
        let r = self.sign_now(payload);
        Box::pin(async move { r })
    }

    fn public_keys(&self, _refresh: bool) -> BoxFuture<'_, Result<Arc<KeySet>, SignerError>> {
        let keys = self.keys.clone();
        Box::pin(async move { Ok(keys) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256`
    const OPENSSL_P256: &str = "-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg14RX+sOCe35MnHh1
WhNHmjf84pPFH+b9dw1XFtpcCPyhRANCAATX89prAYg/mhZFreBGeZMrVZPnNrK6
zGmQhDctEKkORFMqaaRZu+gfcHG9hO7VonY46L04gDEsKyKT+ngMZYur
-----END PRIVATE KEY-----
";
    /// `openssl genpkey -algorithm ed25519` (PKCS#8 v1, no public key).
    const OPENSSL_ED25519: &str = "-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIBr3+XXK1Ck5QTsCwFYLhZdc/3IXHJU31eSmYFXKm8Gn
-----END PRIVATE KEY-----
";

    #[tokio::test]
    async fn openssl_keys_sign_and_verify() {
        for (pem, alg) in [
            (OPENSSL_P256, Algorithm::EcdsaP256Sha256),
            (OPENSSL_ED25519, Algorithm::Ed25519),
        ] {
            let s = LocalSigner::from_pem(pem).unwrap();
            assert_eq!(s.algorithm(), alg);
            assert!(s.key_id().starts_with("key:sha256:"));
            let sig = s.sign(b"payload").await.unwrap();
            assert_eq!(sig.key_version, 1);
            let keys = s.public_keys(false).await.unwrap();
            assert!(keys.versions[&1].verify(b"payload", &sig.bytes));
            assert!(!keys.versions[&1].verify(b"payloaD", &sig.bytes));
        }
    }

    #[test]
    fn unusable_keys_are_explained() {
        let e = LocalSigner::from_pem(
            "-----BEGIN EC PRIVATE KEY-----\nAA==\n-----END EC PRIVATE KEY-----\n",
        )
        .err()
        .unwrap();
        assert!(e.contains("PKCS#8"), "{e}");
        let e = LocalSigner::from_pem("hello").err().unwrap();
        assert!(e.contains("PRIVATE KEY"), "{e}");
        let e =
            LocalSigner::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
                .err()
                .unwrap();
        assert!(e.contains("not a PKCS#8"), "{e}");
    }

    #[cfg(unix)]
    #[test]
    fn group_readable_key_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, OPENSSL_P256).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = LocalSigner::load(&p).err().unwrap();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(LocalSigner::load(&p).is_ok());
        let e = LocalSigner::load(&dir.path().join("missing.pem"))
            .err()
            .unwrap();
        assert!(e.contains("cannot read"), "{e}");
    }
}
