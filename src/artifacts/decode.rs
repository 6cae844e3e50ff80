//! Decoding a `POST /artifacts` body, once. [`CreateArtifact::parse`] reads
//! the JSON (the seed README's `#` comments tolerated) into validated
//! fields that name the one repository the create writes, so the caller
//! can authorize exactly what will execute; [`CreateArtifact::into_artifact`]
//! then decodes the payload once (see `payload`: base64 to a spooled
//! layer, a tar.zst kept as is or a packed one-entry tar, eBPF facts)
//! into the [`NewArtifact`] the service stores.

use std::path::Path;

use bytes::Bytes;

use super::elf::{self, EbpfFacts, ElfError, Endianness};
use super::limits::{
    CappedList, CappedMetadata, Limit, MAX_DESCRIPTION_BYTES, MAX_HOSTS, MAX_KERNEL_VERSION_BYTES,
    MAX_METADATA_BYTES, MAX_TAGS,
};
use super::model::{architecture_is_big_endian, BpfConfig, CreateRequest, HostId, KINDS};
use super::payload::{self, Layer, PayloadLimits};
use super::ArtifactError;
use crate::fleet::{BtfRequirement, Requirements};
use crate::oci::{RepoName, Tag};

/// Longest `requirements` object read, in bytes of JSON.
const MAX_REQUIREMENTS_BYTES: usize = 1024;

/// The declared `requirements`: an object of the known keys whose bounds
/// parse and can hold; `null` or absent is none.
fn declared_requirements(
    raw: Option<&serde_json::value::RawValue>,
) -> Result<Option<Requirements>, ArtifactError> {
    let Some(raw) = raw else { return Ok(None) };
    let text = raw.get();
    if text.len() > MAX_REQUIREMENTS_BYTES {
        return Err(ArtifactError::InvalidRequirements(format!(
            "{} bytes of JSON, over the {MAX_REQUIREMENTS_BYTES}-byte limit",
            text.len()
        )));
    }
    if !matches!(
        text.trim_start().as_bytes().first(),
        Some(b'{') | Some(b'n')
    ) {
        return Err(ArtifactError::InvalidRequirements(
            "expected an object such as {\"min_kernel\":\"5.8\",\"btf\":\"required\"}".into(),
        ));
    }
    let parsed: Option<Requirements> = serde_json::from_str(text)
        .map_err(|e| ArtifactError::InvalidRequirements(e.to_string()))?;
    if let Some(r) = &parsed {
        r.validate().map_err(ArtifactError::InvalidRequirements)?;
    }
    Ok(parsed)
}

/// The requirements stored: the declared ones, with `btf: required` for
/// an object with CO-RE relocations (which cannot load without kernel
/// BTF) unless declared; `None` when nothing is required.
fn effective_requirements(
    declared: Option<Requirements>,
    ebpf: Option<&EbpfFacts>,
) -> Result<Option<Requirements>, ArtifactError> {
    let mut r = declared.unwrap_or_default();
    if ebpf.is_some_and(|e| e.core_relocations) {
        match r.btf {
            Some(BtfRequirement::Optional) => {
                return Err(ArtifactError::InvalidRequirements(
                    "btf is optional but the eBPF object has CO-RE relocations (.BTF.ext core_relo), which need kernel BTF".into(),
                ))
            }
            Some(BtfRequirement::Required) => {}
            None => r.btf = Some(BtfRequirement::Required),
        }
    }
    Ok((!r.is_empty()).then_some(r))
}

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
    /// As declared (validated); an object with CO-RE relocations may add
    /// `btf: required` in `into_artifact`.
    requirements: Option<Requirements>,
    /// The base64 text of `data` (a slice of the request buffer).
    data: Bytes,
}

