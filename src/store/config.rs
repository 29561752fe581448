//! Tuning knobs of a task store and their validation.
//!
//! Owns `StoreConfig` and the checks that run before a graph is built with it. Does not own any
//! I/O.

use thiserror::Error;

/// The largest `hnsw_m` accepted: far above any useful value for 512-d vectors (16-64), and a
/// bound on the graph's memory per node (2M links at layer 0).
pub const MAX_HNSW_M: usize = 256;

/// Settings for one task's store. `Default` is what the benchmarks in BENCHMARKS.md support.
#[derive(Debug, Clone, PartialEq)]
pub struct StoreConfig {
    /// Below this many live vectors search is exact; at or above it an HNSW graph is built
    /// (in the background) and used once ready.
    pub exact_threshold: usize,
    /// HNSW: neighbours kept per node and layer.
    pub hnsw_m: usize,
    /// HNSW: candidate list size while inserting.
    pub ef_construction: usize,
    /// HNSW: candidate list size while searching (raised to `k` when `k` is larger).
    pub ef_search: usize,
    /// A rebuild (compaction) starts once tombstones exceed this fraction of the slots.
    pub compact_tombstone_fraction: f32,
    /// A snapshot is written after this many log records since the last one (0 = never
    /// automatically; `TaskStore::snapshot` still works).
    pub snapshot_every: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            exact_threshold: 20_000,
            hnsw_m: 16,
            ef_construction: 100,
            ef_search: 64,
            compact_tombstone_fraction: 0.2,
            snapshot_every: 10_000,
        }
    }
}

/// Why a `StoreConfig` was rejected.
#[derive(Debug, Error, PartialEq)]
pub enum ConfigError {
    #[error("hnsw_m must be in 2..={MAX_HNSW_M}, got {0}")]
    HnswM(usize),
    #[error("ef_construction must be at least hnsw_m ({m}), got {ef}")]
    EfConstruction { ef: usize, m: usize },
    #[error("ef_search must be at least 1, got {0}")]
    EfSearch(usize),
    #[error("compact_tombstone_fraction must be in (0, 1], got {0}")]
    TombstoneFraction(f32),
    #[error("exact_threshold must be at least 1, got {0}")]
    ExactThreshold(usize),
}

impl StoreConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(2..=MAX_HNSW_M).contains(&self.hnsw_m) {
            return Err(ConfigError::HnswM(self.hnsw_m));
        }
        if self.ef_construction < self.hnsw_m {
            return Err(ConfigError::EfConstruction {
                ef: self.ef_construction,
                m: self.hnsw_m,
            });
        }
        if self.ef_search == 0 {
            return Err(ConfigError::EfSearch(self.ef_search));
        }
        let f = self.compact_tombstone_fraction;
        if !(f > 0.0 && f <= 1.0) {
            return Err(ConfigError::TombstoneFraction(f));
        }
        if self.exact_threshold == 0 {
            return Err(ConfigError::ExactThreshold(self.exact_threshold));
        }
        Ok(())
    }
}
