//! The write-ahead log: the source of truth for a task's vectors.
//!
//! Owns the on-disk log: segment files `wal-<first seq>.log` in the task directory, each a run of
//! records framed as `[u32 payload length][u32 crc32 of payload][payload]`, with a sequence number
//! inside every payload. Appends are fsynced before they return, so a returned sequence number is
//! durable, and every record is decoded again before it is written, so what is acknowledged is
//! exactly what replay reads back.
//!
//! Replay tells two kinds of damage apart ([`Damage`]). A *torn* tail is what a crash in the middle
//! of an append leaves: a frame cut short by the end of the newest segment (or, after a power loss,
//! a last frame or zero-filled run that ends the file). It was never acknowledged, so it is
//! dropped with a warning. Anything else, a frame in the middle of a file that fails its checksum
//! or a checksummed payload that does not decode, is *corruption*: acknowledged records may lie
//! behind it, so the store refuses to open and names the file and offset (`mvserve store check`
//! shows it; `--repair` cuts it off and keeps a copy). Does not own the in-memory index or
//! snapshots.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use super::codec::{self, Reader};
use super::durable::sync_dir;
use super::StoreError;

/// Anything bigger is a damaged length field, not a record (a 512-d vector with meta is ~2 KiB).
const MAX_RECORD: usize = 64 << 20;
/// Every payload holds at least a sequence number and a tag.
const MIN_PAYLOAD: usize = 9;
/// The add record of logs written before blob versions existed (its blobs are unversioned).
const TAG_ADD_V1: u8 = 1;
const TAG_DELETE: u8 = 2;
const TAG_ADD: u8 = 3;

/// One logged change.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Op {
    Add {
        id: String,
        digest: String,
        added_ms: u64,
        /// Which version of the id's blobs this record owns (0: unversioned names).
        blobs: u64,
        vector: Vec<f32>,
        meta: serde_json::Value,
    },
    Delete {
        id: String,
    },
}

/// Why a run of bytes is not a valid record.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Damage {
    /// The end of an append that never finished: only ever at the end of the file.
    Torn,
    /// Damage that valid records may follow; the reason says what was found.
    Corrupt(String),
}

/// What reading one segment found.
#[derive(Debug)]
pub(crate) struct Scan {
    /// Valid records in order, each with its byte offset.
    pub records: Vec<(usize, u64, Op)>,
    /// Length of the valid prefix.
    pub valid: usize,
    /// Where the valid prefix ends, and why, when it does not reach the end of the file.
    pub damage: Option<Damage>,
}

fn payload(seq: u64, op: &Op) -> Result<Vec<u8>, StoreError> {
    let mut p = Vec::new();
    codec::put_u64(&mut p, seq);
    match op {
        Op::Add {
            id,
            digest,
            added_ms,
            blobs,
            vector,
            meta,
        } => {
            codec::put_u8(&mut p, TAG_ADD);
            codec::put_bytes(&mut p, id.as_bytes());
            codec::put_bytes(&mut p, digest.as_bytes());
            codec::put_u64(&mut p, *added_ms);
            codec::put_u64(&mut p, *blobs);
            codec::put_f32s(&mut p, vector);
            let m = serde_json::to_vec(meta)
                .map_err(|e| StoreError::Unstorable(format!("meta of {id:?}: {e}")))?;
            codec::put_bytes(&mut p, &m);
        }
        Op::Delete { id } => {
            codec::put_u8(&mut p, TAG_DELETE);
            codec::put_bytes(&mut p, id.as_bytes());
        }
    }
    if p.len() > MAX_RECORD {
        return Err(StoreError::Unstorable(format!(
            "a record of {} bytes is over the log's limit of {MAX_RECORD}",
            p.len()
        )));
    }
    Ok(p)
}

/// Frames `op` as record `seq`, after checking that replay will read back exactly `op`: a value
/// that cannot make that round trip is refused here, before anything is acknowledged.
fn encode(seq: u64, op: &Op, out: &mut Vec<u8>) -> Result<(), StoreError> {
    let p = payload(seq, op)?;
    match decode_payload(&p) {
        Ok((s, ref back)) if s == seq && back == op => {}
        Ok(_) => {
            return Err(StoreError::Unstorable(
                "the record would not read back as written".into(),
            ))
        }
        Err(why) => {
            return Err(StoreError::Unstorable(format!(
                "the record would not read back: {why}"
            )))
        }
    }
    codec::put_u32(out, p.len() as u32);
    codec::put_u32(out, crc32fast::hash(&p));
    out.extend_from_slice(&p);
    Ok(())
}

