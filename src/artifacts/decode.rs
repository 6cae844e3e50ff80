//! Decoding a `POST /artifacts` body, once. [`CreateArtifact::parse`] reads
//! the JSON (the seed README's `#` comments tolerated) into validated
//! fields that name the one repository the create writes, so the caller
//! can authorize exactly what will execute; [`CreateArtifact::into_artifact`]
//! then decodes the payload (base64, a tar.zst kept as is or a packed
//! one-entry tar, eBPF facts) into the [`NewArtifact`] the service stores.

use base64::Engine as _;
use bytes::Bytes;

use super::elf::{self, EbpfFacts, ElfError, Endianness};
use super::limits::{
    CappedList, CappedMetadata, Limit, MAX_DESCRIPTION_BYTES, MAX_HOSTS, MAX_KERNEL_VERSION_BYTES,
    MAX_METADATA_BYTES, MAX_TAGS,
};
use super::model::{architecture_is_big_endian, BpfConfig, CreateRequest, HostId, KINDS};
use super::pack;
use super::ArtifactError;
use crate::oci::{RepoName, Tag};

/// A parsed, validated create request whose payload is still base64.
#[derive(Debug)]
pub struct CreateArtifact {
    repo: RepoName,
    tag: Tag,
    version: String,
    description: String,
    kind: String,
    architecture: String,
    kernel_version: String,
    metadata: serde_json::Map<String, serde_json::Value>,
    tags: Vec<String>,
    hosts: Vec<HostId>,
    /// The base64 text of `data` (a slice of the request buffer).
    data: Bytes,
}

/// The decoded form of a create request, ready to be stored.
#[derive(Debug)]
pub struct NewArtifact {
    pub(crate) repo: RepoName,
    pub(crate) tag: Tag,
    pub(crate) config: BpfConfig,
    pub(crate) layer: Vec<u8>,
    pub(crate) hosts: Vec<HostId>,
}

impl NewArtifact {
    /// The one repository the create writes to.
    pub fn repository(&self) -> &RepoName {
        &self.repo
    }
}

fn required(v: Option<String>, field: &str) -> Result<String, ArtifactError> {
    match v {
        Some(s) if !s.trim().is_empty() => Ok(s),
        _ => Err(ArtifactError::InvalidRequest(format!(
            "{field} is required and must not be empty"
        ))),
    }
}

/// `data` as a slice of `buf` when serde borrowed it, else its own copy.
fn data_bytes(buf: &Bytes, data: std::borrow::Cow<'_, str>) -> Bytes {
    match data {
        std::borrow::Cow::Borrowed(s) => {
            let start = (s.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize);
            match start.checked_add(s.len()) {
                Some(end) if end <= buf.len() => buf.slice(start..end),
                _ => Bytes::copy_from_slice(s.as_bytes()),
            }
        }
        std::borrow::Cow::Owned(s) => Bytes::from(s.into_bytes()),
    }
}

fn trim_ascii(b: &Bytes) -> Bytes {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |i| i + 1);
    b.slice(start..end.max(start))
}

/// The optional fields of a create, each within its cap.
struct BoundedFields {
    description: String,
    kernel_version: String,
    metadata: serde_json::Map<String, serde_json::Value>,
    tags: Vec<String>,
    hosts: Vec<String>,
}

