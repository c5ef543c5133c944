//! `knit-loadgen control`: knit-control under endpoint churn (driven by bench/discovery.sh).
//!
//! `manifests` writes a directory of Services and ExternalWorkloads; the script then starts
//! knit-control on it and runs `churn`, which
//! 1. opens one `Destination.Get` stream per watched Service (and some `OutboundPolicies.Watch`
//!    streams) and waits for every first answer;
//! 2. rewrites one manifest file at a time on a fixed schedule, giving some watched workloads new
//!    IPs, and notes when each rewrite became visible;
//! 3. matches every new IP to the moment a watcher saw it in an `add`: that is the update latency
//!    (file write → message received), which includes knit-control's directory polling interval;
//! 4. reads knit-control's memory before the streams, with them, and after the churn, and its CPU
//!    time during the churn, from /proc.
//!
//! It prints one JSON line.

mod fleet;
mod procfs;
mod watch;

use anyhow::Context as _;
use fleet::{Fleet, Plan};
use hdrhistogram::Histogram;
use std::{
    collections::{HashMap, HashSet},
    net::{Ipv4Addr, SocketAddr},
    sync::{atomic::Ordering, Arc},
    time::{Duration, Instant},
};
use tokio::sync::mpsc;
use watch::{Counters, Event, Kind};

#[derive(clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Write the manifest directory (removing *.yaml files already in it).
    Manifests(fleet::Shape),
    /// Watch knit-control's streams while rewriting the manifests; print one JSON line.
    Churn(ChurnArgs),
}

#[derive(clap::Args)]
struct ChurnArgs {
    /// The same shape `manifests` was given: the churn rewrites those files.
    #[command(flatten)]
    shape: fleet::Shape,
    /// knit-control's Destination service.
    #[arg(long)]
    destination_addr: SocketAddr,
    /// knit-control's policy service; without it, no policy streams.
    #[arg(long)]
    policy_addr: Option<SocketAddr>,
    /// knit-control's process id, for its memory and CPU time.
    #[arg(long)]
    pid: u32,
    /// Destination.Get streams, one per watched Service (every services/streams-th Service).
    #[arg(long, default_value_t = 500)]
    streams: usize,
    /// OutboundPolicies.Watch streams, on the first watched Services.
    #[arg(long, default_value_t = 100)]
    policy_streams: usize,
    /// HTTP/2 connections per service the streams are spread over.
    #[arg(long, default_value_t = 5)]
    channels: usize,
    /// Endpoint replacements per second.
    #[arg(long, default_value_t = 100)]
    rate: usize,
    /// File rewrites per second; each carries rate / writes-per-second replacements.
    #[arg(long, default_value_t = 10)]
    writes_per_second: usize,
    #[arg(long, default_value = "60s", value_parser = duration)]
    duration: Duration,
    /// After the last rewrite, how long to wait for the updates it causes.
    #[arg(long, default_value = "3s", value_parser = duration)]
    grace: Duration,
    /// How long knit-control may take to answer every stream for the first time.
    #[arg(long, default_value = "60s", value_parser = duration)]
    startup_timeout: Duration,
}

fn duration(s: &str) -> Result<Duration, String> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = n.parse().map_err(|_| format!("expected a duration like 500ms or 60s, found {s:?}"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        _ => Err(format!("expected a duration like 500ms or 60s, found {s:?}: use ms or s")),
    }
}

pub fn main(args: Args) -> anyhow::Result<()> {
    match args.command {
        Command::Manifests(shape) => Fleet::new(shape)?.write_all(),
        Command::Churn(args) => {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            println!("{}", rt.block_on(churn(args))?);
            Ok(())
        }
    }
}

/// What the watchers have reported so far.
#[derive(Default)]
struct Seen {
    first: HashMap<Ipv4Addr, Instant>,
    destination_ok: usize,
    policy_ok: usize,
    ready_failed: usize,
    ended: usize,
    first_error: Option<String>,
}

impl Seen {
    fn record(&mut self, event: Event) {
        match event {
            Event::Ready(Kind::Destination, Ok(())) => self.destination_ok += 1,
            Event::Ready(Kind::Policy, Ok(())) => self.policy_ok += 1,
            Event::Ready(_, Err(e)) => {
                self.ready_failed += 1;
                self.first_error.get_or_insert(e);
            }
            Event::Added(ip, at) => {
                self.first.entry(ip).or_insert(at);
            }
            Event::Ended(e) => {
                self.ended += 1;
                self.first_error.get_or_insert(e);
            }
        }
    }

