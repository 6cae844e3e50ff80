//! The `process_*` metrics of the Prometheus client conventions (CPU
//! seconds, resident and virtual memory, open and maximum file
//! descriptors, start time), read from `/proc/self` at each scrape by a
//! `prometheus-client` collector. Off Linux, or when `/proc` cannot be
//! read, the metrics it cannot read are left out of the scrape.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Unit;

/// The numbers of one reading of `/proc/self`.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(super) struct ProcessStats {
    pub cpu_seconds: f64,
    pub resident_bytes: i64,
    pub virtual_bytes: i64,
    pub start_time_seconds: f64,
}

/// Reads `/proc/self/stat` (and the boot time from `/proc/stat`).
#[derive(Debug)]
pub(super) struct ProcessCollector {
    ticks_per_second: f64,
    page_bytes: i64,
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        // SAFETY: sysconf reads a constant of the system; no memory is
        // handed over.
        let (ticks, page) = unsafe {
            (
                libc::sysconf(libc::_SC_CLK_TCK),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        // `c_long` is `i64` here and `i32` on 32-bit targets.
        #[allow(clippy::useless_conversion)]
        let page_bytes = if page > 0 { i64::from(page) } else { 4096 };
        ProcessCollector {
            ticks_per_second: if ticks > 0 { ticks as f64 } else { 100.0 },
            page_bytes,
        }
    }

    fn stats(&self) -> Option<ProcessStats> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        parse_stat(&stat, &boot, self.ticks_per_second, self.page_bytes)
    }
}

/// The fields of `/proc/self/stat` (see proc(5)) after the command name,
/// which is in parentheses and may itself contain spaces or `)`.
pub(super) fn parse_stat(stat: &str, boot: &str, ticks: f64, page: i64) -> Option<ProcessStats> {
    let after_comm = stat.get(stat.rfind(')')? + 1..)?;
    // Field 3 (state) is index 0 here; utime is field 14, stime 15,
    // starttime 22, vsize 23, rss 24.
    let f: Vec<&str> = after_comm.split_whitespace().collect();
    let num = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok());
    let utime = num(11)?;
    let stime = num(12)?;
    let start_ticks = num(19)?;
    let vsize = num(20)?;
    let rss_pages = num(21)?;
    let btime = boot
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse::<u64>().ok())?;
    Some(ProcessStats {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_bytes: i64::try_from(rss_pages)
            .unwrap_or(i64::MAX)
            .saturating_mul(page),
        virtual_bytes: i64::try_from(vsize).unwrap_or(i64::MAX),
        start_time_seconds: btime as f64 + start_ticks as f64 / ticks,
    })
}

fn open_fds() -> Option<i64> {
    let n = std::fs::read_dir("/proc/self/fd").ok()?.count();
    // The listing's own descriptor was open while it was read.
    Some(i64::try_from(n.saturating_sub(1)).unwrap_or(i64::MAX))
}

fn max_fds() -> Option<i64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we own.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    (rc == 0).then(|| i64::try_from(lim.rlim_cur).unwrap_or(i64::MAX))
}

fn gauge(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    value: i64,
) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(encoder.encode_descriptor(name, help, unit, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(s) = self.stats() {
            let cpu = ConstCounter::new(s.cpu_seconds);
            cpu.encode(encoder.encode_descriptor(
                "process_cpu",
                "Total user and system CPU time spent",
                Some(&Unit::Seconds),
                cpu.metric_type(),
            )?)?;
            gauge(
                &mut encoder,
                "process_resident_memory",
                "Resident memory size",
                Some(&Unit::Bytes),
                s.resident_bytes,
            )?;
            gauge(
                &mut encoder,
                "process_virtual_memory",
                "Virtual memory size",
                Some(&Unit::Bytes),
                s.virtual_bytes,
            )?;
            let start = ConstGauge::new(s.start_time_seconds);
            start.encode(encoder.encode_descriptor(
                "process_start_time",
                "Start time of the process since the Unix epoch",
                Some(&Unit::Seconds),
                start.metric_type(),
            )?)?;
        }
        if let Some(n) = open_fds() {
            gauge(
                &mut encoder,
                "process_open_fds",
                "Open file descriptors",
                None,
                n,
            )?;
        }
        if let Some(n) = max_fds() {
            gauge(
                &mut encoder,
                "process_max_fds",
                "Most file descriptors the process may open (RLIMIT_NOFILE)",
                None,
                n,
            )?;
        }
        Ok(())
    }
}
