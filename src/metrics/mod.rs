//! The registry's metrics, in one place: every metric it exports is
//! declared here (name, type, labels, buckets), and [`Metrics::encode`]
//! writes them all in the Prometheus text format with `prometheus-client`'s
//! encoder (nothing formats the exposition by hand).
//!
//! Instrumented code calls the typed recorders below: the HTTP layer
//! (`http::metrics`), the storage wrapper (`storage::instrumented`), the
//! signing service, the auth refusals and the garbage collector's report.
//! Every label value is a `&'static str` chosen from a fixed list, a status
//! code, or a route template of the router, so no repository name, digest
//! or user name can ever become a series: cardinality is bounded by
//! construction. This module knows nothing of HTTP, storage or the
//! registry; they depend on it.

mod process;

use std::borrow::Cow;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

/// The `Content-Type` of [`Metrics::encode`]'s output.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// Request durations, seconds (the OpenTelemetry HTTP buckets, with finer
/// ones below 5 ms: most registry requests are served from memory).
const HTTP_SECONDS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    60.0,
];
/// One storage call: the filesystem answers in microseconds, an fsync or
/// an object store in milliseconds.
const STORAGE_SECONDS: [f64; 14] = [
    0.00001, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 1.0,
    5.0,
];
/// One signature: a local key in microseconds, Vault in milliseconds.
const SIGNING_SECONDS: [f64; 12] = [
    0.0001, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 5.0,
];

/// Body sizes: 64 B to 4 GiB, ×4 each.
fn body_size_buckets() -> impl Iterator<Item = f64> {
    prometheus_client::metrics::histogram::exponential_buckets(64.0, 4.0, 14)
}

/// The labels of the request duration histogram.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: Cow<'static, str>,
    status: u16,
}

