//! The per-directory lock that keeps two processes (or two handles) off one store.
//!
//! Owns the `LOCK` file and how long to wait for it. Does not own what the lock protects (the log
//! and snapshots: `task`, `check`).

use std::fs::{File, TryLockError};
use std::path::Path;
use std::time::Duration;

use super::StoreError;

/// 10 ms apart: 1 s in all.
const LOCK_RETRIES: usize = 100;

/// Takes the directory's lock. Retries for a moment: a handle closed just now can still be held
/// by a child process forked elsewhere in this process that has not reached `exec` yet.
pub fn lock_dir(dir: &Path) -> Result<File, StoreError> {
    let lock = File::create(dir.join("LOCK"))?;
    for _ in 0..LOCK_RETRIES {
        match lock.try_lock() {
            Ok(()) => return Ok(lock),
            Err(TryLockError::WouldBlock) => std::thread::sleep(Duration::from_millis(10)),
            Err(TryLockError::Error(e)) => return Err(e.into()),
        }
    }
    Err(StoreError::Locked(dir.to_path_buf()))
}
