//! Public keys and signature checks: the two algorithms cosign-compatible
//! verifiers share with Vault Transit (ECDSA P-256 over SHA-256 with an
//! ASN.1 DER signature, and Ed25519 over the message), public keys as
//! X.509 SubjectPublicKeyInfo (PEM `PUBLIC KEY`, what `cosign verify --key`
//! reads), and the verdict on one stored signature.

use std::collections::BTreeMap;

use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_ASN1, ED25519};
use base64::Engine as _;
use serde::Serialize;

/// DER prefix of a P-256 SubjectPublicKeyInfo (id-ecPublicKey, prime256v1,
/// a 66-byte BIT STRING), followed by the 65-byte uncompressed point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// DER prefix of an Ed25519 SubjectPublicKeyInfo, followed by the 32-byte key.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];

/// A signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub enum Algorithm {
    /// ECDSA on P-256 over SHA-256 of the message, ASN.1 DER signature.
    #[serde(rename = "ecdsa-p256-sha256")]
    EcdsaP256Sha256,
    /// Ed25519 (pure) over the message.
    #[serde(rename = "ed25519")]
    Ed25519,
}

impl Algorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// A verification key (its SubjectPublicKeyInfo DER).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    algorithm: Algorithm,
    spki: Vec<u8>,
}

impl std::fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "PublicKey({}, {})",
            self.algorithm.as_str(),
            self.fingerprint()
        )
    }
}

impl PublicKey {
    /// From SubjectPublicKeyInfo DER; only P-256 and Ed25519 keys.
    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, String> {
        if der.len() == P256_SPKI_PREFIX.len() + 65 && der.starts_with(&P256_SPKI_PREFIX) {
            return Self::from_p256_point(&der[P256_SPKI_PREFIX.len()..]);
        }
        if der.len() == ED25519_SPKI_PREFIX.len() + 32 && der.starts_with(&ED25519_SPKI_PREFIX) {
            return Self::from_ed25519_raw(&der[ED25519_SPKI_PREFIX.len()..]);
        }
        Err("not an ECDSA P-256 or Ed25519 public key (SubjectPublicKeyInfo)".into())
    }

    /// From a PEM `PUBLIC KEY` block.
    pub fn from_pem(text: &str) -> Result<PublicKey, String> {
        let der = pem_decode(text, "PUBLIC KEY")?;
        Self::from_spki_der(&der)
    }

    /// From an uncompressed SEC1 point (`04 || X || Y`).
    pub fn from_p256_point(point: &[u8]) -> Result<PublicKey, String> {
        if point.len() != 65 || point[0] != 0x04 {
            return Err("a P-256 public key is a 65-byte uncompressed point".into());
        }
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(point);
        Ok(PublicKey {
            algorithm: Algorithm::EcdsaP256Sha256,
            spki,
        })
    }

    /// From the 32 raw bytes of an Ed25519 key.
    pub fn from_ed25519_raw(raw: &[u8]) -> Result<PublicKey, String> {
        if raw.len() != 32 {
            return Err(format!(
                "an Ed25519 public key is 32 bytes, not {}",
                raw.len()
            ));
        }
        let mut spki = ED25519_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(raw);
        Ok(PublicKey {
            algorithm: Algorithm::Ed25519,
            spki,
        })
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn spki_der(&self) -> &[u8] {
        &self.spki
    }

    /// PEM `PUBLIC KEY` (what `cosign verify --key` and `openssl` read).
    pub fn to_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki)
    }

    /// `sha256:<hex>` of the SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> String {
        crate::oci::Digest::of(&self.spki).to_string()
    }

    /// Whether `signature` is this key's signature of `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        match self.algorithm {
            Algorithm::EcdsaP256Sha256 => UnparsedPublicKey::new(
                &ECDSA_P256_SHA256_ASN1,
                &self.spki[P256_SPKI_PREFIX.len()..],
            )
            .verify(message, signature)
            .is_ok(),
            Algorithm::Ed25519 => {
                UnparsedPublicKey::new(&ED25519, &self.spki[ED25519_SPKI_PREFIX.len()..])
                    .verify(message, signature)
                    .is_ok()
            }
        }
    }
}