/// The labels of the body size histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: Cow<'static, str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StorageLabels {
    backend: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DirectionLabels {
    direction: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignerLabels {
    signer: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Which way blob bytes went (`registry_blob_bytes_total{direction}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlobDirection {
    /// Uploaded: `POST ?digest=`, `PATCH` and `PUT` of an upload.
    In,
    /// Downloaded: `GET` of a blob.
    Out,
}

/// One finished HTTP request, as the request layer saw it.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// An HTTP method from [`method_label`]'s fixed list.
    pub method: &'static str,
    /// The route template (or `unmatched`).
    pub route: Cow<'static, str>,
    pub status: u16,
    /// From the request's arrival to the end of its response body.
    pub duration: Duration,
    pub request_body_bytes: u64,
    pub response_body_bytes: u64,
    /// Set on the blob routes whose body bytes count as blob bytes.
    pub blob: Option<BlobDirection>,
}

/// Counts read at scrape time from the services (gauges).
#[derive(Debug, Clone, Copy, Default)]
pub struct StateCounts {
    pub artifacts: u64,
    pub host_associations: u64,
    pub upload_sessions: u64,
}

/// The label value of an HTTP method: the methods the registry knows,
/// `_OTHER` for anything else (the OpenTelemetry convention), so a client
/// cannot mint series with made-up methods.
pub fn method_label(method: &str) -> &'static str {
    match method {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        "CONNECT" => "CONNECT",
        "TRACE" => "TRACE",
        _ => "_OTHER",
    }
}

/// Every metric of one server. Shared (`Arc`) by the HTTP layer, the
/// storage wrapper and the services; one per server, so servers in one
/// process (the tests) never mix their numbers.
pub struct Metrics {
    registry: Registry,
    request_duration: HistogramFamily<RequestLabels>,
    active_requests: Gauge,
    request_body: HistogramFamily<RouteLabels>,
    response_body: HistogramFamily<RouteLabels>,
    storage: HistogramFamily<StorageLabels>,
    blob_in: Counter,
    blob_out: Counter,
    upload_sessions: Gauge,
    gc_runs: Counter,
    gc_freed: Counter,
    signing: HistogramFamily<SignerLabels>,
    signing_failures: Counter,
    auth_failures: Family<ReasonLabels, Counter>,
    artifacts: Gauge,
    host_associations: Gauge,
    events_pending: Gauge,
    events_delivered: Counter,
    events_failed: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Registers every metric; the label sets known in advance (blob
    /// directions, auth failure reasons) start at 0 so they are listed
    /// before anything happened.
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let request_duration: HistogramFamily<RequestLabels> =
            Family::new_with_constructor(|| Histogram::new(HTTP_SECONDS));
        registry.register_with_unit(
            "http_server_request_duration",
            "Duration of HTTP requests, from arrival to the end of the response body; route is the route template",
            Unit::Seconds,
            request_duration.clone(),
        );
        let active_requests = Gauge::default();
        registry.register(
            "http_server_active_requests",
            "HTTP requests being served now (until their response body is sent)",
            active_requests.clone(),
        );
        let request_body: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(body_size_buckets()));
        registry.register_with_unit(
            "http_server_request_body",
            "Size of HTTP request bodies as read by the server",
            Unit::Bytes,
            request_body.clone(),
        );
        let response_body: HistogramFamily<RouteLabels> =
            Family::new_with_constructor(|| Histogram::new(body_size_buckets()));
        registry.register_with_unit(
            "http_server_response_body",
            "Size of HTTP response bodies as sent by the server",
            Unit::Bytes,
            response_body.clone(),
        );
        let storage: HistogramFamily<StorageLabels> =
            Family::new_with_constructor(|| Histogram::new(STORAGE_SECONDS));
        registry.register_with_unit(
            "registry_storage_operation_duration",
            "Duration of one call to the storage backend",
            Unit::Seconds,
            storage.clone(),
        );
        let blobs = Family::<DirectionLabels, Counter>::default();
        registry.register(
            "registry_blob_bytes",
            "Blob bytes uploaded (in: /v2 uploads) and downloaded (out: /v2 blob GETs, REST binary downloads) by successful requests",
            blobs.clone(),
        );
        let blob_in = blobs
            .get_or_create(&DirectionLabels { direction: "in" })
            .clone();
        let blob_out = blobs
            .get_or_create(&DirectionLabels { direction: "out" })
            .clone();
        let upload_sessions = Gauge::default();
        registry.register(
            "registry_upload_sessions",
            "Upload sessions open now",
            upload_sessions.clone(),
        );
        let gc_runs = Counter::default();
        registry.register(
            "registry_gc_runs",
            "Online garbage collections completed",
            gc_runs.clone(),
        );
        let gc_freed = Counter::default();
        registry.register(
            "registry_gc_freed_bytes",
            "Bytes of blobs deleted by online garbage collection",
            gc_freed.clone(),
        );
        let signing: HistogramFamily<SignerLabels> =
            Family::new_with_constructor(|| Histogram::new(SIGNING_SECONDS));
        registry.register_with_unit(
            "registry_signing_duration",
            "Duration of one signature by the signer (vault or key)",
            Unit::Seconds,
            signing.clone(),
        );
        let signing_failures = Counter::default();
        registry.register(
            "registry_signing_failures",
            "Signatures the signer refused or could not make (the manifest was not stored)",
            signing_failures.clone(),
        );
        let auth_failures = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "registry_auth_failures",
            "Requests refused by authentication or authorization, by reason",
            auth_failures.clone(),
        );
        let artifacts = Gauge::default();
        registry.register(
            "registry_artifacts",
            "eBPF artifacts in the store (one per repository and manifest)",
            artifacts.clone(),
        );
        let host_associations = Gauge::default();
        registry.register(
            "registry_host_associations",
            "Host associations of artifacts",
            host_associations.clone(),
        );
        let events_pending = Gauge::default();
        registry.register(
            "registry_events_pending",
            "Event deliveries not done yet (every webhook; read from the shared outbox every 5 s)",
            events_pending.clone(),
        );
        let events_delivered = Counter::default();
        registry.register(
            "registry_events_delivered",
            "Event deliveries a webhook accepted (2xx) from this process",
            events_delivered.clone(),
        );
        let events_failed = Counter::default();
        registry.register(
            "registry_events_failed",
            "Event delivery attempts that failed (error, timeout or non-2xx) from this process; each is retried",
            events_failed.clone(),
        );
        registry.register_collector(Box::new(process::ProcessCollector::new()));
        Metrics {
            registry,
            request_duration,
            active_requests,
            request_body,
            response_body,
            storage,
            blob_in,
            blob_out,
            upload_sessions,
            gc_runs,
            gc_freed,
            signing,
            signing_failures,
            auth_failures,
            artifacts,
            host_associations,
            events_pending,
            events_delivered,
            events_failed,
        }
    }

    /// A webhook accepted an event.
    pub fn event_delivered(&self) {
        self.events_delivered.inc();
    }

    /// An event delivery attempt failed (it is retried).
    pub fn event_failed(&self) {
        self.events_failed.inc();
    }

    /// Deliveries pending in the outbox, as last counted.
    pub fn set_events_pending(&self, n: u64) {
        self.events_pending
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Starts each reason's series at 0 (`reasons` is the fixed list of
    /// the auth layer's refusals).
    pub fn declare_auth_failure_reasons(&self, reasons: &[&'static str]) {
        for &reason in reasons {
            let _ = self.auth_failures.get_or_create(&ReasonLabels { reason });
        }
    }

    /// A request arrived; [`Metrics::request_ended`] follows once.
    pub fn request_started(&self) {
        self.active_requests.inc();
    }

    /// A request left (answered or abandoned).
    pub fn request_ended(&self) {
        self.active_requests.dec();
    }

    /// Records a finished request.
    pub fn record_request(&self, r: RequestRecord) {
        let route = RouteLabels {
            method: r.method,
            route: r.route,
        };
        self.request_body
            .get_or_create(&route)
            .observe(r.request_body_bytes as f64);
        self.response_body
            .get_or_create(&route)
            .observe(r.response_body_bytes as f64);
        let labels = RequestLabels {
            method: route.method,
            route: route.route,
            status: r.status,
        };
        self.request_duration
            .get_or_create(&labels)
            .observe(r.duration.as_secs_f64());
        if (200..300).contains(&r.status) {
            match r.blob {
                Some(BlobDirection::In) => {
                    self.blob_in.inc_by(r.request_body_bytes);
                }
                Some(BlobDirection::Out) => {
                    self.blob_out.inc_by(r.response_body_bytes);
                }
                None => {}
            }
        }
    }

    /// The histogram of one storage operation of one backend, resolved once
    /// by the storage wrapper so a call costs no label lookup.
    pub fn storage_timer(&self, backend: &'static str, operation: &'static str) -> Histogram {
        self.storage
            .get_or_create(&StorageLabels { backend, operation })
            .clone()
    }

    /// One signature attempt by `signer` (`vault` or `key`).
    pub fn signing_attempt(&self, signer: &'static str, took: Duration, ok: bool) {
        self.signing
            .get_or_create(&SignerLabels { signer })
            .observe(took.as_secs_f64());
        if !ok {
            self.signing_failures.inc();
        }
    }

    /// A request refused by the auth layer, for `reason` (one of the auth
    /// layer's fixed reasons).
    pub fn auth_failure(&self, reason: &'static str) {
        self.auth_failures
            .get_or_create(&ReasonLabels { reason })
            .inc();
    }

    /// A garbage collection finished, freeing `freed_bytes`.
    pub fn gc_run(&self, freed_bytes: u64) {
        self.gc_runs.inc();
        self.gc_freed.inc_by(freed_bytes);
    }

    /// Every metric in the Prometheus text format (version 0.0.4), with the
    /// gauges read from the services at this scrape set to `state`.
    pub fn encode(&self, state: StateCounts) -> Result<String, std::fmt::Error> {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        self.artifacts.set(gauge(state.artifacts));
        self.host_associations.set(gauge(state.host_associations));
        self.upload_sessions.set(gauge(state.upload_sessions));
        let mut out = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry)?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests;
