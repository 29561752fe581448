//! The values the store API takes and returns: records, hits, blob versions, search modes.
//!
//! Owns these plain data types, shared by both backends and by callers. Does not own how they are
//! stored (`wal`, `snapshot`, `milvus`) or searched (`index`).

/// Which version of an id's blobs (original upload, thumbnail) a record owns. A re-upload writes
/// its files under a fresh version, so until its log record is durable the old record still has
/// its own files; the old version is removed once the new record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BlobVersion(pub(super) u64);

impl BlobVersion {
    /// Records without versioned blobs (vectors added without files, and stores written before
    /// versions existed).
    pub const UNVERSIONED: BlobVersion = BlobVersion(0);

    /// A version no other upload will pick (random, so two uploads of one id never share one).
    pub fn fresh() -> BlobVersion {
        BlobVersion(rand::random::<u64>().max(1))
    }

    /// The version as a backend stores it.
    pub(crate) fn raw(self) -> u64 {
        self.0
    }

    pub(crate) fn from_raw(v: u64) -> BlobVersion {
        BlobVersion(v)
    }
}

/// What the store keeps about a live id.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub id: String,
    pub adapter_digest: String,
    /// Milliseconds since the Unix epoch when the vector was added.
    pub added_ms: u64,
    pub blobs: BlobVersion,
    pub meta: serde_json::Value,
}

/// One vector to add, with the blob version its files were put under.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub id: String,
    pub vector: Vec<f32>,
    pub meta: serde_json::Value,
    pub blobs: BlobVersion,
}

/// One search result; `score` is the dot product of unit vectors (cosine similarity).
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub id: String,
    pub score: f32,
    pub meta: serde_json::Value,
}

/// How `search_with` should search.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchMode {
    /// Exact below `exact_threshold` live vectors, HNSW at or above it once the graph is ready.
    Auto,
    /// Always the exact scan.
    Exact,
    /// The HNSW graph with this `ef_search`; exact when no graph is built.
    Graph { ef_search: usize },
}