/// Every version of a signing key.
#[derive(Debug, Clone)]
pub struct KeySet {
    pub key_id: String,
    pub algorithm: Algorithm,
    pub latest: u32,
    pub versions: BTreeMap<u32, PublicKey>,
}

impl KeySet {
    /// The versions to try for a signature: the announced one first (an
    /// unsigned hint), then every other, newest first.
    pub fn candidates(&self, hint: Option<u32>) -> Vec<(u32, &PublicKey)> {
        let mut out: Vec<(u32, &PublicKey)> = Vec::new();
        if let Some(k) = hint.and_then(|v| self.versions.get(&v).map(|k| (v, k))) {
            out.push(k);
        }
        for (v, k) in self.versions.iter().rev() {
            if Some(*v) != hint {
                out.push((*v, k));
            }
        }
        out
    }
}

/// The verdict on one signature layer.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Verdict {
    pub valid: bool,
    /// `ok`, or why the signature is not accepted.
    pub reason: String,
    /// The key version the signature verified with.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub verified_with_version: Option<u32>,
}

impl Verdict {
    pub fn invalid(reason: impl Into<String>) -> Verdict {
        Verdict {
            valid: false,
            reason: reason.into(),
            verified_with_version: None,
        }
    }
}

/// Checks one cosign signature layer of `subject`: the payload must be a
/// simple-signing document naming `subject`, and the signature must verify
/// with one version of `keys`.
pub fn check(
    subject: &crate::oci::Digest,
    payload: &[u8],
    signature_b64: &str,
    keys: &KeySet,
    version_hint: Option<u32>,
) -> Verdict {
    let Some(doc) = super::cosign::Payload::parse(payload) else {
        return Verdict::invalid("the payload is not a cosign simple-signing document");
    };
    if doc.critical.kind != super::cosign::PAYLOAD_TYPE {
        return Verdict::invalid(format!(
            "the payload type is {:?}, not {:?}",
            doc.critical.kind,
            super::cosign::PAYLOAD_TYPE
        ));
    }
    if doc.critical.image.docker_manifest_digest != subject.to_string() {
        return Verdict::invalid(format!(
            "the payload names manifest {}, not this artifact",
            doc.critical.image.docker_manifest_digest
        ));
    }
    let Ok(sig) = base64::engine::general_purpose::STANDARD.decode(signature_b64.trim()) else {
        return Verdict::invalid("the signature annotation is not base64");
    };
    for (version, key) in keys.candidates(version_hint) {
        if key.verify(payload, &sig) {
            return Verdict {
                valid: true,
                reason: "ok".into(),
                verified_with_version: Some(version),
            };
        }
    }
    Verdict::invalid(format!(
        "the signature does not verify with any version of key {}",
        keys.key_id
    ))
}

/// The DER of the first PEM block labelled `label`.
pub fn pem_decode(text: &str, label: &str) -> Result<Vec<u8>, String> {
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let Some(start) = text.find(&begin) else {
        let found = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("-----BEGIN "))
            .and_then(|l| l.strip_suffix("-----"));
        return Err(match found {
            Some(other) => format!("expected a PEM \"{label}\" block, found \"{other}\""),
            None => format!("expected a PEM \"{label}\" block, found no PEM block"),
        });
    };
    let body = &text[start + begin.len()..];
    let Some(stop) = body.find(&end) else {
        return Err(format!("the PEM \"{label}\" block has no END line"));
    };
    let b64: String = body[..stop]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("the PEM \"{label}\" block is not valid base64: {e}"))
}

