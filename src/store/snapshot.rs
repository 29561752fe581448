//! Snapshots: a derived, checksummed copy of a task's live records at one log sequence number.
//!
//! Owns the snapshot file format (`snapshot-<seq>.snap`: magic, payload length, payload, crc32)
//! and its crash-safe write: the bytes go to a `.tmp` file beside the final name, are fsynced,
//! renamed into place, and the directory is fsynced. A snapshot only shortens replay; the log
//! stays the source of truth, so a damaged snapshot is skipped in favour of an older one.
//! Does not own the graph: HNSW is rebuilt from the vectors after loading.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use super::codec::{self, Reader};
use super::{durable, StoreError};

/// Version 2 adds each record's blob version; version 1 files still load (blob version 0).
const MAGIC: &[u8; 8] = b"MVSNAP02";
const MAGIC_V1: &[u8; 8] = b"MVSNAP01";

/// One live record in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct SnapRecord {
    pub id: String,
    pub added_ms: u64,
    pub blobs: u64,
    pub meta: serde_json::Value,
    pub vector: Vec<f32>,
}

#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot {
    pub seq: u64,
    pub dim: usize,
    pub digest: Option<String>,
    pub records: Vec<SnapRecord>,
}

pub(crate) fn file_name(seq: u64) -> String {
    format!("snapshot-{seq:020}.snap")
}

/// One live record as the snapshot writer borrows it from the index.
pub(crate) struct SnapRef<'a> {
    pub id: &'a str,
    pub added_ms: u64,
    pub blobs: u64,
    pub meta: &'a serde_json::Value,
    pub vector: &'a [f32],
}

/// Serialises a snapshot into memory, so the caller can drop its locks before the slow write.
pub(crate) fn encode(
    seq: u64,
    dim: usize,
    digest: Option<&str>,
    records: &[SnapRef<'_>],
) -> Vec<u8> {
    let mut p = Vec::with_capacity(64 + records.len() * (dim * 4 + 64));
    codec::put_u64(&mut p, seq);
    codec::put_u32(&mut p, dim as u32);
    match digest {
        Some(d) => {
            codec::put_u8(&mut p, 1);
            codec::put_bytes(&mut p, d.as_bytes());
        }
        None => codec::put_u8(&mut p, 0),
    }
    codec::put_u64(&mut p, records.len() as u64);
    for r in records {
        codec::put_bytes(&mut p, r.id.as_bytes());
        codec::put_u64(&mut p, r.added_ms);
        codec::put_u64(&mut p, r.blobs);
        // Every meta here passed the log's read-back check, so it serialises.
        let m = serde_json::to_vec(r.meta).unwrap_or_else(|_| b"null".to_vec());
        codec::put_bytes(&mut p, &m);
        codec::put_f32s(&mut p, r.vector);
    }
    let mut out = Vec::with_capacity(p.len() + 20);
    out.extend_from_slice(MAGIC);
    codec::put_u64(&mut out, p.len() as u64);
    out.extend_from_slice(&p);
    codec::put_u32(&mut out, crc32fast::hash(&p));
    out
}

pub(crate) fn decode(buf: &[u8]) -> Option<Snapshot> {
    let (v2, body) = match buf.strip_prefix(MAGIC) {
        Some(b) => (true, b),
        None => (false, buf.strip_prefix(MAGIC_V1)?),
    };
    let mut r = Reader::new(body);
    let len = usize::try_from(r.u64()?).ok()?;
    let rest = buf.get(MAGIC.len() + 8..)?;
    if rest.len() != len.checked_add(4)? {
        return None;
    }
    let (payload, crc) = rest.split_at(len);
    if crc32fast::hash(payload) != Reader::new(crc).u32()? {
        return None;
    }
    let mut r = Reader::new(payload);
    let seq = r.u64()?;
    let dim = r.u32()? as usize;
    let digest = match r.u8()? {
        0 => None,
        1 => Some(r.string()?),
        _ => return None,
    };
    let n = r.u64()?;
    let mut records = Vec::new();
    for _ in 0..n {
        let id = r.string()?;
        let added_ms = r.u64()?;
        let blobs = if v2 { r.u64()? } else { 0 };
        let meta = serde_json::from_slice(r.bytes()?).ok()?;
        let vector = r.f32s()?;
        if vector.len() != dim {
            return None;
        }
        records.push(SnapRecord {
            id,
            added_ms,
            blobs,
            meta,
            vector,
        });
    }
    r.is_empty().then_some(Snapshot {
        seq,
        dim,
        digest,
        records,
    })
}

/// Writes `bytes` as the snapshot for `seq`: temp file, fsync, rename, fsync directory. The
/// temporary is `<final name>.tmp` (not `durable::write_file`'s `.tmp` in place of `.snap`), the
/// name [`list`] has always cleared after a crash.
pub(crate) fn write(dir: &Path, seq: u64, bytes: &[u8]) -> Result<(), StoreError> {
    let final_path = dir.join(file_name(seq));
    let tmp_path = dir.join(format!("{}.tmp", file_name(seq)));
    durable::write_synced(&tmp_path, bytes)?;
    durable::rename_into_place(&tmp_path, &final_path)?;
    Ok(())
}

/// Snapshot files, newest first, as (seq, path); leftover `.tmp` files are removed.
pub(crate) fn list(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut snaps = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("snapshot-") && name.ends_with(".tmp") {
            // A crash during a snapshot write; the log still has everything it held.
            fs::remove_file(entry.path())?;
            continue;
        }
        if let Some(n) = name
            .strip_prefix("snapshot-")
            .and_then(|s| s.strip_suffix(".snap"))
        {
            if let Ok(seq) = n.parse::<u64>() {
                snaps.push((seq, entry.path()));
            }
        }
    }
    snaps.sort_by(|a, b| b.cmp(a));
    Ok(snaps)
}

/// The newest snapshot that reads back intact; damaged ones are skipped with a warning.
pub(crate) fn load_newest(dir: &Path) -> Result<Option<Snapshot>, StoreError> {
    for (seq, path) in list(dir)? {
        let buf = fs::read(&path)?;
        match decode(&buf) {
            Some(s) if s.seq == seq => return Ok(Some(s)),
            _ => tracing::warn!(snapshot = %path.display(), "skipping damaged snapshot"),
        }
    }
    Ok(None)
}

/// Keeps the newest `keep` snapshots; returns the seq of the oldest kept one (the log must be
/// kept from there, so that it can stand in if the newest turns out damaged).
pub(crate) fn prune(dir: &Path, keep: usize) -> Result<Option<u64>, StoreError> {
    let snaps = list(dir)?;
    for (_, path) in snaps.iter().skip(keep) {
        fs::remove_file(path)?;
    }
    Ok(snaps
        .get(..keep.min(snaps.len()))
        .and_then(|s| s.last())
        .map(|(seq, _)| *seq))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_truncation_is_rejected() {
        let meta = serde_json::json!({"a": 1});
        let v = [0.6f32, 0.8];
        let rec = SnapRef {
            id: "x",
            added_ms: 9,
            blobs: 3,
            meta: &meta,
            vector: &v,
        };
        let bytes = encode(5, 2, Some("dig"), &[rec]);
        let s = decode(&bytes).expect("decodes");
        assert_eq!(s.seq, 5);
        assert_eq!(s.digest.as_deref(), Some("dig"));
        assert_eq!(s.records[0].vector, v);
        assert_eq!(s.records[0].blobs, 3);
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] ^= 0x01;
            assert!(decode(&b).is_none(), "flip at {i}");
        }
    }
}
