//! The churn benchmark's data: a fleet of Services, each selecting its own ExternalWorkloads,
//! rendered as the Kubernetes-shaped manifests `knit-control --config-dir` reads, and the plan
//! of which workloads change IP in each rewrite.
//!
//! Everything here is deterministic from the [`Shape`], so `control manifests` (which writes the
//! directory before knit-control starts) and `control churn` (which rewrites it later) agree on
//! the files' contents without sharing anything but their flags.

use std::{
    fmt::Write as _,
    io,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    time::Instant,
};

pub const NAMESPACE: &str = "bench";

#[derive(clap::Args, Clone, Debug)]
pub struct Shape {
    /// The manifest directory (knit-control's `--config-dir`).
    #[arg(long)]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 1000)]
    pub services: usize,
    /// ExternalWorkloads selected by each Service.
    #[arg(long, default_value_t = 10)]
    pub workloads_per_service: usize,
    /// Services per manifest file (each with its workloads): a rewrite re-parses one file.
    #[arg(long, default_value_t = 100)]
    pub services_per_file: usize,
    /// The Services' port; the workloads' port named `http` has the same number.
    #[arg(long, default_value_t = 8080)]
    pub port: u16,
}

/// Every workload's current IP. Initial IPs are 10.1.0.0 upwards and replacements 10.100.0.0
/// upwards, so a replacement's IP is never one a watcher has already seen.
pub struct Fleet {
    pub shape: Shape,
    ips: Vec<Ipv4Addr>,
    replaced: u32,
}

const INITIAL_BASE: u32 = u32::from_be_bytes([10, 1, 0, 0]);
const REPLACEMENT_BASE: u32 = u32::from_be_bytes([10, 100, 0, 0]);

impl Fleet {
    pub fn new(shape: Shape) -> anyhow::Result<Self> {
        anyhow::ensure!(shape.services > 0 && shape.workloads_per_service > 0, "--services and --workloads-per-service must be positive");
        anyhow::ensure!(shape.services_per_file > 0, "--services-per-file must be positive");
        let n = shape.services * shape.workloads_per_service;
        anyhow::ensure!(n < (REPLACEMENT_BASE - INITIAL_BASE) as usize, "{n} workloads do not fit in 10.1.0.0-10.99.255.255: use fewer");
        let ips = (0..n as u32).map(|i| Ipv4Addr::from(INITIAL_BASE + i)).collect();
        Ok(Self { shape, ips, replaced: 0 })
    }

    pub fn files(&self) -> usize {
        self.shape.services.div_ceil(self.shape.services_per_file)
    }

    pub fn file_name(f: usize) -> String {
        format!("services-{f:03}.yaml")
    }

    /// The services written to file `f`.
    pub fn services_in(&self, f: usize) -> std::ops::Range<usize> {
        let per = self.shape.services_per_file;
        f * per..((f + 1) * per).min(self.shape.services)
    }

    /// The name the Destination API resolves (LINKERD-WIRE.md §3.1).
    pub fn authority(&self, service: usize) -> String {
        format!("svc-{service}.{NAMESPACE}.svc.cluster.local:{}", self.shape.port)
    }

    pub fn ip(&self, service: usize, workload: usize) -> Ipv4Addr {
        self.ips[service * self.shape.workloads_per_service + workload]
    }

    /// Gives a workload a new IP, never used before, and returns it.
    pub fn replace(&mut self, service: usize, workload: usize) -> Ipv4Addr {
        let ip = Ipv4Addr::from(REPLACEMENT_BASE + self.replaced);
        self.replaced += 1;
        self.ips[service * self.shape.workloads_per_service + workload] = ip;
        ip
    }

    pub fn render(&self, f: usize) -> String {
        let mut out = String::new();
        for s in self.services_in(f) {
            self.render_service(&mut out, s);
        }
        out
    }

