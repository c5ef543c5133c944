//! Local mode's source: a directory of manifests (`--config-dir`), each `*.yaml`/`*.yml` file a
//! source of the index.
//!
//! The directory is watched with inotify: a file closed after writing, renamed in or out,
//! created, deleted or touched (a kubelet volume's `..data` swap included) starts a pass at once.
//! A pass stats the files and re-reads those whose [`Stamp`] changed, and those an event named. Passes
//! also run every poll interval, for what inotify does not report (network filesystems, a
//! writer that keeps its file open, a full event queue, a directory replaced under the watch).
//! Each read resets the file's resources in the index: removing a document or the file removes its resources.
//! A file with an invalid document is different: its valid documents are applied, and nothing it
//! served before is removed until it reads cleanly again, so a half-saved edit or a typo never
//! takes down what proxies are using.

use crate::{
    index::Index,
    resources::{self, Resource},
};
use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

/// The largest manifest file read: 8 MiB holds tens of thousands of resources. Past it the
/// file is refused as invalid (keeping what it served), rather than read into memory.
const MAX_FILE_BYTES: u64 = 8 << 20;

/// Why a manifest file of `len` bytes is refused unread, if it is.
pub fn oversized(name: &str, len: u64) -> Option<String> {
    (len > MAX_FILE_BYTES).then(|| format!("{name}: {len} bytes, more than a manifest file may hold ({MAX_FILE_BYTES}); split it"))
}

pub struct LocalSource {
    dir: PathBuf,
    index: Arc<Index>,
    /// Each file's stamp when last read.
    seen: HashMap<PathBuf, Stamp>,
    /// What each file contributed, to keep it while the file is invalid.
    applied: HashMap<String, Vec<Resource>>,
    /// Each file's documents as last parsed: a rewrite parses only the documents that changed.
    parsed: HashMap<String, resources::DocCache>,
    files: Files,
    /// Unknown fields make a document invalid (`--strict-fields`).
    strict: bool,
}

/// What is known of each manifest file, for the admin server's metrics.
pub type Files = Arc<Mutex<BTreeMap<String, FileStatus>>>;

#[derive(Clone, Debug, Default)]
pub struct FileStatus {
    /// How many times the file was read (a change that reached the index).
    pub reads: u64,
    /// Its invalid documents, as last read.
    pub errors: Vec<String>,
    /// The fields of its valid documents that Knit does not know, as last read.
    pub warnings: Vec<String>,
}

impl LocalSource {
    /// Reads the whole directory once; a directory that cannot be read stops start-up.
    pub fn load(dir: &Path, index: Arc<Index>, strict: bool) -> anyhow::Result<Self> {
        std::fs::read_dir(dir).map_err(|e| anyhow::anyhow!("reading the manifest directory {}: {e}", dir.display()))?;
        let mut source =
            Self { dir: dir.to_path_buf(), index, seen: HashMap::new(), applied: HashMap::new(), parsed: HashMap::new(), files: Default::default(), strict };
        source.scan();
        Ok(source)
    }

    pub fn files(&self) -> Files {
        self.files.clone()
    }

