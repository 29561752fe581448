//! Durable file replacement: the one place that writes a file so that a crash leaves either the
//! old content or the new, never a torn mix.
//!
//! Owns the sequence every such write needs (write beside the target, fsync the file, rename over
//! the target, fsync the directory so the rename itself survives a power loss). Used for small
//! state files (a task's `CURRENT`), adapter copies and snapshots.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Fsyncs a directory, making renames and creations inside it durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Replaces `path` with `bytes` durably.
pub fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    rename_into_place(&tmp, path)
}

/// Renames the finished (already fsynced) file `tmp` over `path` and fsyncs the directory.
pub fn rename_into_place(tmp: &Path, path: &Path) -> io::Result<()> {
    fs::rename(tmp, path)?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}
