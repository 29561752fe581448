//! The store interface the registry and server use, whichever backend holds the vectors.
//!
//! Owns two traits: [`VectorStore`], one task generation's vectors, metadata and blobs (add,
//! delete, get, search, count, the blob files of each record), and [`StoreBackend`], what a
//! deployment's backend does with generations (open or create one, which one is served, discard
//! one that is not). Two backends implement them: `embedded` (this crate's WAL + HNSW store in
//! the data directory; [`EmbeddedBackend`] here) and `milvus` (a Milvus collection per
//! generation and an alias per task; `store::milvus`). Both keep the same promises: a write
//! returns only once it is durable and visible to every later read, a generation holds vectors
//! of one adapter digest, and the blobs of a record are put before the record that owns them.
//!
//! The interface is synchronous: callers are on blocking threads (the server wraps every store
//! call in `spawn_blocking`), and the embedded store's fsync is blocking anyway.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::{
    BlobKind, BlobVersion, Filter, Hit, NewRecord, Record, SearchMode, StoreConfig, StoreError,
    TaskStore,
};

/// One task generation's vectors and the files of its videos.
pub trait VectorStore: Send + Sync {
    fn dim(&self) -> usize;
    /// Adds or replaces every record, all or none, each vector L2-normalised. Returns only once
    /// the records are durable and every later `get`, `search` or `count` sees them.
    fn add_records(&self, digest: &str, records: Vec<NewRecord>) -> Result<(), StoreError>;
    /// Adds or replaces one record without blobs.
    fn add(
        &self,
        id: &str,
        vector: &[f32],
        digest: &str,
        meta: serde_json::Value,
    ) -> Result<(), StoreError> {
        let record = NewRecord {
            id: id.to_string(),
            vector: vector.to_vec(),
            meta,
            blobs: BlobVersion::UNVERSIONED,
        };
        self.add_records(digest, vec![record])
    }
    /// Deletes `id`; `Ok(false)` when it was not there. Durable and visible on return.
    fn delete(&self, id: &str) -> Result<bool, StoreError>;
    fn get(&self, id: &str) -> Result<Option<Record>, StoreError>;
    /// The `k` best hits for `query` (normalised here), best first; scores are cosine
    /// similarities. With a `filter`, only records whose meta passes it, and still `k` hits
    /// whenever `k` of them exist.
    fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Hit>, StoreError>;
    fn count(&self) -> Result<usize, StoreError>;
    /// How many videos: the records less the segments `i >= 1` of videos indexed as segments
    /// ([`super::moments`]), whose keys hold [`super::moments::SEP`].
    fn count_videos(&self) -> Result<usize, StoreError>;
    /// Every live id, in no particular order.
    fn ids(&self) -> Result<Vec<String>, StoreError>;
    /// The adapter digest the generation's vectors were made with; `None` while that is not
    /// fixed yet (an empty embedded store).
    fn digest(&self) -> Result<Option<String>, StoreError>;
    /// Moves a finished temporary file into place as `id`'s blob of `kind` under `version`,
    /// durably. Call before adding the record that owns `version`.
    ///
    /// The store owns the file's durability: on `Ok` the file has been fsynced, renamed into
    /// place and its directory fsynced (`store::durable::move_file`), so callers write
    /// `src_tmp_file` without fsyncing it themselves. A file on another file system is copied
    /// beside the target (then fsynced, renamed) and removed.
    fn put_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src_tmp_file: &Path,
    ) -> Result<(), StoreError>;
    /// Copies `src` (left as it is) into place as `id`'s blob of `kind` under `version`, with the
    /// same guarantees as [`VectorStore::put_blob`] (`store::durable::copy_file`).
    fn copy_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src: &Path,
    ) -> Result<(), StoreError>;
    /// Copies the blobs of `id`'s live record in `from` (another generation) as `id`'s blobs
    /// under `version` here, durably; kinds `from` does not hold are skipped. Call before adding
    /// the record that owns `version`.
    fn copy_blobs_from(
        &self,
        from: &dyn VectorStore,
        id: &str,
        version: BlobVersion,
    ) -> Result<(), StoreError> {
        for kind in BlobKind::ALL {
            if let Some(src) = from.blob_path(id, kind)? {
                self.copy_blob(id, version, kind, &src)?;
            }
        }
        Ok(())
    }
    /// Removes blobs put under `version` for a record that was never added.
    fn discard_blobs(&self, id: &str, version: BlobVersion) -> Result<(), StoreError>;
    /// The path of the live record's blob of `kind`, when both exist.
    fn blob_path(&self, id: &str, kind: BlobKind) -> Result<Option<PathBuf>, StoreError>;
    /// Marks the generation as replaced: its data goes once nothing reads it any more.
    fn retire(&self);
    /// Whether the store can answer now (a remote backend may be unreachable).
    fn check_available(&self) -> Result<(), StoreError> {
        Ok(())
    }
    /// Waits until background indexing has caught up with every write (graph builds, sealed
    /// and indexed segments), so that benchmarks measure the steady state. Never needed for
    /// correctness: unindexed vectors are searched exactly.
    fn settle(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// What a deployment's backend does with task generations. Generation directories
/// (`<root>/tasks/<task>/gen-<n>/`, holding blobs and the adapter copy) are laid out by the
/// registry; the backend holds the vectors and records which generation is served.
pub trait StoreBackend: Send + Sync {
    /// `embedded` or `milvus`, for logs and `/tasks`.
    fn kind(&self) -> &'static str;
    /// Opens generation `number` of `task` whose files live in `dir`. `digest`: the adapter the
    /// caller will add vectors of (a new generation is created for it); `None` opens an
    /// existing generation as it is (to read it).
    fn open(
        &self,
        task: &str,
        number: u64,
        dir: &Path,
        digest: Option<&str>,
    ) -> Result<Arc<dyn VectorStore>, StoreError>;
    /// The generation of `task` being served, if any.
    fn served(&self, task: &str) -> Result<Option<u64>, StoreError>;
    /// Makes `number` the generation of `task` being served, durably, in one step.
    fn serve(&self, task: &str, number: u64) -> Result<(), StoreError>;
    /// Removes the vectors of generation `number` of `task`, which is not served. The registry
    /// removes its directory.
    fn discard(&self, task: &str, number: u64) -> Result<(), StoreError>;
    /// Generations of `task` the backend holds vectors of (beside their directories).
    fn generations(&self, task: &str) -> Result<Vec<u64>, StoreError>;
    /// Tasks that have a served generation.
    fn tasks(&self) -> Result<Vec<String>, StoreError>;
    /// Whether the backend answers now.
    fn check_available(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

impl VectorStore for TaskStore {
    fn dim(&self) -> usize {
        TaskStore::dim(self)
    }
    fn add_records(&self, digest: &str, records: Vec<NewRecord>) -> Result<(), StoreError> {
        TaskStore::add_records(self, digest, records)
    }
    fn delete(&self, id: &str) -> Result<bool, StoreError> {
        TaskStore::delete(self, id)
    }
    fn get(&self, id: &str) -> Result<Option<Record>, StoreError> {
        Ok(TaskStore::get(self, id))
    }
    fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: Option<&Filter>,
    ) -> Result<Vec<Hit>, StoreError> {
        TaskStore::search_filtered(self, query, k, SearchMode::Auto, filter)
    }
    fn count(&self) -> Result<usize, StoreError> {
        Ok(self.len())
    }
    fn count_videos(&self) -> Result<usize, StoreError> {
        Ok(self.count_ids(|id| !super::moments::is_segment_key(id)))
    }
    fn ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(TaskStore::ids(self))
    }
    fn digest(&self) -> Result<Option<String>, StoreError> {
        Ok(TaskStore::digest(self))
    }
    fn put_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src_tmp_file: &Path,
    ) -> Result<(), StoreError> {
        TaskStore::put_blob(self, id, version, kind, src_tmp_file)
    }
    fn copy_blob(
        &self,
        id: &str,
        version: BlobVersion,
        kind: BlobKind,
        src: &Path,
    ) -> Result<(), StoreError> {
        TaskStore::copy_blob(self, id, version, kind, src)
    }
    fn discard_blobs(&self, id: &str, version: BlobVersion) -> Result<(), StoreError> {
        TaskStore::discard_blobs(self, id, version)
    }
    fn blob_path(&self, id: &str, kind: BlobKind) -> Result<Option<PathBuf>, StoreError> {
        Ok(TaskStore::blob_path(self, id, kind))
    }
    fn retire(&self) {
        self.remove_when_closed()
    }
    fn settle(&self) -> Result<(), StoreError> {
        self.wait_for_maintenance();
        Ok(())
    }
}

