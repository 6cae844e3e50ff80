//! Joins a parted object's parts into one object inside the store: a
//! multipart upload whose parts are server-side copies of the part objects
//! (S3 `UploadPartCopy`), so the bytes of a chunked upload are not read
//! back through this process and written again when it becomes its blob.
//!
//! `object_store` has no `UploadPartCopy`: this sends it itself, signed by
//! the client's own SigV4 authorizer, and leaves creating, completing and
//! aborting the multipart upload to `object_store`. Any failure is reported
//! to the caller, which joins the parts by reading and writing instead: a
//! store without the call costs speed, never a blob.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;

use super::remote::Part;
use super::signed::{encode, read_answer, SignedClient};

/// S3's smallest part, except the last one of an upload.
const MIN_PART: u64 = 5 * 1024 * 1024;
/// S3's largest part, and its most parts per upload.
const MAX_PART: u64 = 5 * 1024 * 1024 * 1024;
const MAX_PARTS: usize = 10_000;
/// Copies in flight at once.
const IN_FLIGHT: usize = 4;
/// A copy of up to 5 GiB happens inside the store before it answers.
const COPY_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Joiner {
    s3: Arc<AmazonS3>,
    signed: Arc<SignedClient>,
}

impl Joiner {
    pub fn new(s3: Arc<AmazonS3>, signed: Arc<SignedClient>) -> Joiner {
        Joiner { s3, signed }
    }

    /// Whether `parts` (in order, none empty) can be joined by copies.
    pub fn fits(parts: &[&Part]) -> bool {
        let Some((_, init)) = parts.split_last() else {
            return false;
        };
        parts.len() <= MAX_PARTS
            && init.iter().all(|p| p.meta.size >= MIN_PART)
            && parts.iter().all(|p| p.meta.size <= MAX_PART)
    }

    /// Makes `to` the concatenation of `parts`; the upload is aborted if a
    /// copy fails.
    pub async fn join(&self, parts: &[&Part], to: &Path) -> Result<(), String> {
        let id = self
            .s3
            .create_multipart(to)
            .await
            .map_err(|e| e.to_string())?;
        let copied: Result<Vec<PartId>, String> = futures_util::stream::iter(parts.iter())
            .enumerate()
            .map(|(i, part)| self.copy_part(&part.key, to, &id, i + 1))
            .buffered(IN_FLIGHT)
            .try_collect()
            .await;
        let done = match copied {
            Ok(ids) => self
                .s3
                .complete_multipart(to, &id, ids)
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        if done.is_err() {
            let _ = self.s3.abort_multipart(to, &id).await;
        }
        done
    }

    async fn copy_part(
        &self,
        from: &Path,
        to: &Path,
        upload_id: &str,
        number: usize,
    ) -> Result<PartId, String> {
        let query = format!("partNumber={number}&uploadId={}", encode(upload_id));
        let url = self.signed.url(to, Some(&query));
        let copy_source = self.signed.copy_source(from);
        let answer = self
            .signed
            .request(
                http::Method::PUT,
                &url,
                &[("x-amz-copy-source", copy_source)],
            )?
            .timeout(COPY_TIMEOUT)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let (status, body) = read_answer(answer).await?;
        if !status.is_success() {
            return Err(format!("UploadPartCopy answered {status}: {body}"));
        }
        // S3 may answer 200 with an error document for a copy.
        if body.contains("<Error>") {
            return Err(format!("UploadPartCopy failed: {body}"));
        }
        etag_of(&body)
            .map(|content_id| PartId { content_id })
            .ok_or_else(|| format!("UploadPartCopy answer without an ETag: {body}"))
    }
}

/// The `ETag` of a `CopyPartResult` document, quotes as sent.
fn etag_of(xml: &str) -> Option<String> {
    let start = xml.find("<ETag>")? + "<ETag>".len();
    let len = xml[start..].find("</ETag>")?;
    let raw = &xml[start..start + len];
    Some(raw.replace("&quot;", "\"").replace("&#34;", "\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_etag_is_read_from_a_copy_part_result() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?><CopyPartResult><LastModified>2026-12-02T00:00:00Z</LastModified><ETag>&quot;9b2cf535f27731c974343645a3985328&quot;</ETag></CopyPartResult>"#;
        assert_eq!(
            etag_of(xml).as_deref(),
            Some("\"9b2cf535f27731c974343645a3985328\"")
        );
        assert_eq!(etag_of("<CopyPartResult></CopyPartResult>"), None);
        assert_eq!(etag_of("<ETag>unterminated"), None);
    }
}
