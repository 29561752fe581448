//! The write-ahead log: the source of truth for a task's vectors.
//!
//! Owns the on-disk log: segment files `wal-<first seq>.log` in the task directory, each a run of
//! records framed as `[u32 payload length][u32 crc32 of payload][payload]`, with a sequence number
//! inside every payload. Appends are fsynced before they return, so a returned sequence number is
//! durable. Replay checks each record and drops a torn or corrupt tail of the newest segment (what a
//! crash in the middle of an append leaves) with a warning; damage anywhere else is an error,
//! because acknowledged records would be behind it. Does not own the in-memory index or snapshots.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, Reader};
use super::{sync_dir, StoreError};

/// Anything bigger is a damaged length field, not a record (a 512-d vector with meta is ~2 KiB).
const MAX_RECORD: usize = 64 << 20;
const TAG_ADD: u8 = 1;
const TAG_DELETE: u8 = 2;

/// One logged change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Add {
        id: String,
        digest: String,
        added_ms: u64,
        vector: Vec<f32>,
        meta: serde_json::Value,
    },
    Delete {
        id: String,
    },
}

fn encode(seq: u64, op: &Op, out: &mut Vec<u8>) {
    let mut p = Vec::new();
    codec::put_u64(&mut p, seq);
    match op {
        Op::Add {
            id,
            digest,
            added_ms,
            vector,
            meta,
        } => {
            codec::put_u8(&mut p, TAG_ADD);
            codec::put_bytes(&mut p, id.as_bytes());
            codec::put_bytes(&mut p, digest.as_bytes());
            codec::put_u64(&mut p, *added_ms);
            codec::put_f32s(&mut p, vector);
            // A Value always serialises; fall back to null rather than unwrap.
            let m = serde_json::to_vec(meta).unwrap_or_else(|_| b"null".to_vec());
            codec::put_bytes(&mut p, &m);
        }
        Op::Delete { id } => {
            codec::put_u8(&mut p, TAG_DELETE);
            codec::put_bytes(&mut p, id.as_bytes());
        }
    }
    codec::put_u32(out, p.len() as u32);
    codec::put_u32(out, crc32fast::hash(&p));
    out.extend_from_slice(&p);
}

fn decode_payload(p: &[u8]) -> Option<(u64, Op)> {
    let mut r = Reader::new(p);
    let seq = r.u64()?;
    let op = match r.u8()? {
        TAG_ADD => Op::Add {
            id: r.string()?,
            digest: r.string()?,
            added_ms: r.u64()?,
            vector: r.f32s()?,
            meta: serde_json::from_slice(r.bytes()?).ok()?,
        },
        TAG_DELETE => Op::Delete { id: r.string()? },
        _ => return None,
    };
    r.is_empty().then_some((seq, op))
}

/// Splits `buf` into valid records; returns them and the byte length of the valid prefix.
fn parse(buf: &[u8]) -> (Vec<(u64, Op)>, usize) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let mut r = Reader::new(&buf[pos..]);
        let (Some(len), Some(crc)) = (r.u32(), r.u32()) else {
            break;
        };
        let len = len as usize;
        let start = pos + 8;
        if len > MAX_RECORD || buf.len() - start < len {
            break;
        }
        let payload = &buf[start..start + len];
        if crc32fast::hash(payload) != crc {
            break;
        }
        let Some(rec) = decode_payload(payload) else {
            break;
        };
        out.push(rec);
        pos = start + len;
    }
    (out, pos)
}

fn segment_name(first_seq: u64) -> String {
    format!("wal-{first_seq:020}.log")
}

/// Segments in the directory, oldest first, as (first seq, path).
pub(crate) fn list_segments(dir: &Path) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut segs = Vec::new();
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_prefix("wal-")
            .and_then(|s| s.strip_suffix(".log"))
        {
            if let Ok(first) = n.parse::<u64>() {
                segs.push((first, entry.path()));
            }
        }
    }
    segs.sort();
    Ok(segs)
}

/// An open log, positioned for appending to its newest segment.
pub(crate) struct Wal {
    dir: PathBuf,
    file: File,
    next_seq: u64,
    /// Set after a failed write or fsync: the file's state is unknown, so refuse further writes
    /// until the store is reopened (and the log replayed) rather than risk acknowledging garbage.
    poisoned: bool,
}

