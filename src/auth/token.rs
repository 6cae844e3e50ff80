//! Bearer tokens per the Docker token specification: JWTs signed with
//! ES256 (ECDSA P-256, SHA-256, the 64-byte `r||s` signature), written and
//! checked here by hand (`header.payload.signature`, base64url without
//! padding). Verification accepts `alg: ES256` only (so never `none` or an
//! HMAC algorithm), then checks the signature, `iss`, `aud`, `exp` and
//! `nbf`. The signing key comes from `BPF_REGISTRY_TOKEN_KEY` (PEM, PKCS#8
//! or SEC1) or is generated on first start into the data directory (mode
//! 0600).

use std::path::{Path, PathBuf};

use aws_lc_rs::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_FIXED,
    ECDSA_P256_SHA256_FIXED_SIGNING,
};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::PrivateKeyDer;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

/// `iss` of every token this registry signs.
pub const ISSUER: &str = "bpf-registry";
/// `aud` of access tokens: the service name of the challenges.
pub const SERVICE: &str = "bpf-registry";
/// `aud` of refresh tokens, so one can never pass as an access token.
pub const REFRESH_AUDIENCE: &str = "bpf-registry/refresh";
/// Where a generated key is kept, relative to the data directory.
pub const GENERATED_KEY_PATH: &str = crate::storage::paths::GENERATED_TOKEN_KEY;
/// Tokens longer than this are refused before any parsing.
const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Clock skew tolerated on `nbf` (the issuer and the verifier share a
/// clock, so this is only for `nbf == now` races).
const NBF_LEEWAY_SECS: i64 = 5;

/// One `access` entry: `{"type":"repository","name":"bpf/x","actions":["pull"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The claims of an access or refresh token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    /// The user name; empty for an anonymous token.
    pub sub: String,
    /// A string or a list of strings.
    pub aud: serde_json::Value,
    pub exp: i64,
    pub nbf: i64,
    pub iat: i64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<ResourceActions>,
    /// Refresh tokens: the fingerprint of the user's password hash when
    /// the token was issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwh: Option<String>,
}

impl Claims {
    /// Whether the token grants `action` on repository `name`.
    pub fn grants(&self, name: &str, action: &str) -> bool {
        self.access.iter().any(|a| {
            a.kind == "repository" && a.name == name && a.actions.iter().any(|x| x == action)
        })
    }

    /// Whether the token grants `action` on some repository.
    pub fn grants_somewhere(&self, action: &str) -> bool {
        self.access
            .iter()
            .any(|a| a.kind == "repository" && a.actions.iter().any(|x| x == action))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is malformed")]
    Malformed,
    #[error("the token's algorithm {0:?} is not accepted (ES256 only)")]
    Algorithm(String),
    #[error("the token was signed by another key")]
    KeyId,
    #[error("the token's signature does not verify")]
    Signature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by someone else")]
    Issuer,
    #[error("the token is for another audience")]
    Audience,
    #[error("cannot sign: {0}")]
    Signing(String),
}

/// The ES256 key tokens are signed and verified with.
pub struct TokenKey {
    pair: EcdsaKeyPair,
    public: Vec<u8>,
    kid: String,
}

impl std::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey").field("kid", &self.kid).finish()
    }
}

/// DER prefix of a P-256 SubjectPublicKeyInfo before the 65-byte point.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];

/// The libtrust key id distribution uses for `kid`: base32 of the first
/// 240 bits of sha256(SPKI DER), in 12 groups of 4 joined by `:`.
fn libtrust_kid(public_point: &[u8]) -> String {
    let mut spki = P256_SPKI_PREFIX.to_vec();
    spki.extend_from_slice(public_point);
    let d = Sha256::digest(&spki);
    let b32 = base32(d.get(..30).unwrap_or_default());
    b32.as_bytes()
        .chunks(4)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":")
}

