//! The console's detail pages as `maud` templates: an artifact (its
//! version, platforms, eBPF facts, signature, hosts and the copy-paste
//! pull commands), a host's artifacts, and a repository's tags,
//! artifacts and referrers. Every value is escaped by `( )`.

use maud::{html, Markup};

use super::pages::Origin;
use super::views::{
    artifact_href, artifact_href_in, artifact_table, host_href, layout, next_page, query_string,
    repository_href, short_digest, Page,
};
use crate::artifacts::{ArtifactJson, HostId};
use crate::fleet::hosts::HostJson;
use crate::fleet::wire::DeploymentsJson;
use crate::oci::{Descriptor, Digest, RepoName};
use crate::signing::Verification;

/// What an artifact's page shows.
pub struct ArtifactView<'a> {
    pub artifact: &'a ArtifactJson,
    /// The artifacts of the same version in the same repository (one per
    /// architecture).
    pub platforms: &'a [ArtifactJson],
    /// The repositories the caller may pull that hold the same manifest.
    pub copies: &'a [RepoName],
    /// `None` when verification could not run.
    pub verification: Option<&'a Verification>,
    pub origin: &'a Origin,
    /// With authentication on, whom `curl -u` names: the signed-in user
    /// (`Some("")` for a caller without a user name).
    pub curl_user: Option<&'a str>,
}

