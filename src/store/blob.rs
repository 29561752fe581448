//! Stored files of each video: the original upload and its JPEG thumbnail.
//!
//! Owns their placement under `<task dir>/blobs/`: a file is named by the SHA-256 of its id (so
//! any user string, `../` included, maps to a fixed-length hex name inside the directory) and
//! fanned out by its first two hex digits. Files are fsynced and renamed into place, then the
//! directory is fsynced. Does not own the decision of when a blob may go: `TaskStore` deletes
//! blobs only after the delete record is durable.

use std::collections::HashSet;
use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{sync_dir, StoreError};

/// Which stored file of a video.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BlobKind {
    /// The uploaded bytes, kept so that the task can be re-embedded with a new adapter.
    Original,
    /// A JPEG shown next to search hits.
    Thumbnail,
}

impl BlobKind {
    pub const ALL: [BlobKind; 2] = [BlobKind::Original, BlobKind::Thumbnail];

    fn ext(self) -> &'static str {
        match self {
            BlobKind::Original => "orig",
            BlobKind::Thumbnail => "jpg",
        }
    }
}

fn hash_hex(id: &str) -> String {
    Sha256::digest(id.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub(crate) fn path_for(root: &Path, id: &str, kind: BlobKind) -> PathBuf {
    let h = hash_hex(id);
    root.join(&h[..2]).join(format!("{h}.{}", kind.ext()))
}

/// Moves `src` (a finished temporary file) to the blob's place, durably.
pub(crate) fn put(root: &Path, id: &str, kind: BlobKind, src: &Path) -> Result<(), StoreError> {
    let dst = path_for(root, id, kind);
    let parent = dst.parent().unwrap_or(root);
    fs::create_dir_all(parent)?;
    File::open(src)?.sync_all()?;
    if fs::rename(src, &dst).is_err() {
        // Another filesystem (EXDEV) or similar: copy beside the target, then rename.
        let tmp = dst.with_extension("tmp");
        fs::copy(src, &tmp)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &dst)?;
        fs::remove_file(src)?;
    }
    sync_dir(parent)?;
    Ok(())
}

pub(crate) fn remove(root: &Path, id: &str) -> Result<(), StoreError> {
    for kind in BlobKind::ALL {
        match fs::remove_file(path_for(root, id, kind)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes blobs of ids that are not live: left by a crash between `put_blob` and the add
/// (never acknowledged) or between a durable delete and the blob removal.
pub(crate) fn sweep(root: &Path, live: &HashSet<String>) -> Result<usize, StoreError> {
    if !root.exists() {
        return Ok(0);
    }
    let keep: HashSet<PathBuf> = live
        .iter()
        .flat_map(|id| BlobKind::ALL.map(|k| path_for(root, id, k)))
        .collect();
    let mut removed = 0;
    for dir in fs::read_dir(root)? {
        let dir = dir?.path();
        if !dir.is_dir() {
            continue;
        }
        for f in fs::read_dir(&dir)? {
            let p = f?.path();
            if !keep.contains(&p) {
                fs::remove_file(&p)?;
                removed += 1;
            }
        }
    }
    Ok(removed)
}