/// RFC 4648 base32, no padding (30 bytes → 48 characters).
fn base32(data: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut buffer: u32 = 0;
    let mut bits = 0;
    for &b in data {
        buffer = (buffer << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            let i = ((buffer >> bits) & 31) as usize;
            out.push(char::from(ALPHABET[i]));
        }
    }
    if bits > 0 {
        let i = ((buffer << (5 - bits)) & 31) as usize;
        out.push(char::from(ALPHABET[i]));
    }
    out
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

impl TokenKey {
    fn from_pair(pair: EcdsaKeyPair) -> TokenKey {
        let public = pair.public_key().as_ref().to_vec();
        let kid = libtrust_kid(&public);
        TokenKey { pair, public, kid }
    }

    /// A fresh random key.
    pub fn generate() -> Result<TokenKey, TokenError> {
        let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok(Self::from_pair(pair))
    }

    /// Reads a PEM private key: PKCS#8 (`BEGIN PRIVATE KEY`) or SEC1
    /// (`BEGIN EC PRIVATE KEY`, what `openssl ecparam -genkey` writes), on
    /// the P-256 curve.
    pub fn from_pem(pem: &[u8]) -> Result<TokenKey, String> {
        let der = PrivateKeyDer::from_pem_slice(pem)
            .map_err(|e| format!("no PEM private key found ({e})"))?;
        let pair = match &der {
            PrivateKeyDer::Pkcs8(k) => {
                EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, k.secret_pkcs8_der())
            }
            PrivateKeyDer::Sec1(k) => EcdsaKeyPair::from_private_key_der(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                k.secret_sec1_der(),
            ),
            _ => return Err("an RSA key: a P-256 (ES256) EC key is required".into()),
        }
        .map_err(|e| format!("not a P-256 EC private key ({e})"))?;
        Ok(Self::from_pair(pair))
    }

    /// The key as PKCS#8 PEM.
    pub fn to_pem(&self) -> Result<String, TokenError> {
        let doc = self
            .pair
            .to_pkcs8v1()
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        let b = STANDARD.encode(doc.as_ref());
        let mut pem = String::from("-----BEGIN PRIVATE KEY-----\n");
        for chunk in b.as_bytes().chunks(64) {
            pem.push_str(&String::from_utf8_lossy(chunk));
            pem.push('\n');
        }
        pem.push_str("-----END PRIVATE KEY-----\n");
        Ok(pem)
    }

    /// The configured key, or the one generated earlier in the data
    /// directory, or a new one written there with mode 0600.
    pub fn load_or_create(
        configured: Option<&Path>,
        data_dir: &Path,
    ) -> std::io::Result<(TokenKey, PathBuf, bool)> {
        let invalid = |p: &Path, m: String| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("token key {}: {m}", p.display()),
            )
        };
        if let Some(p) = configured {
            let pem = std::fs::read(p).map_err(|e| {
                std::io::Error::new(e.kind(), format!("token key {}: {e}", p.display()))
            })?;
            let key = Self::from_pem(&pem).map_err(|m| invalid(p, m))?;
            return Ok((key, p.to_path_buf(), false));
        }
        let path = data_dir.join(crate::storage::paths::generated_token_key().as_str());
        match std::fs::read(&path) {
            Ok(pem) => {
                let key = Self::from_pem(&pem).map_err(|m| invalid(&path, m))?;
                return Ok((key, path, false));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("token key {}: {e}", path.display()),
                ))
            }
        }
        let key = Self::generate().map_err(|e| invalid(&path, e.to_string()))?;
        let pem = key.to_pem().map_err(|e| invalid(&path, e.to_string()))?;
        // The store's one atomic write: a crash leaves at most a temp file
        // with a random name (removed by gc), never a name a later start
        // collides with. One server per data dir (the exclusive lock), so
        // no other process writes this file meanwhile.
        crate::storage::fs::write_file_atomic(&path, pem.as_bytes(), Some(0o600)).map_err(|e| {
            std::io::Error::new(e.kind(), format!("token key {}: {e}", path.display()))
        })?;
        let pem = std::fs::read(&path)?;
        let key = Self::from_pem(&pem).map_err(|m| invalid(&path, m))?;
        Ok((key, path, true))
    }

    /// The `kid` header of the tokens this key signs.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Signs any header and payload (the tests use it to forge tokens with
    /// chosen claims; the registry only calls [`TokenKey::sign`]).
    pub fn sign_raw(
        &self,
        header: &serde_json::Value,
        payload: &serde_json::Value,
    ) -> Result<String, TokenError> {
        let h = serde_json::to_vec(header).map_err(|e| TokenError::Signing(e.to_string()))?;
        let p = serde_json::to_vec(payload).map_err(|e| TokenError::Signing(e.to_string()))?;
        let signing_input = format!("{}.{}", b64(&h), b64(&p));
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let sig = self
            .pair
            .sign(&rng, signing_input.as_bytes())
            .map_err(|e| TokenError::Signing(e.to_string()))?;
        Ok(format!("{signing_input}.{}", b64(sig.as_ref())))
    }

    /// Signs claims with the standard header (`ES256`, `JWT`, `kid`).
    pub fn sign(&self, claims: &Claims) -> Result<String, TokenError> {
        let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "kid": self.kid});
        let payload =
            serde_json::to_value(claims).map_err(|e| TokenError::Signing(e.to_string()))?;
        self.sign_raw(&header, &payload)
    }

    /// Verifies a token for `audience` at unix time `now`.
    pub fn verify(&self, token: &str, audience: &str, now: i64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or("");
        if alg != "ES256" {
            return Err(TokenError::Algorithm(alg.chars().take(16).collect()));
        }
        if header
            .get("kid")
            .and_then(|k| k.as_str())
            .is_some_and(|k| k != self.kid)
        {
            return Err(TokenError::KeyId);
        }
        let sig = URL_SAFE_NO_PAD
            .decode(s)
            .map_err(|_| TokenError::Malformed)?;
        if sig.len() != 64 {
            return Err(TokenError::Signature);
        }
        let signing_input_len = h.len() + 1 + p.len();
        let signing_input = token
            .get(..signing_input_len)
            .ok_or(TokenError::Malformed)?;
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &self.public)
            .verify(signing_input.as_bytes(), &sig)
            .map_err(|_| TokenError::Signature)?;
        let claims: Claims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed)?;
        if claims.iss != ISSUER {
            return Err(TokenError::Issuer);
        }
        let aud_ok = match &claims.aud {
            serde_json::Value::String(a) => a == audience,
            serde_json::Value::Array(list) => list.iter().any(|a| a.as_str() == Some(audience)),
            _ => false,
        };
        if !aud_ok {
            return Err(TokenError::Audience);
        }
        if claims.exp <= now {
            return Err(TokenError::Expired);
        }
        if claims.nbf > now + NBF_LEEWAY_SECS {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// 16 random bytes as hex (token ids).
pub fn random_id() -> String {
    let mut b = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut b).is_err() {
        // Cannot happen with a working OS RNG; a unique-enough fallback.
        let n = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        return format!("{n:032x}");
    }
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn claims(now: i64) -> Claims {
        Claims {
            iss: ISSUER.into(),
            sub: "alice".into(),
            aud: json!(SERVICE),
            exp: now + 300,
            nbf: now,
            iat: now,
            jti: random_id(),
            access: vec![ResourceActions {
                kind: "repository".into(),
                name: "bpf/x".into(),
                actions: vec!["pull".into()],
            }],
            pwh: None,
        }
    }

    #[test]
    fn sign_and_verify() {
        let k = TokenKey::generate().unwrap();
        let now = unix_now();
        let t = k.sign(&claims(now)).unwrap();
        let c = k.verify(&t, SERVICE, now).unwrap();
        assert!(c.grants("bpf/x", "pull"));
        assert!(!c.grants("bpf/x", "push"));
        assert!(!c.grants("bpf/y", "pull"));
        assert_eq!(
            k.verify(&t, REFRESH_AUDIENCE, now),
            Err(TokenError::Audience)
        );
        assert_eq!(k.verify(&t, SERVICE, now + 301), Err(TokenError::Expired));
        // kid format: 12 groups of 4
        assert_eq!(k.kid().split(':').count(), 12);
    }

    #[test]
    fn pem_round_trip() {
        let k = TokenKey::generate().unwrap();
        let pem = k.to_pem().unwrap();
        let k2 = TokenKey::from_pem(pem.as_bytes()).unwrap();
        assert_eq!(k.kid(), k2.kid());
        let now = unix_now();
        let t = k.sign(&claims(now)).unwrap();
        assert!(k2.verify(&t, SERVICE, now).is_ok());
        assert!(TokenKey::from_pem(b"nonsense").is_err());
    }

    #[test]
    fn refuses_forgeries() {
        let k = TokenKey::generate().unwrap();
        let other = TokenKey::generate().unwrap();
        let now = unix_now();
        let c = serde_json::to_value(claims(now)).unwrap();
        // alg none, unsigned
        let none = format!(
            "{}.{}.",
            b64(br#"{"alg":"none","typ":"JWT"}"#),
            b64(&serde_json::to_vec(&c).unwrap())
        );
        assert!(matches!(
            k.verify(&none, SERVICE, now),
            Err(TokenError::Algorithm(_))
        ));
        // HS256
        let hs = k.sign_raw(&json!({"alg":"HS256","typ":"JWT"}), &c).unwrap();
        assert!(matches!(
            k.verify(&hs, SERVICE, now),
            Err(TokenError::Algorithm(_))
        ));
        // another key, with and without our kid
        let t = other.sign(&claims(now)).unwrap();
        assert_eq!(k.verify(&t, SERVICE, now), Err(TokenError::KeyId));
        let t = other
            .sign_raw(&json!({"alg":"ES256","typ":"JWT","kid":k.kid()}), &c)
            .unwrap();
        assert_eq!(k.verify(&t, SERVICE, now), Err(TokenError::Signature));
        // tampered payload
        let t = k.sign(&claims(now)).unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let mut c2 = c.clone();
        c2["access"][0]["actions"] = json!(["pull", "push"]);
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            b64(&serde_json::to_vec(&c2).unwrap()),
            parts[2]
        );
        assert_eq!(k.verify(&forged, SERVICE, now), Err(TokenError::Signature));
        // wrong issuer, not yet valid
        let mut c3 = c.clone();
        c3["iss"] = json!("someone");
        let t = k.sign_raw(&json!({"alg":"ES256"}), &c3).unwrap();
        assert_eq!(k.verify(&t, SERVICE, now), Err(TokenError::Issuer));
        let mut c4 = c.clone();
        c4["nbf"] = json!(now + 100);
        let t = k.sign_raw(&json!({"alg":"ES256"}), &c4).unwrap();
        assert_eq!(k.verify(&t, SERVICE, now), Err(TokenError::NotYetValid));
        assert_eq!(k.verify("a.b", SERVICE, now), Err(TokenError::Malformed));
        assert_eq!(
            k.verify("a.b.c.d", SERVICE, now),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn base32_known_answer() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
    }
}