/// The decoded form of a create request, ready to be stored.
#[derive(Debug)]
pub struct NewArtifact {
    pub(crate) repo: RepoName,
    pub(crate) tag: Tag,
    pub(crate) config: BpfConfig,
    /// The layer, spooled to a temp file (streamed into the store).
    pub(crate) layer: Layer,
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
        let body = without_hash_comments(body);
        let buf = &body;
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
            requirements,
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
        let requirements = declared_requirements(requirements)?;
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
            requirements,
            data,
        })
    }

    /// The one repository the create writes to: the layer, the config, the
    /// manifest, the version tag or the version's index, and the host
    /// associations all go there.
    pub fn repository(&self) -> &RepoName {
        &self.repo
    }

    /// The version tag the create writes (or whose index it extends).
    pub fn tag(&self) -> &Tag {
        &self.tag
    }

    /// The declared architecture.
    pub fn architecture(&self) -> &str {
        &self.architecture
    }

    /// Decodes the payload, once, into a spooled layer and its eBPF facts
    /// (blocking: file I/O and compression; run it on a blocking thread).
    /// The base64 text is dropped as soon as it is decoded.
    pub fn into_artifact(
        mut self,
        limits: &PayloadLimits,
        spool_dir: &Path,
    ) -> Result<NewArtifact, ArtifactError> {
        let data = std::mem::take(&mut self.data);
        let prepared = payload::prepare_payload(data, self.repo.as_str(), limits, spool_dir)?;
        // A pre-packed archive's first ELF object, or the payload itself.
        let ebpf = match &prepared.elf {
            Some(object) => inspect_declared(object, &self.kind, &self.architecture)?,
            None => None,
        };
        let requirements = effective_requirements(self.requirements, ebpf.as_ref())?;
        let layer = prepared.layer;
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
            requirements,
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

/// `body` without its `#` comments, stripped in place when the buffer
/// is not shared: a create body can be ~85 MiB, and a second copy of it
/// would be the largest allocation of the create.
fn without_hash_comments(body: Bytes) -> Bytes {
    if !body.contains(&b'#') {
        return body;
    }
    let mut buf = body
        .try_into_mut()
        .unwrap_or_else(|shared| bytes::BytesMut::from(&shared[..]));
    let len = strip_hash_comments(&mut buf);
    buf.truncate(len);
    buf.freeze()
}

/// Removes `#`-to-end-of-line comments that stand outside JSON strings,
/// moving the rest to the front of `body`; returns the new length (the
/// old one when there was none, so the strict parse error stands).
fn strip_hash_comments(body: &mut [u8]) -> usize {
    let (mut in_string, mut escaped, mut in_comment) = (false, false, false);
    let mut kept = 0;
    for read in 0..body.len() {
        let Some(&b) = body.get(read) else { break };
        if in_comment {
            if b != b'\n' {
                continue;
            }
            in_comment = false;
        } else if in_string {
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
            continue;
        }
        // `kept <= read`: this only ever moves bytes towards the front.
        if let Some(slot) = body.get_mut(kept) {
            *slot = b;
        }
        kept += 1;
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: u64 = 1 << 20;

    #[test]
    fn hash_comments_outside_strings_are_stripped() {
        let strip = |text: &[u8]| without_hash_comments(Bytes::copy_from_slice(text));
        assert_eq!(
            &strip(b"{\"data\": \"a#b\"  # comment\n}")[..],
            b"{\"data\": \"a#b\"  \n}"
        );
        assert_eq!(&strip(b"{} # one\n# two")[..], b"{} \n");
        for unchanged in [&b"{\"a\": \"x#y\\\"#\"}"[..], b"{}"] {
            assert_eq!(&strip(unchanged)[..], unchanged);
        }
        // A shared buffer is copied, never changed under its other owner.
        let shared = Bytes::from_static(b"{} # c");
        assert_eq!(&without_hash_comments(shared.clone())[..], b"{} ");
        assert_eq!(&shared[..], b"{} # c");
    }

    fn into_artifact(c: CreateArtifact) -> Result<NewArtifact, ArtifactError> {
        let spool = tempfile::tempdir().unwrap();
        c.into_artifact(&PayloadLimits::for_artifact_cap(MAX), spool.path())
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
            let new = into_artifact(c).unwrap();
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
        let body = Bytes::from_static(
            br#"{"name":"a","version":"1","type":"map","architecture":"x86_64","data":"ZXZpbA=="}"#,
        );
        let c = CreateArtifact::parse(body.clone(), MAX).unwrap();
        let inside = body.as_ptr_range();
        assert!(
            inside.contains(&c.data.as_ptr()),
            "data is a slice of the body"
        );
        for missing_or_null in [r#""data":null"#, r#""x":1"#] {
            let text = format!(
                r#"{{"name":"a","version":"1","type":"map","architecture":"x86_64",{missing_or_null}}}"#
            );
            assert!(matches!(
                parse(&text),
                Err(ArtifactError::InvalidRequest(_))
            ));
        }
        assert!(matches!(
            parse(r#"{"name":"a","version":"1","type":"map","architecture":"x86_64","data":7}"#),
            Err(ArtifactError::InvalidJson(_))
        ));
        // An escaped string is copied, not sliced.
        let c = parse(
            r#"{"name":"a","version":"1","type":"map","architecture":"x86_64","data":"ZXZp\u0062A=="}"#,
        )
        .unwrap();
        assert_eq!(&c.data[..], b"ZXZpbA==");
        assert!(into_artifact(c).unwrap().layer.size() > 0);
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
                .map(into_artifact)
                .unwrap(),
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

    fn with_requirements(requirements: &str) -> String {
        format!(
            r#"{{"name":"a","version":"1","type":"map","architecture":"x86_64","data":"ZXZpbA==","requirements":{requirements}}}"#
        )
    }

    #[test]
    fn requirements_are_validated_and_stored() {
        let c = parse(&with_requirements(
            r#"{"min_kernel":"5.8","max_kernel":"6.99","btf":"required"}"#,
        ))
        .unwrap();
        let new = into_artifact(c).unwrap();
        let r = new.config.requirements.clone().unwrap();
        assert_eq!(r.min_kernel.as_deref(), Some("5.8"));
        assert_eq!(r.max_kernel.as_deref(), Some("6.99"));
        assert_eq!(r.btf, Some(BtfRequirement::Required));
        for none in ["null", "{}"] {
            let new = into_artifact(parse(&with_requirements(none)).unwrap()).unwrap();
            assert_eq!(new.config.requirements, None, "{none}");
        }
        for bad in [
            r#"{"min_kernel":"5.8","gpu":true}"#,
            r#"{"min_kernel":"5.8-rc1"}"#,
            r#"{"max_kernel":"1.2.3.4"}"#,
            r#"{"min_kernel":"6.1","max_kernel":"5.15"}"#,
            r#"{"btf":"sometimes"}"#,
            r#""5.8""#,
            r#"[]"#,
        ] {
            match parse(&with_requirements(bad)) {
                Err(ArtifactError::InvalidRequirements(_)) => {}
                other => panic!("{bad}: {other:?}"),
            }
        }
        let huge = format!(r#"{{"min_kernel":"5.8","x":"{}"}}"#, "a".repeat(2000));
        assert!(matches!(
            parse(&with_requirements(&huge)),
            Err(ArtifactError::InvalidRequirements(_))
        ));
    }

    #[test]
    fn core_relocations_require_btf() {
        let facts = |core: bool| EbpfFacts {
            endianness: Endianness::Little,
            programs: Vec::new(),
            maps: Vec::new(),
            license: None,
            btf: true,
            btf_ext: true,
            core_relocations: core,
        };
        let req = |btf| Requirements {
            min_kernel: Some("5.8".into()),
            btf,
            ..Default::default()
        };
        let core = facts(true);
        let plain = facts(false);
        let required = Some(BtfRequirement::Required);
        let optional = Some(BtfRequirement::Optional);
        assert_eq!(
            effective_requirements(None, Some(&core)).unwrap(),
            Some(Requirements {
                btf: required,
                ..Default::default()
            })
        );
        assert_eq!(
            effective_requirements(Some(req(None)), Some(&core)).unwrap(),
            Some(req(required))
        );
        assert_eq!(
            effective_requirements(Some(req(required)), Some(&core)).unwrap(),
            Some(req(required))
        );
        assert!(matches!(
            effective_requirements(Some(req(optional)), Some(&core)),
            Err(ArtifactError::InvalidRequirements(_))
        ));
        assert_eq!(
            effective_requirements(Some(req(optional)), Some(&plain)).unwrap(),
            Some(req(optional))
        );
        assert_eq!(effective_requirements(None, Some(&plain)).unwrap(), None);
        assert_eq!(effective_requirements(None, None).unwrap(), None);
    }
}
