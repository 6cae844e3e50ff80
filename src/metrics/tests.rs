//! Unit tests of the metric families: names, labels, the text exposition.

use super::*;

/// The value of the sample line starting with `series ` (`None`: absent).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .map(|v| v.parse().unwrap())
}

fn request(status: u16, blob: Option<BlobDirection>) -> RequestRecord {
    RequestRecord {
        method: "GET",
        route: Cow::Borrowed("/v2/{name}/blobs/{digest}"),
        status,
        duration: Duration::from_millis(3),
        request_body_bytes: 10,
        response_body_bytes: 1000,
        blob,
    }
}

#[test]
fn every_metric_of_the_exposition_is_declared_with_its_type() {
    let m = Metrics::new();
    // A labelled family is listed once it has a series.
    m.record_request(request(200, None));
    let _ = m.storage_timer("fs", "size");
    m.signing_attempt("vault", Duration::from_millis(2), true);
    m.declare_auth_failure_reasons(&["denied"]);
    let text = m.encode(StateCounts::default()).unwrap();
    for (name, kind) in [
        ("http_server_request_duration_seconds", "histogram"),
        ("http_server_active_requests", "gauge"),
        ("http_server_request_body_bytes", "histogram"),
        ("http_server_response_body_bytes", "histogram"),
        ("registry_storage_operation_duration_seconds", "histogram"),
        ("registry_blob_bytes_total", "counter"),
        ("registry_upload_sessions", "gauge"),
        ("registry_gc_runs_total", "counter"),
        ("registry_gc_freed_bytes_total", "counter"),
        ("registry_signing_duration_seconds", "histogram"),
        ("registry_signing_failures_total", "counter"),
        ("registry_auth_failures_total", "counter"),
        ("registry_artifacts", "gauge"),
        ("registry_host_associations", "gauge"),
        ("registry_events_pending", "gauge"),
        ("registry_events_delivered_total", "counter"),
        ("registry_events_failed_total", "counter"),
        ("process_cpu_seconds_total", "counter"),
        ("process_resident_memory_bytes", "gauge"),
        ("process_virtual_memory_bytes", "gauge"),
        ("process_open_fds", "gauge"),
        ("process_max_fds", "gauge"),
        ("process_start_time_seconds", "gauge"),
    ] {
        let line = format!("# TYPE {name} {kind}");
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    assert!(!text.contains("# EOF"), "OpenMetrics, not the text format");
}

#[test]
fn a_request_is_recorded_under_its_method_route_and_status() {
    let m = Metrics::new();
    m.record_request(request(200, None));
    m.record_request(request(200, None));
    m.record_request(request(404, None));
    let text = m.encode(StateCounts::default()).unwrap();
    let labels = r#"method="GET",route="/v2/{name}/blobs/{digest}""#;
    let ok = format!("http_server_request_duration_seconds_count{{{labels},status=\"200\"}}");
    let missing = format!("http_server_request_duration_seconds_count{{{labels},status=\"404\"}}");
    assert_eq!(sample(&text, &ok), Some(2.0), "{text}");
    assert_eq!(sample(&text, &missing), Some(1.0));
    let sent = format!("http_server_response_body_bytes_sum{{{labels}}}");
    assert_eq!(sample(&text, &sent), Some(3000.0));
    let read = format!("http_server_request_body_bytes_bucket{{{labels},le=\"64\"}}");
    assert_eq!(sample(&text, &read), Some(3.0), "{text}");
}

#[test]
fn blob_bytes_count_successful_blob_transfers_only() {
    let m = Metrics::new();
    let text = m.encode(StateCounts::default()).unwrap();
    assert_eq!(
        sample(&text, r#"registry_blob_bytes_total{direction="in"}"#),
        Some(0.0)
    );
    assert_eq!(
        sample(&text, r#"registry_blob_bytes_total{direction="out"}"#),
        Some(0.0)
    );
    m.record_request(request(200, Some(BlobDirection::Out)));
    m.record_request(request(206, Some(BlobDirection::Out)));
    m.record_request(request(404, Some(BlobDirection::Out)));
    m.record_request(request(201, Some(BlobDirection::In)));
    m.record_request(request(200, None));
    let text = m.encode(StateCounts::default()).unwrap();
    assert_eq!(
        sample(&text, r#"registry_blob_bytes_total{direction="out"}"#),
        Some(2000.0)
    );
    assert_eq!(
        sample(&text, r#"registry_blob_bytes_total{direction="in"}"#),
        Some(10.0)
    );
}

#[test]
fn gauges_counters_and_histograms_move_with_their_recorders() {
    let m = Metrics::new();
    m.declare_auth_failure_reasons(&["denied", "bad_token"]);
    m.request_started();
    m.request_started();
    m.request_ended();
    m.auth_failure("denied");
    m.gc_run(4096);
    m.gc_run(0);
    m.signing_attempt("key", Duration::from_micros(300), true);
    m.signing_attempt("key", Duration::from_micros(300), false);
    m.storage_timer("fs", "rename").observe(0.002);
    let text = m
        .encode(StateCounts {
            artifacts: 7,
            host_associations: 3,
            upload_sessions: 2,
        })
        .unwrap();
    for (series, want) in [
        ("http_server_active_requests", 1.0),
        (r#"registry_auth_failures_total{reason="denied"}"#, 1.0),
        (r#"registry_auth_failures_total{reason="bad_token"}"#, 0.0),
        ("registry_gc_runs_total", 2.0),
        ("registry_gc_freed_bytes_total", 4096.0),
        (
            r#"registry_signing_duration_seconds_count{signer="key"}"#,
            2.0,
        ),
        ("registry_signing_failures_total", 1.0),
        (
            r#"registry_storage_operation_duration_seconds_count{backend="fs",operation="rename"}"#,
            1.0,
        ),
        ("registry_artifacts", 7.0),
        ("registry_host_associations", 3.0),
        ("registry_upload_sessions", 2.0),
    ] {
        assert_eq!(sample(&text, series), Some(want), "{series} in\n{text}");
    }
}

#[test]
fn process_metrics_are_read_from_proc() {
    let text = Metrics::new().encode(StateCounts::default()).unwrap();
    let rss = sample(&text, "process_resident_memory_bytes").unwrap();
    assert!(rss > 1e6, "{rss}");
    let fds = sample(&text, "process_open_fds").unwrap();
    assert!(fds >= 3.0, "{fds}");
    let start = sample(&text, "process_start_time_seconds").unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(start > 1.6e9 && start <= now + 1.0, "{start} vs {now}");
}

#[test]
fn a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields() {
    // pid (comm) state ppid ... : utime=250 stime=50 starttime=1000
    // vsize=8192000 rss=100
    let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 250 50 0 0 20 0 4 0 1000 8192000 100 18446744073709551615";
    let boot = "cpu 1 2 3\nbtime 1700000000\nprocesses 5\n";
    let s = process::parse_stat(stat, boot, 100.0, 4096).unwrap();
    assert_eq!(s.cpu_seconds, 3.0);
    assert_eq!(s.start_time_seconds, 1_700_000_010.0);
    assert_eq!(s.virtual_bytes, 8_192_000);
    assert_eq!(s.resident_bytes, 409_600);
    assert!(process::parse_stat("garbage", boot, 100.0, 4096).is_none());
    assert!(process::parse_stat(stat, "no boot time", 100.0, 4096).is_none());
}

#[test]
fn unknown_methods_share_one_label() {
    for m in ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"] {
        assert_eq!(method_label(m), m);
    }
    for m in ["PROPFIND", "get", "BREW", ""] {
        assert_eq!(method_label(m), "_OTHER", "{m}");
    }
}

#[test]
fn event_deliveries_are_counted_and_the_pending_gauge_set() {
    let m = Metrics::new();
    m.event_delivered();
    m.event_delivered();
    m.event_failed();
    m.set_events_pending(5);
    let text = m.encode(StateCounts::default()).unwrap();
    assert_eq!(sample(&text, "registry_events_delivered_total"), Some(2.0));
    assert_eq!(sample(&text, "registry_events_failed_total"), Some(1.0));
    assert_eq!(sample(&text, "registry_events_pending"), Some(5.0));
}
