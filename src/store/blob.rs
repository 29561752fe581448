//! Stored files of each video: the original upload and its JPEG thumbnail.
//!
//! Owns their placement under `<task dir>/blobs/`: a file is named by the SHA-256 of its id (so
//! any user string, `../` included, maps to a fixed-length hex name inside the directory) and
//! the version of the record that owns it, fanned out by the first two hex digits. Versions keep a
//! re-upload's files beside the old ones until its log record is durable: the old record keeps
//! its own files if the new one never commits. Version 0 is the unversioned name of stores
//! written before versions existed. Files are fsynced and renamed (or copied) into place, then the
//! directory is fsynced (`durable`). Does not own the decision of when a blob may go: `TaskStore`
//! removes a version only after the record that replaced or deleted it is durable.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{durable, BlobVersion, StoreError};

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

pub(crate) fn path_for(root: &Path, id: &str, version: u64, kind: BlobKind) -> PathBuf {
    let h = hash_hex(id);
    let name = match version {
        0 => format!("{h}.{}", kind.ext()),
        v => format!("{h}-{v:016x}.{}", kind.ext()),
    };
    root.join(&h[..2]).join(name)
}

/// How a new blob's file gets to its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Placement {
    /// `src` is a finished temporary file (not yet fsynced: this fsyncs it), moved into place
    /// (`durable::move_file`).
    Move,
    /// `src` is left as it is (another generation's blob, say) and copied into place
    /// (`durable::copy_file`).
    Copy,
}

/// Puts `src` at the blob's place, durably: on `Ok` the file is fsynced, in place, and its
/// directory fsynced. New blobs always get a fresh version (never the unversioned name of old
/// stores) and belong to a non-empty id.
pub(crate) fn put(
    root: &Path,
    id: &str,
    version: BlobVersion,
    kind: BlobKind,
    src: &Path,
    how: Placement,
) -> Result<(), StoreError> {
    if id.is_empty() {
        return Err(StoreError::EmptyId);
    }
    if version == BlobVersion::UNVERSIONED {
        return Err(StoreError::Unstorable(
            "new blobs need a fresh version".into(),
        ));
    }
    let dst = path_for(root, id, version.raw(), kind);
    fs::create_dir_all(dst.parent().unwrap_or(root))?;
    match how {
        Placement::Move => durable::move_file(src, &dst)?,
        Placement::Copy => durable::copy_file(src, &dst)?,
    }
    Ok(())
}

pub(crate) fn remove(root: &Path, id: &str, version: u64) -> Result<(), StoreError> {
    for kind in BlobKind::ALL {
        match fs::remove_file(path_for(root, id, version, kind)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Removes blobs that no live record owns: left by a crash between `put_blob` and the add (never
/// acknowledged), or between a durable replace or delete and the removal of the old version.
pub(crate) fn sweep(root: &Path, live: &HashSet<(String, u64)>) -> Result<usize, StoreError> {
    if !root.exists() {
        return Ok(0);
    }
    let keep: HashSet<PathBuf> = live
        .iter()
        .flat_map(|(id, v)| BlobKind::ALL.map(|k| path_for(root, id, *v, k)))
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