/// The default backend: a [`TaskStore`] in each generation's directory, and the served
/// generation recorded in `<root>/tasks/<task>/CURRENT` (written beside, fsynced, renamed).
pub struct EmbeddedBackend {
    root: PathBuf,
    dim: usize,
    config: StoreConfig,
}

impl EmbeddedBackend {
    pub fn new(root: &Path, dim: usize, config: StoreConfig) -> EmbeddedBackend {
        EmbeddedBackend {
            root: root.to_path_buf(),
            dim,
            config,
        }
    }

    fn task_dir(&self, task: &str) -> PathBuf {
        self.root.join("tasks").join(task)
    }
}

impl StoreBackend for EmbeddedBackend {
    fn kind(&self) -> &'static str {
        "embedded"
    }

    fn open(
        &self,
        _task: &str,
        _number: u64,
        dir: &Path,
        _digest: Option<&str>,
    ) -> Result<Arc<dyn VectorStore>, StoreError> {
        Ok(Arc::new(TaskStore::open(
            dir,
            self.dim,
            self.config.clone(),
        )?))
    }

    fn served(&self, task: &str) -> Result<Option<u64>, StoreError> {
        let path = self.task_dir(task).join("CURRENT");
        match std::fs::read_to_string(&path) {
            Ok(s) => Ok(s.trim().strip_prefix("gen-").and_then(|n| n.parse().ok())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            // The path says which file (the server shows it relative to its data dir).
            Err(e) => Err(std::io::Error::new(e.kind(), format!("{}: {e}", path.display())).into()),
        }
    }

    fn serve(&self, task: &str, number: u64) -> Result<(), StoreError> {
        let dir = self.task_dir(task);
        std::fs::create_dir_all(&dir)?;
        super::durable::write_file(&dir.join("CURRENT"), format!("gen-{number}\n").as_bytes())?;
        Ok(())
    }

    fn discard(&self, _task: &str, _number: u64) -> Result<(), StoreError> {
        // The vectors live in the generation's directory, which the registry removes.
        Ok(())
    }

    fn generations(&self, _task: &str) -> Result<Vec<u64>, StoreError> {
        Ok(Vec::new())
    }

    fn tasks(&self) -> Result<Vec<String>, StoreError> {
        let Ok(entries) = std::fs::read_dir(self.root.join("tasks")) else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for e in entries.flatten() {
            if let Some(name) = e.file_name().to_str() {
                if self.served(name)?.is_some() {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }
}