    fn render_service(&self, out: &mut String, s: usize) {
        let port = self.shape.port;
        // Writing to a String cannot fail.
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{s}\n  namespace: {NAMESPACE}\nspec:\n  selector:\n    app: svc-{s}\n  ports:\n  - name: http\n    port: {port}\n    targetPort: http\n"
        );
        for w in 0..self.shape.workloads_per_service {
            let _ = write!(
                out,
                "---\napiVersion: workload.linkerd.io/v1beta1\nkind: ExternalWorkload\nmetadata:\n  name: svc-{s}-{w}\n  namespace: {NAMESPACE}\n  labels:\n    app: svc-{s}\n\
                 spec:\n  meshTLS:\n    identity: svc-{s}.{NAMESPACE}.serviceaccount.identity.knit.cluster.local\n    serverName: svc-{s}.{NAMESPACE}.serviceaccount.identity.knit.cluster.local\n\
                 \x20 workloadIPs:\n  - ip: {}\n  ports:\n  - name: http\n    port: {port}\n",
                self.ip(s, w)
            );
        }
    }

    /// Replaces the file atomically (write aside, then rename), so the directory poller never
    /// reads half a file. The temporary name does not end in .yaml, so it is never a source.
    /// Returns the time just before the rename: the moment the change becomes visible, or a hair
    /// earlier, so a latency measured from it is never negative.
    pub fn write(&self, f: usize) -> io::Result<Instant> {
        let path = self.shape.dir.join(Self::file_name(f));
        let tmp = self.shape.dir.join(format!(".{}.tmp", Self::file_name(f)));
        std::fs::write(&tmp, self.render(f))?;
        let at = Instant::now();
        std::fs::rename(&tmp, &path)?;
        Ok(at)
    }

    /// Writes every file, after removing manifests a previous run left.
    pub fn write_all(&self) -> anyhow::Result<()> {
        let dir = &self.shape.dir;
        std::fs::create_dir_all(dir).map_err(|e| anyhow::anyhow!("creating {}: {e}", dir.display()))?;
        remove_manifests(dir)?;
        for f in 0..self.files() {
            self.write(f).map_err(|e| anyhow::anyhow!("writing {} in {}: {e}", Self::file_name(f), dir.display()))?;
        }
        Ok(())
    }
}

