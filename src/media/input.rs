//! A video file's bytes in front of the demuxers without reading the whole file first.
//!
//! Owns: opening the file, refusing it over `max_bytes` from its length before anything is read,
//! and mapping it read-only (`memmap2`), so that only the pages the demuxers and decoders touch
//! are read: an MP4's `moov`, an AVI's chunk headers, a Matroska file's block headers, and the
//! GOPs of the sampled frames. A 30-minute upload (180 MB) used to be copied whole into the heap
//! before demuxing; mapped, its untouched frames are never read, and the pages that are stay in
//! the page cache (reclaimable, dropped with the map) instead of the process's heap. Memory stays
//! bounded by `max_bytes` either way. A file that cannot be mapped (a pipe, a filesystem without
//! mmap) is read into memory as before.

use std::io::Read;
use std::ops::Deref;
use std::path::Path;

use super::{too_large_bytes, MediaLimits, Result};

/// The bytes of one video file: mapped, or read when mapping is not possible.
pub(crate) enum Input {
    Mapped(memmap2::Mmap),
    Read(Vec<u8>),
}

impl Deref for Input {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Input::Mapped(m) => m,
            Input::Read(v) => v,
        }
    }
}

/// Opens `path` for decoding, refusing files over `max_bytes` before reading them.
pub(crate) fn open(path: &Path, limits: &MediaLimits) -> Result<Input> {
    let file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if len > limits.max_bytes {
        return Err(too_large_bytes(len, limits));
    }
    if len > 0 {
        // SAFETY: the map is read while this one load runs and dropped after it. The files given
        // are the server's own staged uploads (written and closed before decoding, moved but
        // never rewritten afterwards) or files named on a command line; another process
        // truncating such a file during the load would fault the read (SIGBUS), the same hazard
        // the weights loader accepts. The length is checked against the limit above, and a map
        // cannot grow with the file.
        if let Ok(map) = unsafe { memmap2::Mmap::map(&file) } {
            if map.len() as u64 > limits.max_bytes {
                return Err(too_large_bytes(map.len() as u64, limits));
            }
            return Ok(Input::Mapped(map));
        }
    }
    let mut bytes = Vec::with_capacity(len as usize);
    file.take(limits.max_bytes + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > limits.max_bytes {
        return Err(too_large_bytes(bytes.len() as u64, limits));
    }
    Ok(Input::Read(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_reads_and_refuses() {
        let dir = std::env::temp_dir().join(format!("mvserve-input-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("v.bin");
        std::fs::write(&path, b"0123456789").unwrap();
        let limits = MediaLimits::default();
        let input = open(&path, &limits).unwrap();
        assert!(matches!(input, Input::Mapped(_)));
        assert_eq!(&input[..], b"0123456789");
        let small = MediaLimits {
            max_bytes: 9,
            ..Default::default()
        };
        assert_eq!(
            open(&path, &small).err().map(|e| e.code()),
            Some("too_large")
        );
        // An empty file cannot be mapped; it is read (and then refused by the demuxers).
        std::fs::write(&path, b"").unwrap();
        assert!(open(&path, &limits).unwrap().is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
