//! The search page in a real browser: Debian's `chromium` driven through `chromedriver`
//! (WebDriver, fantoccini) against the real binary. Uploads a real clip, searches, sees the hit
//! with its thumbnail and score, opens it, plays and seeks it (Range requests), deletes it; a bad
//! upload shows the server's error message; with keys on, the page shows the 401, takes a key and
//! then works. The browser console must stay free of errors, except the network-status lines of
//! the requests this test makes fail on purpose. Screenshots go to
//! `$CARGO_TARGET_TMPDIR/page_browser/` (under `target/tmp/`).
//!
//! Outside CI the test skips with a notice when chromium or chromedriver is missing; under CI
//! (`CI` set) that is a failure: `.ci/run` installs both.

use crate::common;

use common::server::*;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const CHROMIUM: &str = "/usr/bin/chromium";

fn have_browser() -> bool {
    let ok = Path::new(CHROMIUM).exists()
        && Command::new("chromedriver")
            .arg("--version")
            .output()
            .is_ok();
    if !ok {
        if std::env::var_os("CI").is_some() {
            panic!("page_browser: chromium/chromedriver not found, and CI must run this test");
        }
        eprintln!("NOTICE: page_browser skipped: chromium and chromium-driver are not installed");
    }
    ok
}

/// `chromedriver` on a free port; killed on drop.
struct Driver {
    child: Child,
    url: String,
}

