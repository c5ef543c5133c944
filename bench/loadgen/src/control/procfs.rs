//! Memory and CPU time of another process, from /proc (Linux only, as the benchmark is).

use anyhow::Context as _;

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Memory {
    /// Resident now.
    pub rss_kb: u64,
    /// The highest resident size since the process started.
    pub hwm_kb: u64,
}

pub fn memory(pid: u32) -> anyhow::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}: is knit-control (--pid) still running?"))?;
    parse_status(&text).with_context(|| format!("{path} has no VmRSS/VmHWM lines"))
}

/// utime + stime, in clock ticks (`getconf CLK_TCK`).
pub fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}: is knit-control (--pid) still running?"))?;
    parse_stat_ticks(&text).with_context(|| format!("{path}: expected utime and stime in fields 14 and 15, found {text:?}"))
}

fn parse_status(text: &str) -> Option<Memory> {
    let kb = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)?.trim().strip_suffix("kB")?.trim().parse().ok());
    Some(Memory { rss_kb: kb("VmRSS:")?, hwm_kb: kb("VmHWM:")? })
}

fn parse_stat_ticks(text: &str) -> Option<u64> {
    // The command name (field 2) is in parentheses and may hold spaces and parentheses itself:
    // fields are counted after the last ')'. Field 3 is then the first.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(14 - 3)?.parse().ok()?;
    let stime: u64 = fields.get(15 - 3)?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_gives_rss_and_peak() {
        let text = "Name:\tknit-control\nVmPeak:\t  900 kB\nVmHWM:\t   5120 kB\nVmRSS:\t    4096 kB\nThreads:\t3\n";
        assert_eq!(parse_status(text), Some(Memory { rss_kb: 4096, hwm_kb: 5120 }));
        assert_eq!(parse_status("Name:\tx\nVmRSS:\t1 kB\n"), None, "without VmHWM");
    }

    #[test]
    fn stat_sums_utime_and_stime_after_an_awkward_name() {
        let text = "4242 (knit (ctl) x) S 1 4242 4242 0 -1 4194560 100 0 0 0 37 5 0 0 20 0 3 0 12345 1000 200\n";
        assert_eq!(parse_stat_ticks(text), Some(42));
        assert_eq!(parse_stat_ticks("4242 (x) S 1 2"), None, "truncated");
    }

    #[test]
    fn this_process_is_readable() {
        let me = std::process::id();
        assert!(memory(me).unwrap().rss_kb > 0);
        assert!(cpu_ticks(me).is_ok());
    }
}
