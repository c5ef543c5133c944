//! Local mode's source: a directory of manifests (`--config-dir`), each `*.yaml`/`*.yml` file a
//! source of the index.
//!
//! The directory is polled (stat only; a file is re-read when its modification time or length
//! changes), which needs no inotify and behaves the same on every filesystem. Each read resets
//! the file's resources in the index: removing a document or the file removes its resources.
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
    /// Modification time and length of each file when last read.
    seen: HashMap<PathBuf, (SystemTime, u64)>,
    /// What each file contributed, to keep it while the file is invalid.
    applied: HashMap<String, Vec<Resource>>,
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
        let mut source = Self { dir: dir.to_path_buf(), index, seen: HashMap::new(), applied: HashMap::new(), files: Default::default(), strict };
        source.scan();
        Ok(source)
    }

    pub fn files(&self) -> Files {
        self.files.clone()
    }

    pub async fn run(mut self, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.scan();
        }
    }

    /// One pass over the directory; returns whether anything was re-read.
    pub fn scan(&mut self) -> bool {
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
            self.files.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
            self.index.reset(&name, Vec::new());
            tracing::info!(file = %name, "manifest file removed; its resources are deleted");
            changed = true;
        }
        for (path, stamp) in files {
            if self.seen.get(&path) == Some(&stamp) {
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

    fn read(&mut self, path: &Path, stamp: (SystemTime, u64)) {
        let name = self.name(path);
        if let Some(error) = oversized(&name, stamp.1) {
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
        let resources::Parsed { mut resources, mut errors, warnings } = resources::parse_file(&name, &text, self.strict);
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

/// The manifest files in `dir` (not hidden, `.yaml` or `.yml`) with their modification time and length.
pub fn manifest_files(dir: &Path) -> std::io::Result<HashMap<PathBuf, (SystemTime, u64)>> {
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
            files.insert(path, (meta.modified().unwrap_or(SystemTime::UNIX_EPOCH), meta.len()));
        }
    }
    Ok(files)
}
