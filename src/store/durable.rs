//! Durable file replacement: the one place that writes a file so that a crash leaves either the
//! old content or the new, never a torn mix.
//!
//! Owns the sequence every such write needs (write beside the target, fsync the file, rename over
//! the target, fsync the directory so the rename itself survives a power loss). Used for small
//! state files (a task's `CURRENT`), snapshots, blobs (moved in from an upload or copied from
//! another generation) and adapter copies. Does not own where files go or what they are called
//! (`snapshot`, `blob`, `backend`, `registry`); callers that move several files and fsync the
//! directories once at the end (`check::repair`), or that name their temporaries themselves (`snapshot`), use the steps
//! ([`write_synced`], [`rename_into_place`], [`sync_dir`]) directly.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Fsyncs a directory, making renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Creates (or truncates) `path` with `bytes` and fsyncs the file. Its directory entry is not
/// fsynced: that is the caller's, usually through [`rename_into_place`].
pub fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut f = File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Replaces `path` with `bytes` durably, through `<path>.tmp` beside it.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    write_synced(&tmp, bytes)?;
    rename_into_place(&tmp, path)
}

/// Replaces `path` with a copy of `src` durably (copied to `<path>.tmp` beside it, fsynced,
/// renamed, directory fsynced). `src` is left as it is.
pub fn copy_file(src: &Path, path: &Path) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    fs::copy(src, &tmp)?;
    persist(&tmp, path)
}

/// Moves the finished file `src` over `path` durably: fsyncs it, renames it (or, where it cannot
/// be renamed, from another file system say, copies it beside `path` with [`copy_file`] and
/// removes it) and fsyncs the directory. Callers need not fsync `src` themselves.
pub fn move_file(src: &Path, path: &Path) -> io::Result<()> {
    File::open(src)?.sync_all()?;
    if fs::rename(src, path).is_err() {
        // Another filesystem (EXDEV) or similar: copy beside the target, then rename. The source
        // is removed once the copy is durable.
        copy_file(src, path)?;
        return fs::remove_file(src);
    }
    sync_dir(parent(path))
}

/// Fsyncs the finished file `tmp`, renames it over `path` and fsyncs the directory.
pub fn persist(tmp: &Path, path: &Path) -> io::Result<()> {
    File::open(tmp)?.sync_all()?;
    rename_into_place(tmp, path)
}

/// Renames the finished (already fsynced) file `tmp` over `path` and fsyncs the directory.
pub fn rename_into_place(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path)?;
    sync_dir(parent(path))
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}