fn remove_manifests(dir: &Path) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "yaml" || e == "yml") {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Which workloads change in each rewrite: files in turn, and in each file the watched services
/// in turn, so every rewrite changes `per_write` distinct watched services' workloads.
pub struct Plan {
    /// The watched services of each file.
    watched: Vec<Vec<usize>>,
    cursor: Vec<usize>,
    next_file: usize,
    per_write: usize,
    workloads: usize,
}

/// One replacement: the workload `(service, workload)` changes IP.
pub type Change = (usize, usize);

impl Plan {
    /// `is_watched(service)` says which services have a watcher: changes to others would be
    /// delivered to no one.
    pub fn new(fleet: &Fleet, per_write: usize, is_watched: impl Fn(usize) -> bool) -> anyhow::Result<Self> {
        let watched: Vec<Vec<usize>> = (0..fleet.files()).map(|f| fleet.services_in(f).filter(|s| is_watched(*s)).collect()).collect();
        let fewest = watched.iter().map(Vec::len).min().unwrap_or(0);
        anyhow::ensure!(fewest > 0, "every manifest file needs a watched service; found a file with none: watch more streams or put more services in a file");
        anyhow::ensure!(
            per_write <= fewest,
            "{per_write} replacements per rewrite but a file has only {fewest} watched services: lower the rate or raise --writes-per-second"
        );
        Ok(Self { cursor: vec![0; watched.len()], watched, next_file: 0, per_write, workloads: fleet.shape.workloads_per_service })
    }

    /// The file to rewrite next and the workloads that change in it.
    pub fn next(&mut self) -> (usize, Vec<Change>) {
        let f = self.next_file;
        self.next_file = (f + 1) % self.watched.len();
        let services = &self.watched[f];
        let start = self.cursor[f];
        self.cursor[f] += self.per_write;
        let changes = (start..start + self.per_write).map(|i| (services[i % services.len()], (i / services.len()) % self.workloads)).collect();
        (f, changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shape(services: usize, per_file: usize) -> Shape {
        Shape { dir: PathBuf::from("/nonexistent"), services, workloads_per_service: 3, services_per_file: per_file, port: 8080 }
    }

    #[test]
    fn files_cover_every_service_once() {
        let fleet = Fleet::new(shape(25, 10)).unwrap();
        assert_eq!(fleet.files(), 3);
        let all: Vec<usize> = (0..3).flat_map(|f| fleet.services_in(f)).collect();
        assert_eq!(all, (0..25).collect::<Vec<_>>());
    }

    #[test]
    fn rendering_names_selects_and_addresses_each_workload() {
        let fleet = Fleet::new(shape(2, 2)).unwrap();
        let yaml = fleet.render(0);
        assert_eq!(yaml.matches("kind: Service\n").count(), 2);
        assert_eq!(yaml.matches("kind: ExternalWorkload\n").count(), 6);
        assert!(yaml.contains("  name: svc-1-2\n  namespace: bench\n  labels:\n    app: svc-1\n"), "{yaml}");
        assert!(yaml.contains("  workloadIPs:\n  - ip: 10.1.0.5\n"), "the last workload is 10.1.0.5:\n{yaml}");
        assert!(yaml.contains("    targetPort: http\n"));
        assert_eq!(fleet.authority(1), "svc-1.bench.svc.cluster.local:8080");
    }

    #[test]
    fn replacements_get_fresh_ips_that_rendering_shows() {
        let mut fleet = Fleet::new(shape(2, 2)).unwrap();
        let a = fleet.replace(1, 0);
        let b = fleet.replace(1, 0);
        assert_eq!((a, b), (Ipv4Addr::new(10, 100, 0, 0), Ipv4Addr::new(10, 100, 0, 1)));
        assert_eq!(fleet.ip(1, 0), b);
        assert!(fleet.render(0).contains("- ip: 10.100.0.1\n"));
        assert!(!fleet.render(0).contains("- ip: 10.100.0.0\n"));
    }

    #[test]
    fn plan_rotates_files_and_changes_distinct_watched_services() {
        let fleet = Fleet::new(shape(40, 10)).unwrap();
        let mut plan = Plan::new(&fleet, 3, |s| s % 2 == 0).unwrap();
        let writes: Vec<_> = (0..8).map(|_| plan.next()).collect();
        assert_eq!(writes.iter().map(|w| w.0).collect::<Vec<_>>(), [0, 1, 2, 3, 0, 1, 2, 3]);
        for (f, changes) in &writes {
            let mut services: Vec<usize> = changes.iter().map(|c| c.0).collect();
            services.dedup();
            assert_eq!(services.len(), 3, "distinct services in one rewrite: {changes:?}");
            assert!(changes.iter().all(|(s, _)| s % 2 == 0 && fleet.services_in(*f).contains(s)), "{changes:?}");
        }
        // File 0 has 5 watched services (0, 2, 4, 6, 8); its second rewrite wraps to workload 1.
        assert_eq!(writes[4].1, [(6, 0), (8, 0), (0, 1)]);
    }

    #[test]
    fn plan_refuses_more_changes_per_rewrite_than_watched_services() {
        let fleet = Fleet::new(shape(20, 10)).unwrap();
        let err = Plan::new(&fleet, 6, |s| s % 2 == 0).err().unwrap().to_string();
        assert!(err.contains("only 5 watched services"), "{err}");
        assert!(Plan::new(&fleet, 1, |s| s >= 10).is_err(), "file 0 has no watched service");
    }
}
