//! The S3 requests `object_store` cannot make, sent by this backend
//! itself: the URL of a key, a request builder carrying the client's own
//! SigV4 signature, and a bounded read of the store's answer. Used to join
//! parts by `UploadPartCopy` ([`super::join`]) and to PUT a part while its
//! bytes still arrive ([`super::put_stream`]).

use std::time::Duration;

use object_store::aws::{AwsAuthorizer, AwsCredential};
use object_store::client::HttpRequestBody;
use object_store::path::Path;

use super::client::{S3Credentials, S3Location};

/// Longest accepted answer to one of these requests (a small XML document).
const MAX_ANSWER: usize = 64 * 1024;

pub struct SignedClient {
    http: vault_http::Client,
    endpoint: String,
    bucket: String,
    region: String,
    credential: AwsCredential,
    sign_payload: bool,
}

impl SignedClient {
    pub fn new(location: &S3Location, credentials: &S3Credentials) -> Result<SignedClient, String> {
        // No whole-request timeout here: a copy takes as long as the store
        // needs and a streamed PUT as long as its chunk arrives; each caller
        // bounds its own requests.
        let http = vault_http::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(vault_http::redirect::Policy::none())
            .build()
            .map_err(|e| e.to_string())?;
        Ok(SignedClient {
            http,
            endpoint: location.endpoint.clone(),
            bucket: location.bucket.clone(),
            region: location.region.clone(),
            credential: AwsCredential {
                key_id: credentials.access_key_id.clone(),
                secret_key: credentials.secret_access_key.clone(),
                token: credentials.session_token.clone(),
            },
            sign_payload: location.sign_payload,
        })
    }

    /// Whether requests must sign a hash of their body (then a body cannot
    /// be sent before it is whole).
    pub fn signs_payload(&self) -> bool {
        self.sign_payload
    }

    /// The path-style URL of `key`, with `query` (already encoded) if any.
    pub fn url(&self, key: &Path, query: Option<&str>) -> String {
        let base = format!(
            "{}/{}/{}",
            self.endpoint,
            self.bucket,
            encode_key(key.as_ref())
        );
        match query {
            Some(q) => format!("{base}?{q}"),
            None => base,
        }
    }

    /// `x-amz-copy-source` naming `key` in this bucket.
    pub fn copy_source(&self, key: &Path) -> String {
        format!("{}/{}", self.bucket, encode_key(key.as_ref()))
    }

    /// A `method` request to `url` with `headers`, signed (the body, which
    /// the caller adds, unsigned unless `signs_payload`: then only an
    /// empty body matches the signature).
    pub fn request(
        &self,
        method: http::Method,
        url: &str,
        headers: &[(&'static str, String)],
    ) -> Result<vault_http::RequestBuilder, String> {
        let mut request = http::Request::builder().method(method.clone()).uri(url);
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let mut request = request
            .body(HttpRequestBody::empty())
            .map_err(|e| e.to_string())?;
        AwsAuthorizer::new(&self.credential, "s3", &self.region)
            .with_sign_payload(self.sign_payload)
            .try_authorize(&mut request, None)
            .map_err(|e| e.to_string())?;
        let mut send = self.http.request(method, url);
        for (name, value) in request.headers() {
            send = send.header(name.as_str(), value.as_bytes());
        }
        Ok(send)
    }
}

/// The status and (lossy UTF-8) body of an answer, refused past
/// `MAX_ANSWER` bytes.
pub async fn read_answer(
    mut answer: vault_http::Response,
) -> Result<(http::StatusCode, String), String> {
    let status = answer.status();
    let mut body = Vec::new();
    while let Some(chunk) = answer.chunk().await.map_err(|e| e.to_string())? {
        if body.len() + chunk.len() > MAX_ANSWER {
            return Err(format!("the store answered more than {MAX_ANSWER} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

/// Percent-encodes a key for a URL path, keeping its `/` separators.
fn encode_key(key: &str) -> String {
    key.split('/').map(encode).collect::<Vec<_>>().join("/")
}

/// S3's unreserved characters: everything else is percent-encoded.
const S3_UNRESERVED: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

pub fn encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, S3_UNRESERVED).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_encoded_but_their_separators_kept() {
        assert_eq!(encode_key("a/_uploads/x.y~z"), "a/_uploads/x.y~z");
        assert_eq!(encode_key("a b/c+d"), "a%20b/c%2Bd");
        assert_eq!(encode("id/=+"), "id%2F%3D%2B");
    }
}
