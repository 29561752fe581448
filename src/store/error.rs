//! The store's error type: every way a store call can fail, whichever backend answers.
//!
//! Owns [`StoreError`] and nothing else; the server maps each variant to a status once
//! (`server::error`). Does not own config validation (`config::ConfigError`, wrapped here).

use std::io;
use std::path::PathBuf;

use thiserror::Error;

use super::ConfigError;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("store I/O: {0}")]
    Io(#[from] io::Error),
    #[error("invalid store config: {0}")]
    Config(#[from] ConfigError),
    #[error("vector has dimension {got}, store expects {expected}")]
    Dimension { expected: usize, got: usize },
    #[error("vector is zero or has non-finite values")]
    InvalidVector,
    #[error("id must be non-empty")]
    EmptyId,
    #[error("adapter digest must be non-empty")]
    EmptyDigest,
    #[error("store holds vectors of adapter {store}, got one from {got}")]
    DigestMismatch { store: String, got: String },
    #[error("store data is damaged: {0}")]
    Corrupt(String),
    /// Refused before anything was written: the log could not read the record back as given.
    #[error("the record cannot be stored: {0}")]
    Unstorable(String),
    #[error("an earlier write failed; reopen the store to recover from its log")]
    Poisoned,
    #[error("store directory {0} is open in another process or handle")]
    Locked(PathBuf),
    /// A remote backend could not be reached or did not answer in time; nothing was changed
    /// that was acknowledged. Retry later.
    #[error("the vector store is unavailable: {0}")]
    Unavailable(String),
    /// A remote backend answered and refused the request.
    #[error("the vector store refused the request: {0}")]
    Backend(String),
    /// The generation asked for does not exist in the backend.
    #[error("generation {0} does not exist in the vector store")]
    MissingGeneration(String),
}