    /// Records events until `n` streams have reported ready (or failed), or the deadline.
    async fn until_ready(&mut self, rx: &mut mpsc::UnboundedReceiver<Event>, n: usize, deadline: tokio::time::Instant) {
        while self.destination_ok + self.policy_ok + self.ready_failed < n {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(event)) => self.record(event),
                _ => break,
            }
        }
    }
}

async fn churn(args: ChurnArgs) -> anyhow::Result<String> {
    let started = Instant::now();
    let fleet = Fleet::new(args.shape.clone())?;
    anyhow::ensure!(
        (1..=fleet.shape.services).contains(&args.streams),
        "--streams must be between 1 and --services ({}), found {}",
        fleet.shape.services,
        args.streams
    );
    anyhow::ensure!(args.writes_per_second > 0 && args.rate >= args.writes_per_second, "--rate must be at least --writes-per-second (> 0)");
    let stride = fleet.shape.services / args.streams;
    let watched: Vec<usize> = (0..args.streams).map(|i| i * stride).collect();
    let per_write = args.rate / args.writes_per_second;
    let plan = Plan::new(&fleet, per_write, |s| s % stride == 0 && s / stride < args.streams)?;

    let (tx, mut rx) = mpsc::unbounded_channel();
    let counters = Arc::new(Counters::default());
    let startup_deadline = tokio::time::Instant::now() + args.startup_timeout;
    let dst = watch::channels(args.destination_addr, args.channels.max(1)).await?;
    let mut seen = Seen::default();

    // One stream first: its answer says the manifests are loaded, so "before" is the index's
    // memory without the streams'.
    watch::spawn_destination(dst[0].clone(), fleet.authority(watched[0]), startup_deadline, tx.clone(), counters.clone());
    seen.until_ready(&mut rx, 1, startup_deadline).await;
    anyhow::ensure!(seen.destination_ok == 1, "knit-control did not answer the first stream: {}", seen.first_error.as_deref().unwrap_or("timed out"));
    let first_answer = started.elapsed();
    let before = procfs::memory(args.pid)?;

    let subscribing = Instant::now();
    for (i, &s) in watched.iter().enumerate().skip(1) {
        watch::spawn_destination(dst[i % dst.len()].clone(), fleet.authority(s), startup_deadline, tx.clone(), counters.clone());
    }
    let policy_streams = if let Some(addr) = args.policy_addr {
        let chans = watch::channels(addr, args.channels.max(1)).await?;
        let n = args.policy_streams.min(watched.len());
        for (i, &s) in watched.iter().take(n).enumerate() {
            watch::spawn_policy(chans[i % chans.len()].clone(), fleet.authority(s), startup_deadline, tx.clone(), counters.clone());
        }
        n
    } else {
        0
    };
    drop(tx);
    seen.until_ready(&mut rx, args.streams + policy_streams, startup_deadline).await;
    let subscribe = subscribing.elapsed();
    let with_streams = procfs::memory(args.pid)?;

    let updates_before = counters.updates.load(Ordering::Relaxed);
    let ticks_before = procfs::cpu_ticks(args.pid)?;
    let (writes, churned) = rewrite_while_watching(fleet, plan, &args, &mut rx, &mut seen).await?;
    let ticks = procfs::cpu_ticks(args.pid)? - ticks_before;
    let updates = counters.updates.load(Ordering::Relaxed) - updates_before;
    let after = procfs::memory(args.pid)?;

    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).context("histogram bounds")?;
    let mut delivered = 0u64;
    for (ip, wrote) in &writes {
        if let Some(at) = seen.first.get(ip) {
            hist.saturating_record(at.saturating_duration_since(*wrote).as_micros().max(1) as u64);
            delivered += 1;
        }
    }
    let ms = |q: f64| if delivered == 0 { 0.0 } else { hist.value_at_quantile(q) as f64 / 1000.0 };
    Ok(format!(
        concat!(
            "{{\"services\":{},\"workloads\":{},\"files\":{},\"streams\":{},\"streams_ok\":{},\"policy_streams\":{},\"policy_ok\":{},",
            "\"stream_failures\":{},\"streams_ended\":{},\"first_error\":{},\"first_answer_s\":{:.3},\"subscribe_s\":{:.3},",
            "\"replacements_per_write\":{},\"writes_per_second\":{},\"churn_s\":{:.3},\"replacements\":{},\"delivered\":{},\"missing\":{},",
            "\"update_messages\":{},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},",
            "\"rss_kb_before\":{},\"hwm_kb_before\":{},\"rss_kb_streams\":{},\"hwm_kb_streams\":{},\"rss_kb_after\":{},\"hwm_kb_after\":{},\"cpu_ticks\":{}}}"
        ),
        args.shape.services,
        args.shape.services * args.shape.workloads_per_service,
        args.shape.services.div_ceil(args.shape.services_per_file),
        args.streams,
        seen.destination_ok,
        policy_streams,
        seen.policy_ok,
        seen.ready_failed,
        seen.ended,
        json_string(seen.first_error.as_deref().unwrap_or("")),
        first_answer.as_secs_f64(),
        subscribe.as_secs_f64(),
        per_write,
        args.writes_per_second,
        churned.as_secs_f64(),
        writes.len(),
        delivered,
        writes.len() as u64 - delivered,
        updates,
        ms(0.5),
        ms(0.9),
        ms(0.99),
        if delivered == 0 { 0.0 } else { hist.max() as f64 / 1000.0 },
        before.rss_kb,
        before.hwm_kb,
        with_streams.rss_kb,
        with_streams.hwm_kb,
        after.rss_kb,
        after.hwm_kb,
        ticks,
    ))
}