/// A PEM block with 64-character lines.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_lc_rs::rand::SystemRandom;
    use aws_lc_rs::signature::{
        EcdsaKeyPair, Ed25519KeyPair, KeyPair, ECDSA_P256_SHA256_ASN1_SIGNING,
    };

    /// The P-256 key Vault printed for a test key (PEM from `GET keys`).
    const VAULT_P256_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAEE2ZrXnqn+b8YVfLPJk5zt8nr5Yrm\n8NgBLFUicqE6BA44dMPoVyRAm0PuucEC3pZ2J6irfEO/d8F2keGS1zrqcQ==\n-----END PUBLIC KEY-----\n";
    /// ...and its signature of "hello" (`vault:v1:` stripped).
    const VAULT_P256_SIG: &str = "MEQCIDIrKeCq2Kh99wZRfG8xI5fTERnNndy7DfgWBx9v7v+LAiB8ozC7G1i+KmWtFXijHENlZtxVXpN5gS3FlBYYj0nMeQ==";
    /// An Ed25519 key from Vault (raw base64) and its signature of "hello".
    const VAULT_ED25519_RAW: &str = "e+yUNc/N3soKYkoVwgSQFNifPJJ1hQOnapYwkLUQFgg=";
    const VAULT_ED25519_SIG: &str =
        "CIzZ795t6woTg2m0fFWkwUK2/FE0aDZ996CP+/m7WQpuCoQtQ0mdU36oUtEKRkPfjAia2hGCB+CK1aUMu/AxCQ==";

    fn b64(s: &str) -> Vec<u8> {
        base64::engine::general_purpose::STANDARD.decode(s).unwrap()
    }

    #[test]
    fn vault_signatures_verify() {
        let k = PublicKey::from_pem(VAULT_P256_PEM).unwrap();
        assert_eq!(k.algorithm(), Algorithm::EcdsaP256Sha256);
        assert!(k.verify(b"hello", &b64(VAULT_P256_SIG)));
        assert!(!k.verify(b"hellO", &b64(VAULT_P256_SIG)));
        assert_eq!(PublicKey::from_pem(&k.to_pem()).unwrap(), k);

        let e = PublicKey::from_ed25519_raw(&b64(VAULT_ED25519_RAW)).unwrap();
        assert!(e.verify(b"hello", &b64(VAULT_ED25519_SIG)));
        assert!(!e.verify(b"hello!", &b64(VAULT_ED25519_SIG)));
        assert_eq!(PublicKey::from_pem(&e.to_pem()).unwrap(), e);
    }

    #[test]
    fn generated_keys_round_trip() {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng).unwrap();
        let kp = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, pkcs8.as_ref()).unwrap();
        let pk = PublicKey::from_p256_point(kp.public_key().as_ref()).unwrap();
        let sig = kp.sign(&rng, b"msg").unwrap();
        assert!(pk.verify(b"msg", sig.as_ref()));

        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pk = PublicKey::from_ed25519_raw(kp.public_key().as_ref()).unwrap();
        assert!(pk.verify(b"msg", kp.sign(b"msg").as_ref()));
        assert!(!pk.verify(b"msg", &[0u8; 64]));
    }

    #[test]
    fn pem_errors_name_what_was_found() {
        let e = pem_decode(
            "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n",
            "PUBLIC KEY",
        )
        .unwrap_err();
        assert!(e.contains("CERTIFICATE"), "{e}");
        assert!(pem_decode("garbage", "PUBLIC KEY").is_err());
        assert!(PublicKey::from_spki_der(&[0x30, 0x00]).is_err());
        assert!(PublicKey::from_p256_point(&[4u8; 10]).is_err());
    }

    #[test]
    fn check_reasons() {
        let rng = SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let kp = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        let pk = PublicKey::from_ed25519_raw(kp.public_key().as_ref()).unwrap();
        let keys = KeySet {
            key_id: "k".into(),
            algorithm: Algorithm::Ed25519,
            latest: 1,
            versions: BTreeMap::from([(1, pk)]),
        };
        let subject = crate::oci::Digest::of(b"a");
        let payload = super::super::cosign::Payload::new("r", &subject).to_bytes();
        let sig = base64::engine::general_purpose::STANDARD.encode(kp.sign(&payload));
        let ok = check(&subject, &payload, &sig, &keys, Some(7));
        assert!(ok.valid, "{ok:?}");
        assert_eq!(ok.verified_with_version, Some(1));
        let other = crate::oci::Digest::of(b"b");
        assert!(check(&other, &payload, &sig, &keys, None)
            .reason
            .contains("names manifest"));
        let mut tampered = payload.clone();
        tampered[10] ^= 1;
        assert!(!check(&subject, &tampered, &sig, &keys, None).valid);
        assert!(!check(&subject, &payload, "!!", &keys, None).valid);
        let bad_sig = base64::engine::general_purpose::STANDARD.encode([0u8; 64]);
        assert!(check(&subject, &payload, &bad_sig, &keys, None)
            .reason
            .contains("does not verify"));
    }
}