/// Checks the optional fields against their caps (see `limits`), before
/// anything is decoded or written.
fn within_limits(
    description: Option<String>,
    kernel_version: Option<String>,
    metadata: Option<CappedMetadata>,
    tags: Option<CappedList<String, MAX_TAGS>>,
    hosts: Option<CappedList<String, MAX_HOSTS>>,
) -> Result<BoundedFields, ArtifactError> {
    let text_within = |v: Option<String>, limit: Limit, max: u64| match v {
        Some(s) if s.len() as u64 > max => Err(limit.refusal(max, Some(s.len() as u64))),
        v => Ok(v.unwrap_or_default()),
    };
    let description = text_within(description, Limit::Description, MAX_DESCRIPTION_BYTES)?;
    let kernel_version = text_within(
        kernel_version,
        Limit::KernelVersion,
        MAX_KERNEL_VERSION_BYTES,
    )?;
    let metadata = match metadata {
        Some(m) if m.is_over() => return Err(Limit::Metadata.refusal(MAX_METADATA_BYTES, m.size)),
        m => m.map(|m| m.map).unwrap_or_default(),
    };
    fn count_within<const N: usize>(
        v: Option<CappedList<String, N>>,
        limit: Limit,
    ) -> Result<Vec<String>, ArtifactError> {
        match v {
            Some(l) if l.is_over() => Err(limit.refusal(N as u64, Some(l.total as u64))),
            v => Ok(v.map(|l| l.items).unwrap_or_default()),
        }
    }
    let tags = count_within(tags, Limit::Tags)?;
    let hosts = count_within(hosts, Limit::Hosts)?;
    Ok(BoundedFields {
        description,
        kernel_version,
        metadata,
        tags,
        hosts,
    })
}

impl CreateArtifact {
    /// Parses and validates a create body (cheap: the payload is not
    /// decoded). This is the only parse of the body: what it returns is
    /// what is authorized and what executes.
    pub fn parse(body: Bytes, max_artifact_bytes: u64) -> Result<Self, ArtifactError> {
        // The seed README's own curl example sends a shell comment inside
        // the body: `#` line comments outside strings are removed first,
        // then the body is parsed once (strict JSON has no `#` outside
        // strings, so a valid body is read unchanged).
        let stripped = body
            .contains(&b'#')
            .then(|| strip_hash_comments(&body))
            .flatten()
            .map(Bytes::from);
        let buf = stripped.as_ref().unwrap_or(&body);
        let req: CreateRequest<'_> =
            serde_json::from_slice(buf).map_err(|e| ArtifactError::InvalidJson(e.to_string()))?;
        let CreateRequest {
            name,
            version,
            description,
            kind,
            architecture,
            kernel_version,
            metadata,
            tags,
            data,
            hosts,
        } = req;
        let name = required(name, "name")?;
        let repo = RepoName::parse(&name).map_err(|e| ArtifactError::InvalidName(e.to_string()))?;
        let version = required(version, "version")?;
        let tag = Tag::parse(&version).map_err(|_| {
            ArtifactError::InvalidRequest(format!(
                "invalid version {version:?}: it becomes an OCI tag and must match [A-Za-z0-9_][A-Za-z0-9._-]{{0,127}}"
            ))
        })?;
        let kind = required(kind, "type")?;
        if !KINDS.contains(&kind.as_str()) {
            return Err(ArtifactError::InvalidRequest(format!(
                "invalid type {kind:?}: expected one of program, map, tracepoint"
            )));
        }
        let architecture = required(architecture, "architecture")?;
        if architecture.len() > 32
            || !architecture
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(ArtifactError::InvalidRequest(format!(
                "invalid architecture {architecture:?}: expected e.g. x86_64, aarch64"
            )));
        }
        let BoundedFields {
            description,
            kernel_version,
            metadata,
            tags,
            hosts,
        } = within_limits(description, kernel_version, metadata, tags, hosts)?;
        if let Some(bad) = tags.iter().find(|t| t.is_empty() || t.len() > 128) {
            return Err(ArtifactError::InvalidRequest(format!(
                "invalid tag {bad:?}: 1-128 characters"
            )));
        }
        let mut hosts = hosts
            .iter()
            .map(|h| HostId::parse(h))
            .collect::<Result<Vec<_>, _>>()?;
        hosts.sort();
        hosts.dedup();
        let data = match data {
            Some(d) if !d.trim().is_empty() => trim_ascii(&data_bytes(buf, d)),
            _ => {
                return Err(ArtifactError::InvalidRequest(
                    "data is required and must not be empty".into(),
                ))
            }
        };
        let max = max_artifact_bytes;
        if (data.len() as u64 / 4).saturating_mul(3) > max.saturating_add(3) {
            return Err(ArtifactError::TooLarge { max });
        }
        Ok(CreateArtifact {
            repo,
            tag,
            version,
            description,
            kind,
            architecture,
            kernel_version,
            metadata,
            tags,
            hosts,
            data,
        })
    }

    /// The one repository the create writes to: the layer, the config, the
    /// manifest, the version tag or the version's index, and the host
    /// associations all go there.
    pub fn repository(&self) -> &RepoName {
        &self.repo
    }

    /// Decodes the payload (CPU work: run it on a blocking thread).
    pub fn into_artifact(self, max_artifact_bytes: u64) -> Result<NewArtifact, ArtifactError> {
        let engine = &base64::engine::general_purpose::STANDARD;
        let payload = engine
            .decode(&self.data)
            .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&self.data))
            .map_err(|e| ArtifactError::InvalidBase64(e.to_string()))?;
        drop(self.data);
        let max = max_artifact_bytes;
        if payload.len() as u64 > max {
            return Err(ArtifactError::TooLarge { max });
        }
        let (layer, ebpf) = payload_layer(
            payload,
            self.repo.as_str(),
            &self.kind,
            &self.architecture,
            max,
        )?;
        let config = BpfConfig {
            name: self.repo.to_string(),
            version: self.version,
            description: self.description,
            kind: self.kind,
            architecture: self.architecture,
            kernel_version: self.kernel_version,
            metadata: self.metadata,
            tags: self.tags,
            created_at: now_rfc3339(),
            ebpf,
        };
        Ok(NewArtifact {
            repo: self.repo,
            tag: self.tag,
            config,
            layer,
            hosts: self.hosts,
        })
    }
}

