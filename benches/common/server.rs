//! A `mvserve serve` child on an ephemeral port, for the benchmarks that measure the real
//! binary over HTTP; killed when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Server {
    pub child: Child,
    pub base: String,
}

impl Server {
    /// Serves `model` from `data` (adapters in `data/adapters`) with `extra` flags; returns once
    /// `/readyz` answers 200 (a full-size model takes a while to load: up to 10 minutes).
    pub fn start(model: &Path, data: &Path, extra: &[&str]) -> Server {
        std::fs::create_dir_all(data.join("adapters")).unwrap();
        // MVSERVE_BENCH_BIN: another build of the server (an A/B against an older commit in one
        // run); this build's binary by default.
        let bin = std::env::var_os("MVSERVE_BENCH_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_mvserve").into());
        let mut child = Command::new(bin)
            .args(["serve", "--port", "0"])
            .arg("--model-dir")
            .arg(model)
            .arg("--data-dir")
            .arg(data)
            .arg("--adapters-dir")
            .arg(data.join("adapters"))
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("MVSERVE_BENCH_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines.next().unwrap().unwrap();
        let port = line.rsplit(':').next().unwrap().to_string();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let s = Server {
            child,
            base: format!("http://127.0.0.1:{port}"),
        };
        let t0 = Instant::now();
        while ureq::get(&format!("{}/readyz", s.base)).call().is_err() {
            assert!(t0.elapsed() < Duration::from_secs(600), "never ready");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
