//! Offline inspection and repair of a store directory: what `mvserve store check [--repair]`
//! runs.
//!
//! Owns the read-only walk over a store's snapshots and log segments that reports what opening it
//! would find (records, live ids, a torn tail that open would drop, and corruption that makes open
//! refuse), and the repair that cuts the log at the first damage. Repair never deletes: every byte
//! it takes out of the store is moved into `repair-<unix ms>/` inside the store directory first.
//! Takes the directory lock, so it refuses to touch a store that a running server holds.

use std::collections::HashSet;
use std::fs::{self, OpenOptions};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use super::wal::{self, Damage, Op};
use super::{durable, lock_dir, snapshot, StoreError};

/// What a check found in one store directory.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct CheckReport {
    pub dir: PathBuf,
    /// Snapshots as (seq, whether it reads back intact), newest first.
    pub snapshots: Vec<(u64, bool)>,
    pub segments: usize,
    /// Valid log records in all segments.
    pub records: u64,
    /// Ids live after the newest intact snapshot and the log after it.
    pub live_ids: usize,
    /// A torn tail that opening the store drops (an append cut short by a crash; never
    /// acknowledged): `file at byte N (M bytes)`.
    pub torn_tail: Option<String>,
    /// Damage that makes the store refuse to open, each `file at byte N: why`.
    pub problems: Vec<String>,
}

impl CheckReport {
    /// Whether the store opens (a torn tail is fine: opening drops it).
    pub fn is_ok(&self) -> bool {
        self.problems.is_empty()
    }
}

/// What a repair moved out of the store.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct RepairReport {
    /// Where the removed bytes were kept (inside the store directory).
    pub kept_in: Option<PathBuf>,
    /// What was moved there, one line each.
    pub moved: Vec<String>,
}

/// Where the log first stops being replayable: segment index, byte offset, why.
struct Cut {
    segment: usize,
    offset: usize,
    why: String,
    torn: bool,
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .unwrap_or_default()
        .to_string_lossy()
        .into_owned()
}

struct Walk {
    report: CheckReport,
    cut: Option<Cut>,
    segments: Vec<(u64, PathBuf)>,
    damaged_snapshots: Vec<PathBuf>,
}

fn walk(dir: &Path) -> Result<Walk, StoreError> {
    let mut report = CheckReport {
        dir: dir.to_path_buf(),
        ..Default::default()
    };
    let mut live: HashSet<String> = HashSet::new();
    let mut snap_seq = 0;
    let mut damaged_snapshots = Vec::new();
    for (seq, path) in snapshot::list(dir)? {
        let intact = snapshot::decode(&fs::read(&path)?).filter(|s| s.seq == seq);
        report.snapshots.push((seq, intact.is_some()));
        match intact {
            Some(s) if snap_seq == 0 && live.is_empty() => {
                snap_seq = s.seq;
                live.extend(s.records.into_iter().map(|r| r.id));
            }
            Some(_) => {}
            None => damaged_snapshots.push(path),
        }
    }
    let segments = wal::list_segments(dir)?;
    report.segments = segments.len();
    let mut cut = None;
    let mut expected: Option<u64> = None;
    'segments: for (i, (first, path)) in segments.iter().enumerate() {
        let is_last = i + 1 == segments.len();
        let buf = fs::read(path)?;
        let scan = wal::scan(&buf);
        for (k, (offset, seq, op)) in scan.records.iter().enumerate() {
            // Each segment starts at the seq in its name and continues the one before; the first
            // may start anywhere up to the record after the snapshot.
            let want = match (k, expected) {
                (0, _) if *seq != *first => Some(*first),
                (_, Some(e)) if *seq != e => Some(e),
                (_, None) if *seq > snap_seq + 1 => Some(snap_seq + 1),
                _ => None,
            };
            if let Some(want) = want {
                cut = Some(Cut {
                    segment: i,
                    offset: *offset,
                    why: format!("log gap: record has seq {seq}, expected {want}"),
                    torn: false,
                });
                break 'segments;
            }
            expected = Some(seq + 1);
            report.records += 1;
            if *seq > snap_seq {
                match op {
                    Op::Add { id, .. } => {
                        live.insert(id.clone());
                    }
                    Op::Delete { id } => {
                        live.remove(id);
                    }
                }
            }
        }
        if let Some(d) = &scan.damage {
            let torn = matches!(d, Damage::Torn) && is_last;
            let why = match d {
                Damage::Torn if is_last => "torn tail".to_string(),
                Damage::Torn => "a sealed segment ends in the middle of a record".to_string(),
                Damage::Corrupt(why) => why.clone(),
            };
            let line = format!(
                "{} at byte {} ({} bytes after it)",
                name_of(path),
                scan.valid,
                buf.len() - scan.valid
            );
            if torn {
                report.torn_tail = Some(line);
            } else {
                report.problems.push(format!("{line}: {why}"));
            }
            cut = Some(Cut {
                segment: i,
                offset: scan.valid,
                why,
                torn,
            });
            break;
        }
    }
    if let Some(c) = &cut {
        if !c.torn && report.problems.is_empty() {
            let (_, path) = &segments[c.segment];
            report
                .problems
                .push(format!("{} at byte {}: {}", name_of(path), c.offset, c.why));
        }
    }
    if let (Some(e), true) = (expected, snap_seq > 0) {
        if e <= snap_seq {
            report.problems.push(format!(
                "the log ends at seq {} before the newest snapshot ({snap_seq})",
                e - 1
            ));
        }
    }
    report.live_ids = live.len();
    Ok(Walk {
        report,
        cut,
        segments,
        damaged_snapshots,
    })
}