impl Driver {
    fn start() -> Driver {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting chromedriver");
        let url = format!("http://127.0.0.1:{port}");
        let t0 = Instant::now();
        while ureq::get(&format!("{url}/status")).call().is_err() {
            assert!(
                t0.elapsed() < Duration::from_secs(20),
                "chromedriver never answered"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver { child, url }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// chromedriver's log endpoint (not in W3C WebDriver, so fantoccini has no method for it):
/// the browser console entries since the last call.
#[derive(Debug)]
struct BrowserLog;

impl fantoccini::wd::WebDriverCompatibleCommand for BrowserLog {
    fn endpoint(
        &self,
        base: &url::Url,
        session: Option<&str>,
    ) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/se/log", session.unwrap_or_default()))
    }
    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (
            http::Method::POST,
            Some(json!({"type": "browser"}).to_string()),
        )
    }
}

/// Console errors since the last call; `expected` lists the fragments of the ones this test
/// provoked on purpose (e.g. "status of 401"), each of which must have appeared.
async fn console_errors(c: &Client, phase: &str, expected: &[&str]) {
    let log = c
        .issue_cmd(BrowserLog)
        .await
        .expect("reading the browser log");
    let errors: Vec<String> = log
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or_default()
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    for want in expected {
        assert!(
            errors.iter().any(|e| e.contains(want)),
            "{phase}: expected a console line with {want:?}, got {errors:?}"
        );
    }
    let unexpected: Vec<_> = errors
        .iter()
        .filter(|e| !expected.iter().any(|w| e.contains(w)))
        .collect();
    assert!(
        unexpected.is_empty(),
        "{phase}: console errors {unexpected:?}"
    );
}

fn shots_dir() -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join("page_browser");
    std::fs::create_dir_all(&d).unwrap();
    d
}

async fn shot(c: &Client, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    let path = shots_dir().join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    eprintln!("screenshot: {}", path.display());
}

async fn browser(driver: &Driver) -> Client {
    let caps = json!({
        "goog:chromeOptions": {
            "binary": CHROMIUM,
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1200,1400", "--mute-audio"]
        },
        "goog:loggingPrefs": {"browser": "ALL"}
    });
    let Value::Object(caps) = caps else {
        unreachable!()
    };
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(&driver.url)
        .await
        .expect("a chromium session")
}

/// Waits for a JavaScript expression to be truthy; returns its value.
async fn until(c: &Client, what: &str, expr: &str) -> Value {
    let t0 = Instant::now();
    loop {
        let v = c
            .execute(&format!("return ({expr});"), vec![])
            .await
            .unwrap_or(Value::Null);
        if !(v.is_null() || v == false || v == "") {
            return v;
        }
        if t0.elapsed() > Duration::from_secs(30) {
            let status = c
                .execute(
                    "return document.getElementById('status').textContent;",
                    vec![],
                )
                .await
                .unwrap_or(Value::Null);
            panic!("timed out waiting for {what} ({expr}); status line: {status}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn status_line(c: &Client) -> String {
    c.find(Locator::Id("status"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

async fn fill(c: &Client, id: &str, text: &str) {
    let e = c.find(Locator::Id(id)).await.unwrap();
    e.clear().await.unwrap();
    e.send_keys(text).await.unwrap();
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .unwrap()
        .click()
        .await
        .unwrap();
}

/// Chooses a file in the upload form (and optionally an id) and submits it.
async fn upload(c: &Client, file: &Path, id: &str) {
    let input = c.find(Locator::Id("files")).await.unwrap();
    input.send_keys(file.to_str().unwrap()).await.unwrap();
    let chosen = c
        .execute(
            "return document.getElementById('files').files.length;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(chosen, 1, "the file input did not take {}", file.display());
    fill(c, "vid", id).await;
    click(c, "#upload button[type=submit]").await;
}

async fn search(c: &Client, q: &str) {
    fill(c, "q", q).await;
    click(c, "#search button[type=submit]").await;
}

fn fixture_video(name: &str) -> PathBuf {
    Path::new(VIDEOS).join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_page_in_chromium() {
    if !have_browser() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let s = Server::start(&dir.path().join("open"), &["--no-grpc"]);
    let driver = Driver::start();
    let c = browser(&driver).await;

    // The page lists the built-in task and shows what it is.
    c.goto(&s.url("/")).await.unwrap();
    until(
        &c,
        "the task list",
        "document.querySelector('#task option[value=clip]')",
    )
    .await;
    let info = until(
        &c,
        "the task view",
        "document.getElementById('taskinfo').textContent",
    )
    .await;
    let info = info.as_str().unwrap();
    assert!(
        info.contains("builtin") && info.contains("serving"),
        "{info}"
    );

    // Upload a real clip, with the progress bar on the way.
    upload(&c, &fixture_video("video7020.mp4"), "drive").await;
    until(
        &c,
        "the upload to finish",
        "document.getElementById('status').textContent.startsWith('Indexed into clip: drive')",
    )
    .await;
    assert!(c
        .find(Locator::Id("upload-progress"))
        .await
        .unwrap()
        .attr("hidden")
        .await
        .unwrap()
        .is_some());
    shot(&c, "1-uploaded").await;

    // Search: the hit with its score and a decoded thumbnail.
    search(&c, "a man is driving a car").await;
    until(
        &c,
        "a hit",
        "document.querySelector('#hits li[data-id=drive]')",
    )
    .await;
    let score: f64 = c
        .find(Locator::Css("#hits li[data-id=drive] .score"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
        .parse()
        .unwrap();
    let (_, api) = s.get("/search?task=clip&q=a%20man%20is%20driving%20a%20car&k=10");
    let api_score = api["hits"][0]["score"].as_f64().unwrap();
    assert!(
        (score - api_score).abs() < 1e-4,
        "page {score} vs API {api_score}"
    );
    let thumb_w = until(
        &c,
        "the thumbnail",
        "document.querySelector('#hits li[data-id=drive] img.thumb').naturalWidth",
    )
    .await;
    assert!(thumb_w.as_u64().unwrap() > 0);
    shot(&c, "2-hit").await;

    // Open it: a <video> that plays and seeks (the seek is a Range request).
    click(&c, "#hits li[data-id=drive] button.play").await;
    until(&c, "the player", "document.querySelector('#player video')").await;
    let played = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const v = document.querySelector('#player video');
               v.muted = true;
               v.addEventListener('error', () => done({error: v.error && v.error.code}));
               v.addEventListener('timeupdate', function t() {
                 if (v.currentTime > 0) { v.removeEventListener('timeupdate', t);
                   v.pause();
                   v.addEventListener('seeked', () => done({time: v.currentTime, duration: v.duration}), {once: true});
                   v.currentTime = 5; }
               });
               v.play().catch((e) => done({error: String(e)}));"#,
            vec![],
        )
        .await
        .expect("playing the video");
    eprintln!("player: {played}");
    assert!(
        played["error"].is_null(),
        "the video did not play: {played}"
    );
    assert!(
        (played["time"].as_f64().unwrap() - 5.0).abs() < 1.0,
        "{played}"
    );
    assert!(played["duration"].as_f64().unwrap() > 5.0, "{played}");
    shot(&c, "3-playing").await;

    // Delete it from the player.
    click(&c, "#player-delete").await;
    until(
        &c,
        "the delete",
        "document.getElementById('status').textContent === 'Deleted drive from clip'",
    )
    .await;
    assert_eq!(s.get("/videos/clip/drive").0, 404);
    assert!(c
        .find_all(Locator::Css("#hits li[data-id=drive]"))
        .await
        .unwrap()
        .is_empty());
    console_errors(&c, "upload, search, play, delete", &[]).await;

    // A bad upload shows the server's own message.
    let bad = dir.path().join("notes.mp4");
    std::fs::write(&bad, b"these are not the frames you are looking for").unwrap();
    let (st, direct) = s.post_form(
        "/index?task=clip",
        &[Part::File("notes.mp4", std::fs::read(&bad).unwrap())],
        None,
    );
    assert_eq!(st, 415, "{direct}");
    upload(&c, &bad, "").await;
    until(
        &c,
        "the upload error",
        "document.getElementById('status').textContent.startsWith('Upload failed')",
    )
    .await;
    let line = status_line(&c).await;
    let want = format!(
        "Upload failed: {}: {}",
        direct["error"]["code"].as_str().unwrap(),
        direct["error"]["message"].as_str().unwrap()
    );
    assert_eq!(line, want);
    shot(&c, "4-bad-upload").await;
    console_errors(&c, "bad upload", &["status of 415"]).await;
    c.close().await.unwrap();
    s.stop();

    // With keys: the 401 is shown, a key is taken, then everything works.
    let s = Server::start_with_keys(
        &dir.path().join("keyed"),
        r#"{"admin_keys": [], "keys": [{"key": "page-writer-key", "tasks": ["clip"], "scope": "write"}]}"#,
        &["--no-grpc", "--bind", "127.0.0.1"],
    );
    let c = browser(&driver).await;
    c.goto(&s.url("/")).await.unwrap();
    until(
        &c,
        "the 401",
        "document.getElementById('status').textContent.includes('unauthenticated')",
    )
    .await;
    shot(&c, "5-needs-key").await;
    console_errors(&c, "no key", &["status of 401"]).await;
    fill(&c, "apikey", "page-writer-key").await;
    click(&c, "#keyform button[type=submit]").await;
    until(
        &c,
        "the task list",
        "document.querySelector('#task option[value=clip]')",
    )
    .await;
    upload(&c, &fixture_video("realshort.mp4"), "short").await;
    until(
        &c,
        "the upload",
        "document.getElementById('status').textContent.startsWith('Indexed into clip: short')",
    )
    .await;
    search(&c, "a short clip").await;
    until(
        &c,
        "a hit",
        "document.querySelector('#hits li[data-id=short]')",
    )
    .await;
    until(
        &c,
        "the thumbnail",
        "document.querySelector('#hits li[data-id=short] img.thumb').naturalWidth",
    )
    .await;
    click(&c, "#hits li[data-id=short] button.play").await;
    let loaded = c
        .execute_async(
            r#"const done = arguments[arguments.length - 1];
               const t0 = Date.now();
               (function poll() {
                 const v = document.querySelector('#player video');
                 if (v && v.readyState >= 1) return done(v.duration);
                 if (v && v.error) return done('error ' + v.error.code);
                 if (Date.now() - t0 > 20000) return done('timeout');
                 setTimeout(poll, 100);
               })();"#,
            vec![],
        )
        .await
        .unwrap();
    assert!(
        loaded.as_f64().is_some_and(|d| d > 0.0),
        "keyed playback: {loaded}"
    );
    shot(&c, "6-keyed-playing").await;
    console_errors(&c, "with a key", &[]).await;
    c.close().await.unwrap();
    s.stop();
}
