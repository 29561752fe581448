//! The real Milvus the Milvus tests run against: the shared server named by
//! `MVSERVE_TEST_MILVUS` (CI starts one with `.ci/milvus start`), and a server of a test's own
//! (`.ci/milvus spawn`) for a test that kills and restarts Milvus itself.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared server's URL; `None` (with a notice) outside CI when it is not set. In CI
/// (`CI` set) a missing server fails the test instead of skipping it.
pub fn url() -> Option<String> {
    match std::env::var("MVSERVE_TEST_MILVUS") {
        Ok(u) => Some(u),
        Err(_) => {
            assert!(
                std::env::var("CI").is_err(),
                "CI must run the Milvus tests: set MVSERVE_TEST_MILVUS (see .ci/run)"
            );
            eprintln!(
                "skipped: set MVSERVE_TEST_MILVUS=milvus://HOST:PORT (from .ci/milvus start)"
            );
            None
        }
    }
}

/// A Milvus of one test's own, on the binaries `.ci/milvus start` set up, its data in `dir`
/// and every port moved up by `offset`; killed when dropped.
pub struct OwnMilvus {
    dir: PathBuf,
    offset: u16,
    child: Option<Child>,
}

impl OwnMilvus {
    /// Starts it and waits until it is healthy. `None` (with a notice) outside CI when
    /// `.ci/milvus start` has not set up Milvus here; in CI that fails the test.
    pub fn start(dir: &Path, offset: u16) -> Option<OwnMilvus> {
        let mut m = OwnMilvus {
            dir: dir.to_path_buf(),
            offset,
            child: None,
        };
        if !m.run() {
            assert!(
                std::env::var("CI").is_err(),
                "CI must run the Milvus restart test: `.ci/milvus spawn` could not start a server"
            );
            eprintln!("skipped: run `.ci/milvus start` first (spawn uses its binaries)");
            return None;
        }
        Some(m)
    }

    /// The `--store` URL of this server (`query` appended after `?`).
    pub fn store_url(&self, query: &str) -> String {
        format!("milvus://127.0.0.1:{}?{query}", 19530 + self.offset)
    }

    /// `kill -9`: what a crash or an OOM kill does. (Milvus Lite's graceful stop does not
    /// finish: its proxy keeps retrying the root coordinator it already stopped, and its own
    /// launcher kills it after a second.)
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts it again on the same data and ports; waits until healthy.
    pub fn restart(&mut self) {
        self.kill();
        assert!(self.run(), "Milvus did not come back on its data");
    }

    fn run(&mut self) -> bool {
        let log = std::fs::File::create(self.dir.with_extension("spawn.log")).unwrap();
        std::fs::create_dir_all(&self.dir).unwrap();
        let mut child = Command::new(super::root().join(".ci/milvus"))
            .arg("spawn")
            .arg(&self.dir)
            .arg(self.offset.to_string())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("running .ci/milvus spawn");
        let health = format!("http://127.0.0.1:{}/healthz", 9091 + self.offset);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(120) {
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if ureq::get(&health)
                .timeout(Duration::from_secs(2))
                .call()
                .is_ok()
            {
                self.child = Some(child);
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "the spawned Milvus was not healthy after 120 s; see {}",
            self.dir.join("logs/server.log").display()
        );
    }
}

impl Drop for OwnMilvus {
    fn drop(&mut self) {
        self.kill();
    }
}