/// Reads the store in `dir` as opening it would, without changing anything.
pub fn check(dir: &Path) -> Result<CheckReport, StoreError> {
    let _lock = lock_dir(dir)?;
    Ok(walk(dir)?.report)
}

/// Cuts the log at its first damage (torn or corrupt) and sets damaged snapshots aside, so that
/// the store opens again. Records after the cut are no longer in the store: they are kept, byte
/// for byte, in `repair-<unix ms>/` (a segment's tail as `<segment>.from-<offset>`, later segments
/// whole), for an operator to inspect.
pub fn repair(dir: &Path) -> Result<RepairReport, StoreError> {
    let _lock = lock_dir(dir)?;
    let w = walk(dir)?;
    let mut out = RepairReport::default();
    if w.cut.is_none() && w.damaged_snapshots.is_empty() {
        return Ok(out);
    }
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    let keep = dir.join(format!("repair-{ms}"));
    fs::create_dir_all(&keep)?;
    for path in &w.damaged_snapshots {
        fs::rename(path, keep.join(name_of(path)))?;
        out.moved
            .push(format!("{} (damaged snapshot)", name_of(path)));
    }
    if let Some(cut) = &w.cut {
        let (_, path) = &w.segments[cut.segment];
        let buf = fs::read(path)?;
        let tail = keep.join(format!("{}.from-{}", name_of(path), cut.offset));
        durable::write_synced(&tail, &buf[cut.offset..])?;
        // The copy (its entry in `keep`, and `keep`'s in `dir`) must be durable before the
        // bytes it holds are cut from the segment: a crash between the two would lose them.
        durable::sync_dir(&keep)?;
        durable::sync_dir(dir)?;
        let seg = OpenOptions::new().write(true).open(path)?;
        seg.set_len(cut.offset as u64)?;
        seg.sync_all()?;
        out.moved.push(format!(
            "{} from byte {} ({} bytes: {})",
            name_of(path),
            cut.offset,
            buf.len() - cut.offset,
            cut.why
        ));
        for (_, later) in &w.segments[cut.segment + 1..] {
            fs::rename(later, keep.join(name_of(later)))?;
            out.moved
                .push(format!("{} (after the cut)", name_of(later)));
        }
    }
    // Not `durable::rename_into_place` per file: the moves leave `dir` as well as enter `keep`,
    // so both directories are fsynced, once each, after all of them.
    durable::sync_dir(&keep)?;
    durable::sync_dir(dir)?;
    out.kept_in = Some(keep);
    Ok(out)
}