/// `s` as one shell word, in single quotes.
fn shell_word(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The commands that fetch an artifact. The URL parts are of validated
/// alphabets (host characters, repository names, tags, digests); the user
/// name is quoted as one shell word; so the lines are safe to paste into
/// a shell as they are.
pub fn pull_commands(
    a: &ArtifactJson,
    origin: &Origin,
    curl_user: Option<&str>,
) -> (String, String) {
    let plain = if origin.scheme == "http" {
        "--plain-http "
    } else {
        ""
    };
    let oras = format!(
        "oras pull {plain}{}/{}:{}",
        origin.authority, a.name, a.version
    );
    let user = match curl_user {
        None => String::new(),
        Some("") => "-u \"$USER\" ".to_string(),
        Some(u) => format!("-u {} ", shell_word(u)),
    };
    let curl = format!(
        "curl -fLOJ {user}'{}/artifacts/{}/binary{}'",
        origin.base_url(),
        a.id,
        query_string(&[("repository", a.name.clone())])
    );
    (oras, curl)
}

fn command(id: &str, text: &str) -> Markup {
    html! {
        div.command {
            pre id=(id) { code { (text) } }
            button.copy type="button" data-copy=(id) { "Copy" }
        }
    }
}

fn signature(v: &ArtifactView<'_>) -> Markup {
    let a = v.artifact;
    html! {
        section.signature {
            h2 { "Signature" }
            @match (&a.signature, v.verification) {
                (None, _) => p { span.muted.sig-status { "unsigned" } },
                (Some(_), Some(ver)) if ver.verified => p { span.ok.sig-status { "signed, verified" } },
                (Some(_), Some(_)) => p { span.bad.sig-status { "signed, not verified" } },
                (Some(_), None) => p { span.muted.sig-status { "signed (verification unavailable)" } },
            }
            @if let Some(s) = &a.signature {
                dl {
                    dt { "Key" } dd { code.key-id { (s.key_id.as_deref().unwrap_or("unknown")) } }
                    @if let Some(kv) = s.key_version { dt { "Key version" } dd { (kv) } }
                    @if let Some(alg) = &s.algorithm { dt { "Algorithm" } dd { (alg) } }
                    @if let Some(at) = &s.signed_at { dt { "Signed at" } dd { (at) } }
                    dt { "Signature tag" } dd { code { (s.tag) } }
                }
                p { a href="/signing/public-key" { "Public key (PEM)" } }
            }
        }
    }
}

fn ebpf_facts(a: &ArtifactJson) -> Markup {
    html! {
        section.ebpf {
            h2 { "eBPF facts" }
            @match &a.ebpf {
                None => p.muted { "The payload is not an eBPF object." },
                Some(e) => {
                    dl {
                        dt { "License" } dd.license { (e.license.as_deref().unwrap_or("none")) }
                        dt { "BTF" } dd.btf { (if e.btf { "yes" } else { "no" }) }
                        dt { "BTF.ext" } dd { (if e.btf_ext { "yes" } else { "no" }) }
                        dt { "Byte order" } dd { (format!("{:?}", e.endianness).to_lowercase()) }
                    }
                    h3 { "Programs" }
                    @if e.programs.is_empty() { p.muted { "No program sections." } } @else {
                        table.programs {
                            thead { tr { th { "Section" } th { "Type" } th { "Functions" } } }
                            tbody { @for p in &e.programs {
                                tr { td { code { (p.section) } } td { span.badge { (p.program_type) } } td { (p.functions.join(", ")) } }
                            } }
                        }
                    }
                    h3 { "Maps" }
                    @if e.maps.is_empty() { p.muted { "No maps." } } @else {
                        ul.maps { @for m in &e.maps { li { code { (m) } } } }
                    }
                }
            }
        }
    }
}

/// `GET /ui/artifacts/{id}`
pub fn artifact_page(page: &Page<'_>, v: &ArtifactView<'_>) -> Markup {
    let a = v.artifact;
    let (oras, curl) = pull_commands(a, v.origin, v.curl_user);
    let metadata = serde_json::to_string_pretty(&a.metadata).unwrap_or_default();
    let body = html! {
        p.crumbs { a href="/ui/" { "Artifacts" } " / " a href=(repository_href(&a.name)) { (a.name) } }
        h1 { (a.name) " " span.version { (a.version) } }
        @if !a.description.is_empty() { p.description { (a.description) } }
        section.facts {
            dl {
                dt { "Type" } dd { span.badge { (a.kind) } }
                dt { "Architecture" } dd { (a.architecture) }
                @if !a.kernel_version.is_empty() { dt { "Kernel" } dd { (a.kernel_version) } }
                dt { "Id" } dd { code { (a.id) } }
                dt { "Layer" } dd { code { (a.checksum) } " (" (a.size) " bytes)" }
                dt { "Created" } dd { (a.created_at) }
                dt { "Tags" } dd.tags { @for t in &a.tags { span.tag { (t) } " " } }
            }
        }
        section.pull {
            h2 { "Pull" }
            (command("pull-oras", &oras))
            (command("pull-curl", &curl))
        }
        section.platforms {
            h2 { "Platforms of " (a.version) }
            ul { @for p in v.platforms {
                li {
                    @if p.id == a.id { strong { (p.architecture) } } @else {
                        a href=(artifact_href(p)) { (p.architecture) }
                    }
                    " " code { (short_digest(&p.id)) }
                }
            } }
        }
        (ebpf_facts(a))
        (signature(v))
        section.hosts {
            h2 { "Hosts (" (a.hosts.len()) ")" }
            @if a.hosts.is_empty() { p.muted { "Not associated with any host." } } @else {
                ul.hosts { @for h in &a.hosts { li { a href=(host_href(h)) { (h) } } } }
            }
        }
        @if v.copies.len() > 1 {
            section.copies {
                h2 { "Also in" }
                ul { @for r in v.copies { @if r.as_str() != a.name {
                    li { a href={ "/ui/artifacts/" (a.id) (query_string(&[("repository", r.to_string())])) } { (r) } }
                } } }
            }
        }
        @if !a.metadata.is_empty() {
            section.metadata { h2 { "Metadata" } pre { code { (metadata) } } }
        }
    };
    layout(page, &format!("{} {}", a.name, a.version), body)
}

/// `GET /ui/hosts/{host_id}`
pub fn host_page(
    page: &Page<'_>,
    host: &HostId,
    fleet: &HostFleet,
    artifacts: &[ArtifactJson],
    next_cursor: Option<&str>,
) -> Markup {
    let base = host_href(host.as_str());
    let body = html! {
        p.crumbs { a href="/ui/" { "Artifacts" } " / hosts" }
        h1 { "Host " code { (host) } }
        @match fleet {
            HostFleet::Registered(facts, deployments) => {
                (host_facts(facts))
                (host_deployments(deployments))
            }
            HostFleet::Unregistered => p.muted { "Not registered (PUT /hosts/" (host) "): no facts or reports." },
            HostFleet::Hidden => {}
        }
        h2 { "Associated artifacts" }
        (artifact_table(artifacts))
        (next_page(&base, &[], next_cursor))
    };
    layout(page, &format!("Host {host}"), body)
}

/// What the host page shows of the fleet's view of a host.
pub enum HostFleet {
    /// Its registered facts and its deployment reports.
    Registered(Box<HostJson>, DeploymentsJson),
    /// Never registered (or deleted): the seed's associations work
    /// without registration.
    Unregistered,
    /// The caller may not read the host.
    Hidden,
}

fn host_facts(h: &HostJson) -> Markup {
    let btf = match h.btf {
        Some(true) => "yes",
        Some(false) => "no",
        None => "unknown",
    };
    html! {
        section.facts {
            h2 { "Facts" }
            table {
                tbody {
                    tr { th { "Architecture" } td { (h.architecture) } }
                    tr { th { "Kernel" } td { code { (h.kernel_release) } } }
                    tr { th { "BTF" } td { (btf) } }
                    tr { th { "Agent" } td { (h.agent_version.as_deref().unwrap_or("—")) } }
                    tr { th { "Labels" } td {
                        @if h.labels.is_empty() { span.muted { "none" } }
                        @for (k, v) in &h.labels { span.tag { (k) "=" (v) } " " }
                    } }
                    tr { th { "Registered" } td { (h.registered_at) } }
                    tr { th { "Last seen" } td { (h.last_seen) } }
                }
            }
        }
    }
}

fn host_deployments(d: &DeploymentsJson) -> Markup {
    html! {
        section.deployments {
            h2 { "Deployments" }
            @if d.deployments.is_empty() { p.muted { "No reports." } } @else {
                table {
                    thead { tr { th { "Artifact" } th { "Version" } th { "State" } th { "Attach point" } th { "Message" } th { "Reported" } } }
                    tbody { @for r in &d.deployments {
                        tr {
                            td { a href=(artifact_href_in(&r.artifact_id, &r.repository)) { (r.name) } }
                            td { (r.version.as_deref().unwrap_or("deleted")) }
                            td { span class={ "state state-" (r.state) } { (r.state) } }
                            td { (r.attach_point.as_deref().unwrap_or("")) }
                            td { (r.message.as_deref().unwrap_or("")) }
                            td { (r.reported_at) }
                        }
                    } }
                }
            }
        }
    }
}

/// A tag and the manifest it names (`None`: untagged meanwhile).
pub struct TagRow {
    pub tag: String,
    pub digest: Option<Digest>,
}

/// What a repository's page shows.
pub struct RepositoryView<'a> {
    pub repo: &'a RepoName,
    pub tags: &'a [TagRow],
    pub next_tag: Option<&'a str>,
    pub artifacts: &'a [ArtifactJson],
    /// The referrers of each artifact, in the same order.
    pub referrers: &'a [Vec<Descriptor>],
    pub next_cursor: Option<&'a str>,
}

