//! Media types the registry recognises. Config and layer media types are
//! never restricted: artifacts bring their own.

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
pub const OCI_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// The eBPF artifact's `artifactType` and config media type.
pub const BPF_ARTIFACT_TYPE: &str = "application/vnd.aegisflux.bpf.artifact.v1";
pub const BPF_CONFIG: &str = "application/vnd.aegisflux.bpf.config.v1+json";
pub const BPF_HOST_ASSOCIATION: &str = "application/vnd.aegisflux.bpf.host-association.v1";
pub const BPF_HOST_SELECTOR: &str = "application/vnd.aegisflux.bpf.host-selector.v1";

/// Every manifest media type this registry accepts on PUT.
pub const MANIFEST_TYPES: [&str; 4] = [
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

pub fn is_manifest_type(mt: &str) -> bool {
    MANIFEST_TYPES.contains(&mt)
}

pub fn is_index_type(mt: &str) -> bool {
    mt == OCI_INDEX || mt == DOCKER_MANIFEST_LIST
}
