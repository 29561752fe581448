//! `mvserve store check DIR [--repair]`: offline inspection and repair of task stores.

use anyhow::{bail, Result};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Read every store under DIR (a store directory, a task's, or the whole --data-dir) as
    /// opening it would, and report records, live ids, torn tails and corruption. Exits 1 when a
    /// store would refuse to open. Stop the server first: a store in use is locked.
    Check(CheckArgs),
}

#[derive(Args)]
pub struct CheckArgs {
    /// A store directory or any folder above store directories (e.g. the server's --data-dir).
    pub dir: PathBuf,
    /// Cut each damaged log at its first damage (and set damaged snapshots aside) so the store
    /// opens again. Nothing is deleted: what is cut out is kept in `repair-<unix ms>/` inside the
    /// store directory.
    #[arg(long)]
    pub repair: bool,
    /// Print one JSON object per store instead of text.
    #[arg(long)]
    pub json: bool,
}

/// How deep below DIR to look for store directories (`tasks/<task>/gen-<n>` is three).
const MAX_DEPTH: usize = 4;

fn is_store(dir: &Path) -> bool {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name == "LOCK"
                    || (name.starts_with("wal-") && name.ends_with(".log"))
                    || (name.starts_with("snapshot-") && name.ends_with(".snap"))
            })
        })
        .unwrap_or(false)
}

fn find_stores(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    if is_store(dir) {
        out.push(dir.to_path_buf());
        return;
    }
    if depth == MAX_DEPTH {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut dirs: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        find_stores(&d, depth + 1, out);
    }
}

pub fn run(cmd: StoreCommand) -> Result<()> {
    let StoreCommand::Check(args) = cmd;
    let mut stores = Vec::new();
    find_stores(&args.dir, 0, &mut stores);
    if stores.is_empty() {
        bail!("no store found under {}", args.dir.display());
    }
    let mut damaged = 0;
    for dir in stores {
        let mut report = mvserve::store::check(&dir)?;
        let repaired = if args.repair && (!report.is_ok() || report.torn_tail.is_some()) {
            let r = mvserve::store::repair(&dir)?;
            report = mvserve::store::check(&dir)?;
            Some(r)
        } else {
            None
        };
        if !report.is_ok() {
            damaged += 1;
        }
        if args.json {
            let v = serde_json::json!({"store": report, "ok": report.is_ok(), "repair": repaired});
            println!("{v}");
            continue;
        }
        let state = if report.is_ok() { "ok" } else { "DAMAGED" };
        println!(
            "{}: {state}: {} records in {} segments, {} live ids, snapshots {:?}",
            dir.display(),
            report.records,
            report.segments,
            report.live_ids,
            report.snapshots
        );
        if let Some(t) = &report.torn_tail {
            println!("  torn tail (an append a crash cut short; opening drops it): {t}");
        }
        for p in &report.problems {
            println!("  damage: {p}");
        }
        if let Some(r) = repaired {
            for m in &r.moved {
                println!("  repaired: moved out {m}");
            }
            if let Some(k) = &r.kept_in {
                println!("  the bytes moved out are kept in {}", k.display());
            }
        }
    }
    if damaged > 0 {
        std::process::exit(1);
    }
    Ok(())
}