    pub async fn run(mut self, interval: Duration) {
        use futures_util::{FutureExt, StreamExt};
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let watch = |source: &Self, warn: bool| match watch(&source.dir) {
            Ok(stream) => Some(stream),
            Err(e) => {
                if warn {
                    tracing::warn!(dir = %source.dir.display(), error = %e, "cannot watch the manifest directory with inotify; polling it");
                }
                None
            }
        };
        let mut events = watch(&self, true);
        let mut forced = std::collections::HashSet::new();
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if events.is_none() {
                        // Quietly: the reason was logged when the watch was lost.
                        events = watch(&self, false);
                    }
                }
                event = async { events.as_mut()?.next().await }, if events.is_some() => {
                    // One pass for a burst of events (a rename is two, a kubelet swap several).
                    let mut event = event;
                    loop {
                        // A file written in place keeps its inode, and its modification time
                        // may not move (the kernel's clock for it is coarse): re-read it by name.
                        if let Some(Ok(e)) = &event {
                            forced.extend(e.name.iter().cloned());
                        }
                        if let Some(lost) = watch_lost(&event) {
                            tracing::warn!(dir = %self.dir.display(), "{lost}; polling every {interval:?} until it can be watched again");
                            events = None;
                            break;
                        }
                        match events.as_mut().and_then(|stream| stream.next().now_or_never()) {
                            Some(next) => event = next,
                            None => break,
                        }
                    }
                }
            }
            self.scan_forcing(&forced);
            forced.clear();
        }
    }

    /// One pass over the directory; returns whether anything was re-read.
    pub fn scan(&mut self) -> bool {
        self.scan_forcing(&Default::default())
    }

    /// One pass, re-reading the files named in `forced` even when their stamps are unchanged.
    fn scan_forcing(&mut self, forced: &std::collections::HashSet<std::ffi::OsString>) -> bool {
        let files = match manifest_files(&self.dir) {
            Ok(f) => f,
            Err(e) => {
                // Keep serving what was read: the directory may be being replaced.
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot list the manifest directory; keeping the current state");
                return false;
            }
        };
        let mut changed = false;
        let gone: Vec<PathBuf> = self.seen.keys().filter(|p| !files.contains_key(*p)).cloned().collect();
        for path in gone {
            self.seen.remove(&path);
            let name = self.name(&path);
            self.applied.remove(&name);
            self.parsed.remove(&name);
            self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
            self.index.reset(&name, Vec::new());
            tracing::info!(file = %name, "manifest file removed; its resources are deleted");
            changed = true;
        }
        for (path, stamp) in files {
            let named = path.file_name().is_some_and(|n| forced.contains(n));
            if self.seen.get(&path) == Some(&stamp) && !named {
                continue;
            }
            changed = true;
            self.read(&path, stamp);
        }
        changed
    }

    fn name(&self, path: &Path) -> String {
        path.strip_prefix(&self.dir).unwrap_or(path).display().to_string()
    }

    fn read(&mut self, path: &Path, stamp: Stamp) {
        let name = self.name(path);
        if let Some(error) = oversized(&name, stamp.len) {
            // Remembered as seen: it is refused until it changes, and serves what it served.
            self.seen.insert(path.to_path_buf(), stamp);
            tracing::warn!("invalid manifest, skipped: {error}");
            self.files.lock().unwrap_or_else(|p| p.into_inner()).entry(name).or_default().errors = vec![error];
            return;
        }
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) => {
                // Not remembered as seen, so the next pass tries again.
                tracing::warn!(file = %name, error = %e, "cannot read manifest file; keeping what it served");
                return;
            }
        };
        self.seen.insert(path.to_path_buf(), stamp);
        let resources::Parsed { mut resources, mut errors, warnings } =
            resources::parse_file_cached(&name, &text, self.strict, self.parsed.entry(name.clone()).or_default());
        for w in &warnings {
            tracing::warn!("{w}: it has no effect (--strict-fields refuses such documents)");
        }
        // What only the control plane's configuration can tell: an EgressNetwork over the
        // cluster's own networks is refused, like any invalid document.
        let cluster = &self.index.config().cluster_networks;
        resources.retain(|r| match r {
            Resource::EgressNetwork(e) => match e.overlap(cluster) {
                Some(reason) => {
                    errors.push(format!("{name}: EgressNetwork {}/{}: {reason}", e.metadata.namespace, e.metadata.name));
                    false
                }
                None => true,
            },
            _ => true,
        });
        for e in &errors {
            tracing::warn!("invalid manifest, skipped: {e}");
        }
        if !errors.is_empty() {
            // Keep what the file served before that its valid documents do not replace.
            let keys: Vec<_> = resources.iter().map(Resource::key).collect();
            let kept = self.applied.get(&name).into_iter().flatten().filter(|r| !keys.contains(&r.key())).cloned().collect::<Vec<_>>();
            if !kept.is_empty() {
                tracing::warn!(file = %name, kept = kept.len(), "keeping the file's previous resources until it reads cleanly");
            }
            resources.extend(kept);
        }
        tracing::info!(file = %name, resources = resources.len(), invalid = errors.len(), "manifest file read");
        self.applied.insert(name.clone(), resources.clone());
        self.index.reset(&name, resources);
        let mut files = self.files.lock().unwrap_or_else(|p| p.into_inner());
        let status = files.entry(name).or_default();
        status.reads += 1;
        status.errors = errors;
        status.warnings = warnings;
    }
}

type Watch = inotify::EventStream<Vec<u8>>;

/// An inotify watch on `dir`: the events that can change what a pass reads.
fn watch(dir: &Path) -> std::io::Result<Watch> {
    use inotify::{Inotify, WatchMask};
    let mask = WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::ATTRIB
        | WatchMask::DELETE_SELF
        | WatchMask::MOVE_SELF;
    let inotify = Inotify::init()?;
    inotify.watches().add(dir, mask)?;
    inotify.into_event_stream(vec![0u8; 4096])
}

/// Why the watch can no longer be trusted, if it cannot: it failed, ended, or the directory
/// itself was removed or moved (its watch goes with it).
fn watch_lost(event: &Option<std::io::Result<inotify::EventOwned>>) -> Option<String> {
    use inotify::EventMask;
    match event {
        None => Some("the inotify watch ended".into()),
        Some(Err(e)) => Some(format!("the inotify watch failed: {e}")),
        Some(Ok(e)) if e.mask.intersects(EventMask::DELETE_SELF | EventMask::MOVE_SELF | EventMask::IGNORED) => {
            Some("the manifest directory was removed or moved".into())
        }
        Some(Ok(_)) => None,
    }
}

/// What tells a file changed without reading it: its modification time, its length, and its
/// inode (a file renamed over it, or a kubelet volume's new copy, is another inode even when
/// the first two match).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stamp {
    pub modified: SystemTime,
    pub len: u64,
    pub inode: u64,
}

/// The manifest files in `dir` (not hidden, `.yaml` or `.yml`, symlinks followed) with their stamps.
pub fn manifest_files(dir: &Path) -> std::io::Result<HashMap<PathBuf, Stamp>> {
    use std::os::unix::fs::MetadataExt;
    let mut files = HashMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') || !(name.ends_with(".yaml") || name.ends_with(".yml")) {
            continue;
        }
        // A file deleted between listing and stat is simply not there this pass.
        let Ok(meta) = std::fs::metadata(&path) else { continue };
        if meta.is_file() {
            files.insert(path, Stamp { modified: meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), len: meta.len(), inode: meta.ino() });
        }
    }
    Ok(files)
}
