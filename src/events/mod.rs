//! Events: CloudEvents 1.0 (structured JSON over HTTP) of the registry's
//! changes, delivered to the webhooks of `BPF_REGISTRY_EVENTS_WEBHOOK`.
//! The events themselves are written by the metadata store's outbox in
//! the transaction of each change (`metadata::outbox`); this module holds
//! their configuration and the deliverer that sends them, at least once,
//! signed with HMAC-SHA256, retried with capped exponential backoff and
//! jitter, and prunes what was delivered.

mod deliver;

use std::time::Duration;

pub use deliver::{backoff, signature, spawn, Deliverers, SIGNATURE_HEADER};

/// The events configuration (present only when webhooks are configured).
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// The webhook URLs (http or https), each delivered every event.
    pub webhooks: Vec<String>,
    /// The HMAC-SHA256 key of the signature header.
    pub secret: crate::signing::Secret,
    /// Longest one delivery attempt may take.
    pub timeout: Duration,
    /// How long delivered rows are kept.
    pub retention: Duration,
    /// An event still undelivered after this long is given up.
    pub max_age: Duration,
}

/// The shortest secret accepted (a guessable key forges signatures).
pub const MIN_SECRET_LEN: usize = 16;

/// Checks one webhook URL: `http://` or `https://`, a host, no user
/// information (the signature authenticates the registry, and a password
/// in the URL would be logged by receivers' proxies), no fragment.
pub fn parse_webhook(url: &str) -> Result<String, String> {
    let parsed = vault_http::Url::parse(url).map_err(|e| format!("{url:?} is not a URL: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!(
            "{url:?}: only http:// and https:// webhooks are supported"
        ));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("{url:?} has no host"));
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{url:?} holds credentials: receivers authenticate events by the signature header"
        ));
    }
    if parsed.fragment().is_some() {
        return Err(format!("{url:?} has a fragment"));
    }
    Ok(parsed.to_string())
}

/// Parses the comma-separated list of `BPF_REGISTRY_EVENTS_WEBHOOK`
/// (each URL once, in order).
pub fn parse_webhooks(list: &str) -> Result<Vec<String>, String> {
    let mut out: Vec<String> = Vec::new();
    for item in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let url = parse_webhook(item)?;
        if !out.contains(&url) {
            out.push(url);
        }
    }
    if out.is_empty() {
        return Err("no webhook URL in the list".to_string());
    }
    Ok(out)
}

/// A URL as logs show it: scheme, host, port and path (never the query,
/// which may hold a receiver's token).
pub fn loggable(url: &str) -> String {
    match vault_http::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default(),
            u.path()
        ),
        Err(_) => "(invalid URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn webhook_lists_accept_http_and_https_only() {
        assert_eq!(
            parse_webhooks(
                " http://127.0.0.1:9/hook , https://events.example/in?t=1,http://127.0.0.1:9/hook"
            )
            .unwrap(),
            vec!["http://127.0.0.1:9/hook", "https://events.example/in?t=1"]
        );
        for bad in [
            "ftp://x/y",
            "file:///etc/passwd",
            "127.0.0.1:9/hook",
            "http://",
            "http://u:p@host/x",
            "http://host/x#frag",
            " , ",
            "gopher://h",
        ] {
            assert!(parse_webhooks(bad).is_err(), "{bad}");
        }
        assert_eq!(
            loggable("https://u.example:8443/in?token=secret"),
            "https://u.example:8443/in"
        );
    }
}
