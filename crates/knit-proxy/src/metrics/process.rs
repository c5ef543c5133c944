//! Process metrics read from `/proc/self` at scrape time: nothing is mirrored between scrapes.

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{counter::ConstCounter, gauge::ConstGauge},
};
use std::time::{SystemTime, UNIX_EPOCH};

#[derive(Debug)]
pub struct ProcessCollector {
    start_time: f64,
    /// Clock ticks per second, for the CPU times in /proc/self/stat.
    ticks: f64,
    page_size: f64,
}

impl ProcessCollector {
    #[allow(unsafe_code)] // sysconf: see the SAFETY comment.
    pub fn new() -> Self {
        // SAFETY: sysconf only reads process-wide constants and has no preconditions.
        let (ticks, page) = unsafe { (libc::sysconf(libc::_SC_CLK_TCK), libc::sysconf(libc::_SC_PAGESIZE)) };
        let start_time = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0);
        Self { start_time, ticks: ticks.max(1) as f64, page_size: page.max(1) as f64 }
    }
}

struct Stat {
    cpu_seconds: f64,
    rss_bytes: f64,
    virtual_bytes: f64,
}

fn read_stat(ticks: f64, page_size: f64) -> Option<Stat> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name may hold spaces and parentheses; fields resume after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field numbers (1-based, proc(5)) minus 3: utime=14, stime=15, vsize=23, rss=24.
    let num = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok());
    Some(Stat { cpu_seconds: (num(14)? + num(15)?) / ticks, virtual_bytes: num(23)?, rss_bytes: num(24)? * page_size })
}

fn open_fds() -> Option<i64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as i64)
}

fn max_fds() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn gauge(enc: &mut DescriptorEncoder, name: &str, help: &str, v: f64) -> Result<(), std::fmt::Error> {
    let g = ConstGauge::new(v);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for ProcessCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(s) = read_stat(self.ticks, self.page_size) {
            gauge(&mut enc, "process_resident_memory_bytes", "Resident memory size in bytes", s.rss_bytes)?;
            gauge(&mut enc, "process_virtual_memory_bytes", "Virtual memory size in bytes", s.virtual_bytes)?;
            let c = ConstCounter::new(s.cpu_seconds);
            c.encode(enc.encode_descriptor("process_cpu_seconds", "User and system CPU time, in seconds", None, c.metric_type())?)?;
        }
        if let Some(n) = open_fds() {
            // The read_dir handle itself is one of the descriptors counted.
            gauge(&mut enc, "process_open_fds", "Open file descriptors", (n - 1) as f64)?;
        }
        if let Some(n) = max_fds() {
            gauge(&mut enc, "process_max_fds", "Maximum open file descriptors", n as f64)?;
        }
        gauge(&mut enc, "process_start_time_seconds", "Start time since the Unix epoch, in seconds", self.start_time)
    }
}