/// The stored layer and eBPF facts of a decoded payload: a tar.zst is
/// kept as is (its first ELF inspected), anything else is packed as a
/// one-entry tar.zst. The one place that looks into client payloads.
fn payload_layer(
    payload: Vec<u8>,
    name: &str,
    kind: &str,
    architecture: &str,
    max: u64,
) -> Result<(Vec<u8>, Option<EbpfFacts>), ArtifactError> {
    if pack::is_tar_zstd(&payload) {
        let facts = match pack::first_elf_in_tar_zstd(&payload, max) {
            Some(obj) => inspect_declared(&obj, kind, architecture)?,
            None => None,
        };
        return Ok((payload, facts));
    }
    let is_elf = pack::is_elf(&payload);
    let facts = if is_elf {
        inspect_declared(&payload, kind, architecture)?
    } else {
        None
    };
    let packed = pack::pack_tar_zstd(&pack::entry_name(name, is_elf), &payload)
        .map_err(|e| ArtifactError::Internal(e.to_string()))?;
    Ok((packed, facts))
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Checks an ELF payload against what the request declares.
fn inspect_declared(
    bytes: &[u8],
    kind: &str,
    arch: &str,
) -> Result<Option<EbpfFacts>, ArtifactError> {
    match elf::inspect(bytes) {
        Ok(facts) => {
            if let Some(big) = architecture_is_big_endian(arch) {
                let object_big = facts.endianness == Endianness::Big;
                if big != object_big {
                    return Err(ArtifactError::InvalidEbpf(format!(
                        "the eBPF object is {}-endian but architecture {arch:?} is {}-endian",
                        if object_big { "big" } else { "little" },
                        if big { "big" } else { "little" },
                    )));
                }
            }
            if kind == "program" && facts.programs.is_empty() {
                return Err(ArtifactError::InvalidEbpf(
                    "type is program but the eBPF object has no program section".into(),
                ));
            }
            Ok(Some(facts))
        }
        Err(ElfError::NotBpf { machine }) if kind == "program" => Err(ArtifactError::InvalidEbpf(format!(
            "type is program but data is an ELF object for machine {machine}, not eBPF (e_machine 247)"
        ))),
        Err(ElfError::NotBpf { .. }) | Err(ElfError::NotElf) => Ok(None),
        Err(ElfError::Malformed(m)) => Err(ArtifactError::InvalidEbpf(format!(
            "data starts with the ELF magic but is not a valid ELF object: {m}"
        ))),
    }
}

/// Removes `#`-to-end-of-line comments that stand outside JSON strings;
/// `None` when there is none (so the strict parse error stands).
fn strip_hash_comments(body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len());
    let (mut in_string, mut escaped, mut in_comment, mut found) = (false, false, false, false);
    for &b in body {
        if in_comment {
            if b == b'\n' {
                in_comment = false;
                out.push(b);
            }
            continue;
        }
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
        } else if b == b'"' {
            in_string = true;
        } else if b == b'#' {
            in_comment = true;
            found = true;
            continue;
        }
        out.push(b);
    }
    found.then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 20;

    #[test]
    fn hash_comments_outside_strings_are_stripped() {
        let body = b"{\"data\": \"a#b\"  # comment\n}";
        assert_eq!(
            strip_hash_comments(body).unwrap(),
            b"{\"data\": \"a#b\"  \n}"
        );
        assert_eq!(strip_hash_comments(b"{\"a\": \"x#y\\\"#\"}"), None);
        assert_eq!(strip_hash_comments(b"{}"), None);
    }

    fn parse(text: &str) -> Result<CreateArtifact, ArtifactError> {
        CreateArtifact::parse(Bytes::from(text.to_string()), MAX)
    }

    #[test]
    fn the_repository_is_read_by_the_decoder_that_executes() {
        // Strict JSON fails on these; the executing decoder reads them.
        for body in [
            r#"{"name":"public/tool","version":"2","type":"map","architecture":"x86_64","data":"ZXZpbA=="} #"#,
            "{ # c\n\"name\":\"public/tool\",\"version\":\"2\",\"type\":\"map\",\"architecture\":\"x86_64\",\"data\":\"ZXZpbA==\"}",
        ] {
            let c = parse(body).unwrap();
            assert_eq!(c.repository().as_str(), "public/tool");
            let new = c.into_artifact(MAX).unwrap();
            assert_eq!(new.repository().as_str(), "public/tool");
            assert_eq!(new.config.name, "public/tool");
        }
    }

    #[test]
    fn data_is_sliced_trimmed_and_decoded() {
        let c = parse(
            r#"{"name":"a","version":"1","type":"map","architecture":"x86_64","data":"  ZXZpbA==  "}"#,
        )
        .unwrap();
        assert_eq!(&c.data[..], b"ZXZpbA==");
        // An escaped string is copied, not sliced.
        let c = parse(
            r#"{"name":"a","version":"1","type":"map","architecture":"x86_64","data":"ZXZp\u0062A=="}"#,
        )
        .unwrap();
        assert_eq!(&c.data[..], b"ZXZpbA==");
        assert!(!c.into_artifact(MAX).unwrap().layer.is_empty());
    }

    #[test]
    fn invalid_bodies_are_refused_before_the_payload() {
        assert!(matches!(
            parse("nonsense"),
            Err(ArtifactError::InvalidJson(_))
        ));
        assert!(matches!(
            parse(r#"{"name":"Bad","version":"1","type":"map","architecture":"x","data":"AA=="}"#),
            Err(ArtifactError::InvalidName(_))
        ));
        assert!(matches!(
            parse(r#"{"name":"a","version":"1","type":"map","architecture":"x","data":"!!"}"#)
                .unwrap()
                .into_artifact(MAX),
            Err(ArtifactError::InvalidBase64(_))
        ));
    }

    #[test]
    fn caps_are_checked_at_parse_before_the_payload() {
        let hosts: Vec<String> = (0..=MAX_HOSTS).map(|i| format!("h{i}")).collect();
        let body = serde_json::json!({
            "name": "a", "version": "1", "type": "map", "architecture": "x86_64",
            "data": "!! not base64", "hosts": hosts,
        });
        match parse(&body.to_string()) {
            Err(ArtifactError::OverLimit {
                limit: Limit::Hosts,
                max,
                actual,
            }) => assert_eq!((max, actual), (1000, Some(1001))),
            other => panic!("{other:?}"),
        }
        // Duplicates are one host each.
        let body = serde_json::json!({
            "name": "a", "version": "1", "type": "map", "architecture": "x86_64",
            "data": "ZXZpbA==", "hosts": ["b", "a", "b"],
        });
        let c = parse(&body.to_string()).unwrap();
        assert_eq!(
            c.hosts,
            vec![HostId::parse("a").unwrap(), HostId::parse("b").unwrap()]
        );
    }
}