fn decode_payload(p: &[u8]) -> Result<(u64, Op), String> {
    let short = || "payload ends early".to_string();
    let mut r = Reader::new(p);
    let seq = r.u64().ok_or_else(short)?;
    let op = match r.u8().ok_or_else(short)? {
        tag @ (TAG_ADD | TAG_ADD_V1) => {
            let id = r.string().ok_or("bad id")?;
            let digest = r.string().ok_or("bad digest")?;
            let added_ms = r.u64().ok_or_else(short)?;
            let blobs = if tag == TAG_ADD {
                r.u64().ok_or_else(short)?
            } else {
                0
            };
            let vector = r.f32s().ok_or("bad vector")?;
            let meta = r.bytes().ok_or("bad meta length")?;
            let meta =
                serde_json::from_slice(meta).map_err(|e| format!("meta does not parse: {e}"))?;
            Op::Add {
                id,
                digest,
                added_ms,
                blobs,
                vector,
                meta,
            }
        }
        TAG_DELETE => Op::Delete {
            id: r.string().ok_or("bad id")?,
        },
        t => return Err(format!("unknown record tag {t}")),
    };
    if !r.is_empty() {
        return Err("bytes left after the record".into());
    }
    Ok((seq, op))
}

/// Splits a segment's bytes into valid records and says where and why they stop.
pub(crate) fn scan(buf: &[u8]) -> Scan {
    let mut records = Vec::new();
    let mut pos = 0;
    let damage = loop {
        let rest = &buf[pos..];
        if rest.is_empty() {
            break None;
        }
        // A file system may extend a file before the data lands (a power loss): zeros to the end.
        let zeros_to_end = || rest.iter().all(|&b| b == 0);
        let mut r = Reader::new(rest);
        let (Some(len), Some(crc)) = (r.u32(), r.u32()) else {
            break Some(Damage::Torn);
        };
        let len = len as usize;
        if !(MIN_PAYLOAD..=MAX_RECORD).contains(&len) {
            break Some(if zeros_to_end() {
                Damage::Torn
            } else {
                Damage::Corrupt(format!("impossible record length {len}"))
            });
        }
        if rest.len() - 8 < len {
            break Some(Damage::Torn);
        }
        let p = &rest[8..8 + len];
        if crc32fast::hash(p) != crc {
            let last_frame = rest.len() == 8 + len;
            break Some(if last_frame || zeros_to_end() {
                Damage::Torn
            } else {
                Damage::Corrupt("checksum mismatch with more records after it".into())
            });
        }
        match decode_payload(p) {
            Ok((seq, op)) => records.push((pos, seq, op)),
            Err(why) => {
                break Some(Damage::Corrupt(format!(
                    "checksummed record does not decode: {why}"
                )))
            }
        }
        pos += 8 + len;
    };
    Scan {
        records,
        valid: pos,
        damage,
    }
}

