//! The console's shared page frame, the index (repositories, artifacts,
//! search and filters) and the error page, as `maud` templates. Every
//! value is interpolated with `( )`, which escapes it; nothing here is
//! `PreEscaped`.

use axum::http::StatusCode;
use maud::{html, Markup, DOCTYPE};

use super::endpoint::{Filters, MAX_SEARCH_CHARS};
use crate::artifacts::model::KINDS;
use crate::artifacts::ArtifactJson;

/// What every page shows of the request.
pub struct Page<'a> {
    /// The signed-in user (authentication on).
    pub user: Option<&'a str>,
}

/// `?k=v&...`, form-encoded (empty for no pairs).
pub fn query_string(pairs: &[(&str, String)]) -> String {
    match serde_urlencoded::to_string(pairs) {
        Ok(s) if !s.is_empty() => format!("?{s}"),
        _ => String::new(),
    }
}

/// The link to an artifact's page: its id and the copy's repository.
pub fn artifact_href(a: &ArtifactJson) -> String {
    artifact_href_in(&a.id, &a.name)
}

/// The console page of artifact `id` in repository `repo`.
pub fn artifact_href_in(id: &str, repo: &str) -> String {
    format!(
        "/ui/artifacts/{id}{}",
        query_string(&[("repository", repo.to_string())])
    )
}

pub fn repository_href(repo: &str) -> String {
    format!("/ui/repositories/{repo}")
}

pub fn host_href(host: &str) -> String {
    format!("/ui/hosts/{host}")
}

/// The first characters of a digest's hex, for tables.
pub fn short_digest(d: &str) -> &str {
    let hex = d.split_once(':').map(|(_, h)| h).unwrap_or(d);
    hex.get(..12).unwrap_or(hex)
}

pub fn layout(page: &Page<'_>, title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · bpf-registry" }
                link rel="icon" type="image/svg+xml" href="/ui/static/favicon.svg";
                link rel="stylesheet" href="/ui/static/console.css";
                script src="/ui/static/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/ui/" { "bpf-registry" }
                    nav {
                        a href="/ui/" { "Artifacts" }
                        a href="/openapi.json" { "REST API" }
                    }
                    @if let Some(u) = page.user {
                        span.user { "Signed in as " strong { (u) } }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// `1 map`, `2 maps`.
pub fn count(n: usize, noun: &str) -> String {
    if n == 1 {
        format!("1 {noun}")
    } else {
        format!("{n} {noun}s")
    }
}

/// The artifacts table (index, host and repository pages).
pub fn artifact_table(artifacts: &[ArtifactJson]) -> Markup {
    html! {
        @if artifacts.is_empty() {
            p.empty { "No artifacts." }
        } @else {
            table.artifacts {
                thead { tr {
                    th { "Name" } th { "Version" } th { "Type" } th { "Architecture" }
                    th { "Tags" } th { "eBPF" } th { "Signed" } th { "Hosts" } th { "Id" }
                } }
                tbody {
                    @for a in artifacts {
                        tr.artifact data-name=(a.name) {
                            td { a href=(repository_href(&a.name)) { (a.name) } }
                            td { (a.version) }
                            td { span.badge { (a.kind) } }
                            td { (a.architecture) }
                            td.tags { @for t in &a.tags { span.tag { (t) } " " } }
                            td {
                                @match &a.ebpf {
                                    Some(e) => { (count(e.programs.len(), "program")) ", " (count(e.maps.len(), "map")) }
                                    None => { span.muted { "not an eBPF object" } }
                                }
                            }
                            td { @if a.signature.is_some() { span.ok { "signed" } } @else { span.muted { "unsigned" } } }
                            td { (a.hosts.len()) }
                            td { a.id href=(artifact_href(a)) title=(a.id) { code { (short_digest(&a.id)) } } }
                        }
                    }
                }
            }
        }
    }
}

/// The "next page" link of a list, keeping its other parameters.
pub fn next_page(base: &str, pairs: &[(&'static str, String)], cursor: Option<&str>) -> Markup {
    let Some(c) = cursor else {
        return html! {};
    };
    let mut p = pairs.to_vec();
    p.push(("cursor", c.to_string()));
    html! {
        p.paging { a.next href={ (base) (query_string(&p)) } { "Next page →" } }
    }
}

fn filter_form(f: &Filters) -> Markup {
    let text = |v: &Option<String>| v.clone().unwrap_or_default();
    html! {
        form.filters method="get" action="/ui/" {
            label { "Search " input type="search" name="q" value=(text(&f.search))
                placeholder="name contains…" maxlength=(MAX_SEARCH_CHARS); }
            label { "Type "
                select name="type" data-autosubmit {
                    option value="" { "any" }
                    @for k in KINDS {
                        option value=(k) selected[f.kind.as_deref() == Some(k)] { (k) }
                    }
                }
            }
            label { "Architecture " input type="text" name="architecture" value=(text(&f.architecture)) placeholder="x86_64"; }
            label { "Repository " input type="text" name="repository" value=(text(&f.repository)) placeholder="team/name"; }
            label { "Tag " input type="text" name="tag" value=(text(&f.tag)); }
            button type="submit" { "Filter" }
            a.reset href="/ui/" { "Reset" }
        }
    }
}

/// `GET /ui/`
pub fn index_page(
    page: &Page<'_>,
    filters: &Filters,
    repositories: &[String],
    more_repositories: bool,
    artifacts: &[ArtifactJson],
    next_cursor: Option<&str>,
) -> Markup {
    let body = html! {
        h1 { "Artifacts" }
        (filter_form(filters))
        section.repositories {
            h2 { "Repositories" }
            @if repositories.is_empty() {
                p.empty { "No repositories." }
            } @else {
                ul.repos {
                    @for r in repositories {
                        li { a href=(repository_href(r)) { (r) } }
                    }
                    @if more_repositories { li.muted { "…" } }
                }
            }
        }
        section {
            h2 { "Artifacts" }
            (artifact_table(artifacts))
            (next_page("/ui/", &filters.pairs(), next_cursor))
        }
    };
    layout(page, "Artifacts", body)
}

/// The error page: the status, the REST error code and its message.
pub fn error_page(status: StatusCode, code: &str, message: &str, repositories: &[&str]) -> Markup {
    let reason = status.canonical_reason().unwrap_or("Error");
    let body = html! {
        section.error {
            h1 { (status.as_u16()) " " (reason) }
            p { "Error code: " code.error-code { (code) } }
            @if !message.is_empty() { p.message { (message) } }
            @if !repositories.is_empty() {
                p { "It is in these repositories:" }
                ul { @for r in repositories { li { a href=(repository_href(r)) { (r) } } } }
            }
            p { a href="/ui/" { "Back to the artifacts" } }
        }
    };
    layout(&Page { user: None }, reason, body)
}
