//! What a measurement writes down: latency summaries from HdrHistogram, the facts of
//! the machine it ran on (cores, CPU model, load average, since the machine is shared),
//! and the JSON result files that `BENCHMARKS.md` and the plots are made from.

use anyhow::{Context, Result};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// A latency histogram in nanoseconds, from 1 ns to 60 s at three significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000_000, 3)
        .unwrap_or_else(|e| unreachable!("constant bounds are valid: {e}"))
}

/// Records `ns` (clamped into the histogram's range).
pub fn record(h: &mut Histogram<u64>, ns: u64) {
    h.saturating_record(ns.max(1));
}

/// Latency percentiles in microseconds.
#[derive(Clone, Copy, Debug, Default, Serialize)]
pub struct Latency {
    /// Median.
    pub p50_us: f64,
    /// 90th percentile.
    pub p90_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest sample.
    pub max_us: f64,
    /// Mean.
    pub mean_us: f64,
}

impl Latency {
    /// Summarises a nanosecond histogram.
    pub fn of(h: &Histogram<u64>) -> Latency {
        let us = |ns: u64| ns as f64 / 1000.0;
        Latency {
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
            mean_us: h.mean() / 1000.0,
        }
    }
}

impl std::fmt::Display for Latency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "p50 {:.1} µs  p90 {:.1} µs  p99 {:.1} µs  p99.9 {:.1} µs  max {:.1} µs",
            self.p50_us, self.p90_us, self.p99_us, self.p999_us, self.max_us
        )
    }
}

/// The machine a figure was taken on.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    /// Logical CPUs available to this process.
    pub nproc: usize,
    /// `model name` from /proc/cpuinfo.
    pub cpu: String,
    /// /proc/loadavg when read (1, 5, 15 minutes): the machine is shared.
    pub loadavg: String,
    /// Unix seconds.
    pub unix_time: u64,
}

/// Reads the machine facts now.
// Reads the wall clock only to date the result file.
#[allow(clippy::disallowed_methods)]
pub fn machine() -> Machine {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    Machine {
        nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
        cpu,
        loadavg: loadavg(),
        unix_time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// The first three fields of /proc/loadavg.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// CPU time this process has used so far, by thread name (tokio names every worker of a
/// runtime alike, so a name is a pool), and the whole process's under `"total"` (which
/// keeps the time of threads that have exited): clock ticks turned into seconds. On a
/// shared VM the CPU an operation costs is steadier than the throughput it reaches.
pub fn cpu_seconds() -> BTreeMap<String, f64> {
    let tick = 100.0; // USER_HZ: 100 on every Linux this runs on
    let mut out = BTreeMap::new();
    let parse = |stat: &str| -> Option<(String, f64)> {
        // `pid (comm) state ...`: comm may hold spaces, so split at the last ')'.
        let (head, rest) = stat.rsplit_once(')')?;
        let comm = head.split_once('(')?.1.to_string();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After comm: state is field 3, so utime (14) and stime (15) are [11] and [12].
        let ticks = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
        Some((comm, ticks as f64 / tick))
    };
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            if let Some((comm, secs)) = std::fs::read_to_string(t.path().join("stat"))
                .ok()
                .as_deref()
                .and_then(parse)
            {
                *out.entry(comm).or_insert(0.0) += secs;
            }
        }
    }
    if let Some((_, secs)) = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .as_deref()
        .and_then(parse)
    {
        out.insert("total".into(), secs);
    }
    out
}

/// CPU microseconds per operation between two [`cpu_seconds`] readings, by thread name.
pub fn cpu_us_per_op(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    ops: u64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, a)| {
            let used = a - before.get(k).copied().unwrap_or(0.0);
            (k.clone(), used * 1e6 / ops.max(1) as f64)
        })
        .filter(|(_, us)| *us > 0.0)
        .collect()
}

/// Writes `value` as pretty JSON to `path`, creating parent directories.
pub fn write_json(path: &Path, value: &impl Serialize) -> Result<()> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let text = serde_json::to_string_pretty(value)?;
    std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))
}

/// Bytes under `dir`, recursively (apparent file sizes).
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
