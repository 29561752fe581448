//! The per-task vector store: durable ids, vectors, metadata and blobs, and search over them.
//!
//! Owns one directory per task: the write-ahead log (`wal`, the source of truth), snapshots
//! derived from it (`snapshot`), the in-memory index with exact and HNSW search (`index`) and
//! the video files (`blob`). Modelled on Qdrant: every change is logged and fsynced before it is
//! acknowledged; snapshots are written beside and renamed into place; opening loads the newest
//! intact snapshot and replays the log after it. One store holds vectors of one adapter digest.
//! Does not own embedding, adapters, or which tasks exist (`encode`, `registry`).
//!
//! Concurrency: any number of searches run in parallel with one writer. Slow work (building the
//! HNSW graph, compaction, snapshots) runs on background threads and never blocks searches;
//! until a graph is ready, search falls back to the exact scan.
//!
//! Files, split by concern as Qdrant splits a segment: `task` (the `TaskStore` API and the state
//! behind it), `maintenance` (background threads, snapshots), `rebuild` (tombstone compaction and
//! the HNSW build), `payload` (the metadata index that filters use), `types` and `error` (the
//! values the API takes and returns), `lock` (the directory lock), `failpoint` (test fault
//! injection), `durable` (the one fsync-and-rename sequence); the formats and structures under
//! them (`wal`, `snapshot`, `index`, `graph`, `blob`, `codec`); `check` (offline check and repair);
//! `backend` (the interface both backends implement) and `milvus`.

mod backend;
mod blob;
mod check;
mod codec;
mod config;
pub mod durable;
mod error;
mod f16dot;
mod failpoint;
mod filter;
mod graph;
mod index;
mod lock;
mod maintenance;
pub mod milvus;
pub mod moments;
mod payload;
mod rebuild;
mod snapshot;
mod task;
mod types;
mod wal;

pub use backend::{EmbeddedBackend, StoreBackend, VectorStore};
pub use blob::BlobKind;
pub use check::{check, repair, CheckReport, RepairReport};
pub use config::{ConfigError, StoreConfig, MAX_HNSW_M};
pub use error::StoreError;
pub use failpoint::fail_next_deletes;
pub use filter::{Filter, FilterError};
pub use index::dot;
pub use lock::lock_dir;
pub use task::TaskStore;
pub use types::{BlobVersion, Hit, NewRecord, Record, SearchMode};