/// `GET /ui/repositories/{name}`
pub fn repository_page(page: &Page<'_>, v: &RepositoryView<'_>) -> Markup {
    let base = repository_href(v.repo.as_str());
    let body = html! {
        p.crumbs { a href="/ui/" { "Artifacts" } " / repository" }
        h1 { (v.repo) }
        section.tags {
            h2 { "Tags" }
            @if v.tags.is_empty() { p.muted { "No tags." } } @else {
                table {
                    thead { tr { th { "Tag" } th { "Manifest" } } }
                    tbody { @for t in v.tags {
                        tr { td { span.tag { (t.tag) } } td { @match &t.digest {
                            Some(d) => code title=(d) { (d) },
                            None => span.muted { "untagged" },
                        } } }
                    } }
                }
                @if let Some(last) = v.next_tag {
                    p.paging { a.next href={ (base) (query_string(&[("last", last.to_string())])) } { "More tags →" } }
                }
            }
        }
        section {
            h2 { "Artifacts" }
            (artifact_table(v.artifacts))
            (next_page(&base, &[], v.next_cursor))
        }
        section.referrers {
            h2 { "Referrers" }
            @for (a, refs) in v.artifacts.iter().zip(v.referrers) {
                @if !refs.is_empty() {
                    h3 { a href=(artifact_href(a)) { (a.version) " " (a.architecture) } }
                    table {
                        thead { tr { th { "Artifact type" } th { "Digest" } th { "Host" } } }
                        tbody { @for d in refs {
                            tr {
                                td { (d.artifact_type.as_deref().unwrap_or(&d.media_type)) }
                                td { code title=(d.digest) { (short_digest(&d.digest.to_string())) } }
                                td { @if let Some(h) = d.annotations.as_ref().and_then(|m| m.get(crate::artifacts::index::annotations::HOST_ID)) { (h) } }
                            }
                        } }
                    }
                }
            }
        }
    };
    layout(page, v.repo.as_str(), body)
}

#[cfg(test)]
mod tests {
    use super::shell_word;

    #[test]
    fn a_user_name_is_one_shell_word() {
        assert_eq!(shell_word("alice"), "'alice'");
        assert_eq!(shell_word("o'neil $(x)"), "'o'\\''neil $(x)'");
    }
}