/// Rewrites the manifests on schedule (on a blocking thread: file I/O) while recording what the
/// watchers see, then waits up to the grace period for the updates still due. Returns every
/// replacement's new IP with its write time, and how long the rewriting took.
async fn rewrite_while_watching(
    mut fleet: Fleet,
    mut plan: Plan,
    args: &ChurnArgs,
    rx: &mut mpsc::UnboundedReceiver<Event>,
    seen: &mut Seen,
) -> anyhow::Result<(Vec<(Ipv4Addr, Instant)>, Duration)> {
    let (wps, total) = (args.writes_per_second, (args.duration.as_secs_f64() * args.writes_per_second as f64) as u64);
    let writer = tokio::task::spawn_blocking(move || -> anyhow::Result<(Vec<(Ipv4Addr, Instant)>, Duration)> {
        let start = Instant::now();
        let mut writes = Vec::new();
        for k in 0..total {
            let at = start + Duration::from_secs_f64(k as f64 / wps as f64);
            std::thread::sleep(at.saturating_duration_since(Instant::now()));
            let (f, changes) = plan.next();
            let ips: Vec<Ipv4Addr> = changes.iter().map(|&(s, w)| fleet.replace(s, w)).collect();
            let wrote = fleet.write(f).with_context(|| format!("rewriting {} in {}", Fleet::file_name(f), fleet.shape.dir.display()))?;
            writes.extend(ips.into_iter().map(|ip| (ip, wrote)));
        }
        Ok((writes, start.elapsed()))
    });
    tokio::pin!(writer);
    let (writes, churned) = loop {
        tokio::select! {
            done = &mut writer => break done.context("the rewriting thread panicked")??,
            Some(event) = rx.recv() => seen.record(event),
        }
    };
    let mut due: HashSet<Ipv4Addr> = writes.iter().map(|w| w.0).filter(|ip| !seen.first.contains_key(ip)).collect();
    let deadline = tokio::time::Instant::now() + args.grace;
    while !due.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(event)) => {
                if let Event::Added(ip, _) = &event {
                    due.remove(ip);
                }
                seen.record(event);
            }
            _ => break,
        }
    }
    Ok((writes, churned))
}

/// A JSON string literal.
fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_escape_quotes_backslashes_and_controls() {
        assert_eq!(json_string(r#"a "b" \c"#), r#""a \"b\" \\c""#);
        assert_eq!(json_string("x\ny"), r#""x\u000ay""#);
    }

    #[test]
    fn durations_take_ms_and_s() {
        assert_eq!(duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(duration("15"), Ok(Duration::from_secs(15)));
        assert!(duration("1h").unwrap_err().contains("use ms or s"));
    }

    #[test]
    fn seen_keeps_the_first_sighting_and_the_first_error() {
        let mut seen = Seen::default();
        let (t0, ip) = (Instant::now(), Ipv4Addr::new(10, 100, 0, 1));
        seen.record(Event::Added(ip, t0));
        seen.record(Event::Added(ip, t0 + Duration::from_secs(1)));
        seen.record(Event::Ready(Kind::Policy, Err("first".into())));
        seen.record(Event::Ready(Kind::Destination, Ok(())));
        seen.record(Event::Ended("second".into()));
        assert_eq!(seen.first[&ip], t0);
        assert_eq!((seen.destination_ok, seen.policy_ok, seen.ready_failed, seen.ended), (1, 0, 1, 1));
        assert_eq!(seen.first_error.as_deref(), Some("first"));
    }
}
