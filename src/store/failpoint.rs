//! Test-only fault injection for the store's write path.
//!
//! Owns the failpoints tests set ([`fail_next_deletes`]) and the check the write path makes
//! ([`injected_delete_failure`]), which costs one atomic load while none is set. Does not own
//! what a failed write does: that is the caller's (`task`, `registry::reembed`).

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;

use super::StoreError;

/// Test-only fault injection: directories whose next deletes fail, with how many are left.
/// Checked behind an atomic so that the write path pays nothing while none is set.
static FAIL_DELETES: Mutex<Vec<(PathBuf, u32)>> = Mutex::new(Vec::new());
static ANY_FAILPOINT: AtomicBool = AtomicBool::new(false);

/// Makes the next `n` deletes in the store at `dir` fail with an I/O error before anything is
/// written, so tests can drive the paths that handle a failed delete (a re-embedding's carry-over,
/// say). Not for production use.
#[doc(hidden)]
pub fn fail_next_deletes(dir: &Path, n: u32) {
    let mut f = FAIL_DELETES.lock();
    f.retain(|(d, _)| d != dir);
    f.push((dir.to_path_buf(), n));
    ANY_FAILPOINT.store(true, Ordering::Release);
}

pub(super) fn injected_delete_failure(dir: &Path) -> Result<(), StoreError> {
    if !ANY_FAILPOINT.load(Ordering::Acquire) {
        return Ok(());
    }
    let mut f = FAIL_DELETES.lock();
    match f.iter_mut().find(|(d, n)| d == dir && *n > 0) {
        Some((_, n)) => {
            *n -= 1;
            Err(StoreError::Io(io::Error::other("injected delete failure")))
        }
        None => Ok(()),
    }
}