pub(crate) fn segment_name(first_seq: u64) -> String {
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

/// The error for damage replay cannot step over.
fn corrupt_at(path: &Path, offset: usize, why: &str) -> StoreError {
    let file = path.file_name().unwrap_or_default().to_string_lossy();
    StoreError::Corrupt(format!(
        "{file} at byte {offset}: {why}; run `mvserve store check` on the store directory (and `--repair` to cut the log there, keeping a copy)"
    ))
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
    /// Replays every record with a sequence number above `after_seq` into `apply`, cuts off a torn
    /// tail, and returns the log ready for appends. Corruption anywhere is an error.
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
            let scan = scan(&buf);
            match &scan.damage {
                None => {}
                Some(Damage::Corrupt(why)) => return Err(corrupt_at(path, scan.valid, why)),
                Some(Damage::Torn) if !is_last => {
                    return Err(corrupt_at(
                        path,
                        scan.valid,
                        "a sealed segment ends in the middle of a record",
                    ))
                }
                Some(Damage::Torn) => {
                    tracing::warn!(
                        segment = %path.display(),
                        valid_bytes = scan.valid,
                        dropped_bytes = buf.len() - scan.valid,
                        "dropping the torn tail of the write-ahead log (an append a crash cut short)"
                    );
                    let f = OpenOptions::new().write(true).open(path)?;
                    f.set_len(scan.valid as u64)?;
                    f.sync_all()?;
                }
            }
            for (k, (offset, seq, op)) in scan.records.into_iter().enumerate() {
                if k == 0 && seq != *first {
                    return Err(corrupt_at(
                        path,
                        offset,
                        &format!("first record has seq {seq}"),
                    ));
                }
                if seq < expected {
                    continue;
                }
                if seq != expected {
                    let what = if first_applied { "snapshot" } else { "record" };
                    return Err(corrupt_at(
                        path,
                        offset,
                        &format!(
                            "log gap: expected seq {expected} after the last {what}, found {seq}"
                        ),
                    ));
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

    /// Appends `ops` and fsyncs once; returns the sequence number of the last one. Refuses (and
    /// writes nothing) when any op would not read back exactly as given.
    pub(crate) fn append(&mut self, ops: &[Op]) -> Result<u64, StoreError> {
        if self.poisoned {
            return Err(StoreError::Poisoned);
        }
        let mut buf = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            encode(self.next_seq + i as u64, op, &mut buf)?;
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
            blobs: 42,
            vector: vec![0.5, -0.25],
            meta: serde_json::json!({"t": id}),
        }
    }

    fn framed(ops: &[Op]) -> Vec<u8> {
        let mut buf = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            encode(i as u64 + 1, op, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn encode_scan_round_trip_and_every_cut_is_a_torn_tail() {
        let buf = framed(&[add("a"), Op::Delete { id: "a".into() }]);
        let full = buf.len();
        let s = scan(&buf);
        assert_eq!((s.valid, s.damage), (full, None));
        assert_eq!(s.records.len(), 2);
        assert_eq!((s.records[0].1, &s.records[0].2), (1, &add("a")));
        let boundary = s.records[1].0;
        for cut in 1..full {
            let s = scan(&buf[..cut]);
            assert!(s.valid <= cut);
            assert!(s.records.len() < 2);
            let want = (cut != boundary).then_some(Damage::Torn);
            assert_eq!(s.damage, want, "cut at {cut}");
        }
    }

    #[test]
    fn damage_before_the_end_is_corruption_not_a_tail() {
        let buf = framed(&[add("a"), add("b"), add("c")]);
        let first = scan(&buf).records[1].0;
        // A flipped byte in the last frame: torn (a power loss can leave that).
        let mut last = buf.clone();
        let n = last.len();
        last[n - 1] ^= 0xff;
        assert_eq!(scan(&last).damage, Some(Damage::Torn));
        // The same in the middle: records follow it, so it is corruption.
        let mut mid = buf.clone();
        mid[first + 12] ^= 0xff;
        let s = scan(&mid);
        assert_eq!(s.valid, first);
        assert!(
            matches!(s.damage, Some(Damage::Corrupt(_))),
            "{:?}",
            s.damage
        );
        // Zeros from a point to the end: an extended file whose data never landed.
        let mut zeros = buf.clone();
        zeros[first..].fill(0);
        assert_eq!(scan(&zeros).damage, Some(Damage::Torn));
    }

    #[test]
    fn a_checksummed_record_that_does_not_decode_is_corruption() {
        let mut p = Vec::new();
        codec::put_u64(&mut p, 1);
        codec::put_u8(&mut p, 99);
        let mut buf = Vec::new();
        codec::put_u32(&mut buf, p.len() as u32);
        codec::put_u32(&mut buf, crc32fast::hash(&p));
        buf.extend_from_slice(&p);
        let s = scan(&buf);
        assert_eq!(s.valid, 0);
        assert!(matches!(s.damage, Some(Damage::Corrupt(ref m)) if m.contains("tag 99")));
    }

    #[test]
    fn meta_that_would_not_read_back_is_refused_before_it_is_written() {
        // 200 levels: serde_json writes it but its parser stops at 128.
        let mut deep = serde_json::json!(1);
        for _ in 0..200 {
            deep = serde_json::json!([deep]);
        }
        let op = Op::Add {
            id: "deep".into(),
            digest: "d".into(),
            added_ms: 7,
            blobs: 1,
            vector: vec![1.0],
            meta: deep,
        };
        let mut out = Vec::new();
        assert!(matches!(
            encode(1, &op, &mut out),
            Err(StoreError::Unstorable(_))
        ));
        assert!(out.is_empty());
    }

    #[test]
    fn v1_add_records_still_read() {
        let mut p = Vec::new();
        codec::put_u64(&mut p, 1);
        codec::put_u8(&mut p, TAG_ADD_V1);
        codec::put_bytes(&mut p, b"old");
        codec::put_bytes(&mut p, b"d");
        codec::put_u64(&mut p, 5);
        codec::put_f32s(&mut p, &[1.0]);
        codec::put_bytes(&mut p, b"{\"a\":1}");
        let (seq, op) = decode_payload(&p).unwrap();
        assert_eq!(seq, 1);
        assert!(matches!(op, Op::Add { blobs: 0, ref id, .. } if id == "old"));
    }
}
