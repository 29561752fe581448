//! A real `mvserve serve` child process on an ephemeral port with the tiny fixture backbone, and
//! the HTTP helpers the server tests share.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const VIDEOS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/videos");
pub const MODEL: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-clip");

pub struct Server {
    pub child: Child,
    pub base: String,
    /// `http://127.0.0.1:PORT` of the gRPC listener (`None` with `--no-grpc`).
    pub grpc: Option<String>,
    /// `http://127.0.0.1:PORT` of the `--metrics-port` listener, when asked for.
    pub metrics: Option<String>,
}

impl Server {
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mvserve"))
            .args([
                "serve",
                "--model-dir",
                MODEL,
                "--port",
                "0",
                "--frames",
                "4",
                "--grpc-port",
                "0",
            ])
            .arg("--data-dir")
            .arg(data)
            .arg("--adapters-dir")
            .arg(data.join("adapters"))
            .args(extra)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("starting mvserve");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .next()
            .expect("mvserve printed nothing")
            .expect("reading stdout");
        let addr = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}"));
        let port = addr.rsplit(':').next().unwrap();
        let base = format!("http://127.0.0.1:{port}");
        // The next listener's line: `<what> listening on ADDR`.
        let mut next_addr = |what: &str| {
            let line = lines
                .next()
                .unwrap_or_else(|| panic!("mvserve printed no {what} address"))
                .expect("reading stdout");
            let addr = line
                .strip_prefix(&format!("{what} listening on "))
                .unwrap_or_else(|| panic!("expected the {what} address, got {line:?}"));
            format!("http://127.0.0.1:{}", addr.rsplit(':').next().unwrap())
        };
        let grpc = (!extra.contains(&"--no-grpc")).then(|| next_addr("grpc"));
        let metrics = extra
            .contains(&"--metrics-port")
            .then(|| next_addr("metrics"));
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let s = Server {
            child,
            base,
            grpc,
            metrics,
        };
        let t0 = Instant::now();
        loop {
            if s.get("/readyz").0 == 200 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(60),
                "server never became ready"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// A server with API keys: `keys` (the JSON of an `--auth-file`) is written beside `data` as
    /// `keys.json`, and `--auth-file` names it before `extra`.
    pub fn start_with_keys(data: &Path, keys: &str, extra: &[&str]) -> Server {
        let file = data.parent().unwrap().join("keys.json");
        std::fs::write(&file, keys).unwrap();
        let mut args = vec!["--auth-file", file.to_str().unwrap()];
        args.extend_from_slice(extra);
        Server::start(data, &args)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn get(&self, path: &str) -> (u16, Value) {
        json_of(ureq::get(&self.url(path)).call())
    }

    pub fn get_key(&self, path: &str, key: &str) -> (u16, Value) {
        json_of(
            ureq::get(&self.url(path))
                .set("Authorization", &format!("Bearer {key}"))
                .call(),
        )
    }

    /// A GET with exactly these headers (see [`raw_get`]).
    pub fn raw_get(&self, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
        raw_get(&self.base, path, headers)
    }

    pub fn delete(&self, path: &str) -> (u16, Value) {
        json_of(ureq::delete(&self.url(path)).call())
    }

    pub fn post_form(&self, path: &str, parts: &[Part], key: Option<&str>) -> (u16, Value) {
        let (ct, body) = multipart(parts);
        let mut req = ureq::post(&self.url(path)).set("Content-Type", &ct);
        if let Some(k) = key {
            req = req.set("x-api-key", k);
        }
        json_of(req.send_bytes(&body))
    }

    /// Stops the server with SIGTERM (graceful) and waits for it.
    pub fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "server exited with {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("server did not stop on SIGTERM");
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A GET written by hand on a TCP stream, with exactly these headers (ureq would add its own
/// `Host`): for requests a browser under DNS rebinding or on another origin would send.
pub fn raw_get(base: &str, path: &str, headers: &[(&str, &str)]) -> (u16, Value) {
    use std::io::{Read, Write};
    let addr = base.strip_prefix("http://").unwrap();
    let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
    let mut req = format!("GET {path} HTTP/1.1\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    stream.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    stream.read_to_end(&mut resp).unwrap();
    let resp = String::from_utf8_lossy(&resp);
    let status = resp
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {resp:?}"));
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json = serde_json::from_str(body).ok();
    (
        status,
        json.unwrap_or_else(|| Value::String(body.to_string())),
    )
}

/// The value of one sample (`name{labels}`) in the server's `/metrics` text, 0 when absent.
pub fn metric(s: &Server, sample: &str) -> f64 {
    let (_, body) = s.get("/metrics");
    let text = body.as_str().unwrap().to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(sample)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

pub fn json_of(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let resp = match r {
        Ok(r) => r,
        Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = resp.status();
    let text = resp.into_string().unwrap_or_default();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

pub enum Part<'a> {
    Text(&'a str, &'a str),
    File(&'a str, Vec<u8>),
}

pub fn multipart(parts: &[Part]) -> (String, Vec<u8>) {
    let boundary = "mvserve-test-boundary-7d3f";
    let mut body = Vec::new();
    for p in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match p {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                );
                body.extend_from_slice(value.as_bytes());
            }
            Part::File(file, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"video\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
            }
        }
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

/// Writes a random adapter for the tiny backbone with `mvserve adapter new`; returns its digest
/// (`mvserve adapter inspect`).
pub fn new_adapter(out: &Path, task: &str, frames: usize) -> String {
    let frames = frames.to_string();
    let (ok, _, err) = super::mvserve(&[
        "adapter",
        "new",
        "--model-dir",
        MODEL,
        "--init",
        "random",
        "--task",
        task,
        "--frames",
        &frames,
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    let (ok, out, err) = super::mvserve(&["adapter", "inspect", "--json", out.to_str().unwrap()]);
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    v["digest"].as_str().unwrap().to_string()
}

/// Polls `ok` every 10 ms until it holds, failing after `limit`; returns how long it took.
pub fn wait_until(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(10));
    }
    t0.elapsed()
}

pub fn video(name: &str) -> Vec<u8> {
    std::fs::read(PathBuf::from(VIDEOS).join(name)).unwrap()
}

pub fn hit_ids(v: &Value) -> Vec<String> {
    v["hits"]
        .as_array()
        .unwrap_or_else(|| panic!("no hits in {v}"))
        .iter()
        .map(|h| h["id"].as_str().unwrap().to_string())
        .collect()
}

/// A clip that only the ffmpeg fallback decodes (VP9 WebM), for tests that exercise it next to
/// the in-process decoders; without ffmpeg (outside CI, with a notice) an in-process AVI instead,
/// so the rest of the test still runs.
pub fn ffmpeg_clip(test: &str) -> (&'static str, Vec<u8>) {
    if super::have_ffmpeg(test) {
        ("bunny.webm", video("big_buck_bunny_432_433.webm"))
    } else {
        ("bunny.avi", video("jPBxl9gFqNY_110_117.avi"))
    }
}