impl Wal {
    /// Replays every record with a sequence number above `after_seq` into `apply`, repairs a torn
    /// tail, and returns the log ready for appends.
    pub(crate) fn open(
        dir: &Path,
        after_seq: u64,
        mut apply: impl FnMut(u64, Op) -> Result<(), StoreError>,
    ) -> Result<Wal, StoreError> {
        let segs = list_segments(dir)?;
        let mut expected = after_seq + 1;
        let mut first_applied = true;
        for (i, (first, path)) in segs.iter().enumerate() {
            let is_last = i + 1 == segs.len();
            let buf = fs::read(path)?;
            let (records, valid) = parse(&buf);
            if valid < buf.len() {
                if !is_last {
                    return Err(StoreError::Corrupt(format!(
                        "{}: damaged record at byte {valid} in a sealed segment",
                        path.display()
                    )));
                }
                tracing::warn!(
                    segment = %path.display(),
                    valid_bytes = valid,
                    dropped_bytes = buf.len() - valid,
                    "dropping torn or corrupt tail of the write-ahead log"
                );
                let f = OpenOptions::new().write(true).open(path)?;
                f.set_len(valid as u64)?;
                f.sync_all()?;
            }
            for (k, (seq, op)) in records.into_iter().enumerate() {
                if k == 0 && seq != *first {
                    return Err(StoreError::Corrupt(format!(
                        "{}: first record has seq {seq}",
                        path.display()
                    )));
                }
                if seq < expected {
                    continue;
                }
                if seq != expected {
                    let what = if first_applied { "snapshot" } else { "record" };
                    return Err(StoreError::Corrupt(format!(
                        "log gap: expected seq {expected} after the last {what}, found {seq}"
                    )));
                }
                apply(seq, op)?;
                first_applied = false;
                expected += 1;
            }
        }
        let file = match segs.last() {
            Some((_, path)) => OpenOptions::new().append(true).open(path)?,
            None => create_segment(dir, expected)?,
        };
        Ok(Wal {
            dir: dir.to_path_buf(),
            file,
            next_seq: expected,
            poisoned: false,
        })
    }

    /// Appends `ops` and fsyncs once; returns the sequence number of the last one.
    pub(crate) fn append(&mut self, ops: &[Op]) -> Result<u64, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let mut buf = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            encode(self.next_seq + i as u64, op, &mut buf);
        }
        let res = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.sync_data());
        if let Err(e) = res {
            self.poisoned = true;
            return Err(e.into());
        }
        self.next_seq += ops.len() as u64;
        Ok(self.next_seq - 1)
    }

    /// Sequence number of the last durable record (0 when nothing was ever logged).
    pub(crate) fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    /// Starts a new segment so that older ones can be deleted once a snapshot covers them.
    pub(crate) fn rotate(&mut self) -> Result<(), StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        self.file = create_segment(&self.dir, self.next_seq)?;
        Ok(())
    }
}

fn create_segment(dir: &Path, first_seq: u64) -> Result<File, StoreError> {
    let path = dir.join(segment_name(first_seq));
    let f = OpenOptions::new().create(true).append(true).open(&path)?;
    f.sync_all()?;
    sync_dir(dir)?;
    Ok(f)
}

/// Deletes segments whose every record is at or below `seq` (the active one is always kept).
pub(crate) fn remove_covered(dir: &Path, seq: u64) -> Result<(), StoreError> {
    let segs = list_segments(dir)?;
    for w in segs.windows(2) {
        let (_, path) = &w[0];
        let (next_first, _) = w[1];
        if next_first <= seq + 1 {
            fs::remove_file(path)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn add(id: &str) -> Op {
        Op::Add {
            id: id.into(),
            digest: "d".into(),
            added_ms: 7,
            vector: vec![0.5, -0.25],
            meta: serde_json::json!({"t": id}),
        }
    }

    #[test]
    fn encode_parse_round_trip_and_torn_tail() {
        let mut buf = Vec::new();
        encode(1, &add("a"), &mut buf);
        encode(2, &Op::Delete { id: "a".into() }, &mut buf);
        let full = buf.len();
        let (recs, valid) = parse(&buf);
        assert_eq!(valid, full);
        assert_eq!(recs.len(), 2);
        assert_eq!(recs[0], (1, add("a")));
        for cut in 0..full {
            let (recs, valid) = parse(&buf[..cut]);
            assert!(valid <= cut);
            assert!(recs.len() < 2);
        }
        let mut bad = buf.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        let (recs, _) = parse(&bad);
        assert_eq!(recs.len(), 1);
    }
}
