//! The registry's adapter folder rules with a stand-in loader (the real one reads `AdapterFile`s):
//! files found at start become tasks, the watcher picks up new, replaced, bad and removed files,
//! a bad file never replaces a good model, and `clip` cannot be shadowed.

use mvserve::encode::{ClipModel, TaskModel};
use mvserve::registry::watch::{watch, AdapterLoader, Outcome};
use mvserve::registry::{ModelInfo, Registry};
use mvserve::store::StoreConfig;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A file holding `ok:<anything>` loads (its text is the digest); anything else is refused.
struct FakeLoader;
impl AdapterLoader for FakeLoader {
    fn load(&self, _task: &str, path: &Path) -> Result<(Arc<dyn TaskModel>, ModelInfo), String> {
        let text = std::fs::read_to_string(path).map_err(|e| e.to_string())?;
        if !text.starts_with("ok:") {
            return Err(format!("not an adapter: {text:?}"));
        }
        let info = ModelInfo {
            kind: "adapter".into(),
            digest: text.clone(),
            parameters: 1,
            file_bytes: text.len() as u64,
            file: Some(path.display().to_string()),
            loaded_at: 0.0,
            load_ms: 0.0,
            frames: 4,
            text_len: 32,
        };
        let model = Arc::new(ClipModel {
            digest: text,
            text_len: 32,
            frames: 4,
        });
        Ok((model, info))
    }
}

/// Writes beside and renames into place, as a deployment would.
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn digest(r: &Registry, task: &str) -> Option<String> {
    r.get(task).map(|t| t.current().model.digest().to_string())
}

#[test]
fn adapter_folder_is_watched_and_bad_files_never_replace_good_ones() {
    let data = tempfile::tempdir().unwrap();
    let adapters = tempfile::tempdir().unwrap();
    let dir = adapters.path();
    put(dir, "news.safetensors", "ok:news-1");
    put(dir, "broken.safetensors", "garbage");
    put(dir, "clip.safetensors", "ok:shadow");
    std::fs::write(dir.join("README.md"), "not an adapter").unwrap();

    let reg = Arc::new(Registry::new(data.path(), 32, StoreConfig::default()));
    let found = reg.scan(&FakeLoader, dir);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.contains(&("news".into(), Outcome::Added { generation: 0 })));
    assert!(matches!(
        found.iter().find(|f| f.0 == "broken").unwrap().1,
        Outcome::Rejected(_)
    ));
    assert!(matches!(
        found.iter().find(|f| f.0 == "clip").unwrap().1,
        Outcome::Rejected(_)
    ));
    assert_eq!(reg.names(), vec!["news".to_string()]);
    assert!(reg.rejected.read().contains_key("broken"));

    let _w = watch(
        reg.clone(),
        Arc::new(FakeLoader),
        dir,
        Duration::from_millis(50),
        Arc::new(|_, _, _| {}),
    )
    .unwrap();

    // A new file becomes a task.
    put(dir, "sports.safetensors", "ok:sports-1");
    wait_for("sports", || digest(&reg, "sports").is_some());
    assert_eq!(reg.get("sports").unwrap().current().number, 0);

    // A replaced file swaps the model into a new generation.
    put(dir, "sports.safetensors", "ok:sports-2");
    wait_for("the swap", || {
        digest(&reg, "sports").as_deref() == Some("ok:sports-2")
    });
    assert_eq!(reg.get("sports").unwrap().current().number, 1);

    // A corrupt replacement is refused; the good model keeps serving and /tasks says why.
    put(dir, "sports.safetensors", "truncated");
    wait_for("the rejection", || {
        reg.get("sports").unwrap().last_error.read().is_some()
    });
    assert_eq!(digest(&reg, "sports").as_deref(), Some("ok:sports-2"));
    assert_eq!(reg.status("sports").unwrap().generation, 1);

    // A task holding videos is not swapped (no re-embedding yet): the old generation serves on.
    let g = reg.get("news").unwrap().current();
    g.store
        .add("v1", &[1.0; 32], g.model.digest(), serde_json::json!({}))
        .unwrap();
    drop(g);
    put(dir, "news.safetensors", "ok:news-2");
    wait_for("the refusal", || {
        reg.get("news").unwrap().last_error.read().is_some()
    });
    assert_eq!(digest(&reg, "news").as_deref(), Some("ok:news-1"));
    assert_eq!(reg.status("news").unwrap().videos, 1);

    // A fixed broken file becomes a task; a removed file takes its task out of service.
    put(dir, "broken.safetensors", "ok:fixed");
    wait_for("the fixed file", || digest(&reg, "broken").is_some());
    assert!(!reg.rejected.read().contains_key("broken"));
    std::fs::remove_file(dir.join("sports.safetensors")).unwrap();
    wait_for("the removal", || reg.get("sports").is_none());
}

/// A stand-in for decode + encode: the vector is the file's bytes folded into 32 values. It waits
/// until the test releases it, so the test sees the old generation serve meanwhile.
struct FoldEmbedder(Arc<std::sync::atomic::AtomicBool>);
impl mvserve::registry::reembed::Reembedder for FoldEmbedder {
    fn embed(&self, model: &Arc<dyn TaskModel>, original: &Path) -> Result<Vec<f32>, String> {
        while !self.0.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let bytes = std::fs::read(original).map_err(|e| e.to_string())?;
        let mut v = vec![1.0f32; 32];
        for (i, b) in bytes.iter().enumerate() {
            v[i % 32] += *b as f32;
        }
        v[0] += model.digest().len() as f32;
        Ok(v)
    }
}

#[test]
fn replaced_adapter_re_embeds_then_cuts_over() {
    let data = tempfile::tempdir().unwrap();
    let adapters = tempfile::tempdir().unwrap();
    let dir = adapters.path();
    put(dir, "news.safetensors", "ok:news-1");
    let reg = Arc::new(Registry::new(data.path(), 32, StoreConfig::default()));
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    *reg.reembedder.write() = Some(Arc::new(FoldEmbedder(release.clone())));
    reg.scan(&FakeLoader, dir);
    // Five stored videos with originals, as uploads leave them.
    store_videos(&reg, "news", 5);
    put(dir, "news.safetensors", "ok:news-2");
    let task = reg.get("news").unwrap();
    let o = reg.apply_file(&FakeLoader, "news", &dir.join("news.safetensors"));
    assert_eq!(o, Outcome::Reembedding { generation: 1 });
    // Meanwhile the old generation answers, and a write to it is carried over.
    assert_eq!(task.current().number, 0);
    assert_eq!(reg.status("news").unwrap().pending_generation, Some(1));
    {
        let _gate = task.write_gate.read();
        let cur = task.current();
        assert_eq!(cur.number, 0);
        cur.store.delete("v4").unwrap();
    }
    // A second replacement while re-embedding is refused, not queued.
    put(dir, "news.safetensors", "ok:news-3");
    let o = reg.apply_file(&FakeLoader, "news", &dir.join("news.safetensors"));
    assert!(matches!(o, Outcome::Rejected(_)), "{o:?}");
    assert_eq!(task.current().number, 0);
    release.store(true, std::sync::atomic::Ordering::Release);
    wait_for("the cutover", || task.current().number == 1);
    let g1 = task.current();
    assert_eq!(g1.model.digest(), "ok:news-2");
    let mut ids = g1.store.ids();
    ids.sort();
    assert_eq!(ids, vec!["v0", "v1", "v2", "v3"]);
    let r = g1.store.get("v2").unwrap();
    assert_eq!(r.adapter_digest, "ok:news-2");
    assert_eq!(r.meta["n"], 2);
    assert!(g1
        .store
        .blob_path("v2", mvserve::store::BlobKind::Original)
        .is_some());
    assert_eq!(reg.status("news").unwrap().pending_generation, None);
    assert_eq!(reg.recorded_generation("news"), Some(1));
}

/// Fails once for `flaky` (a transient error) and always for `broken`, if set.
struct FailingEmbedder {
    flaky: String,
    broken: Option<String>,
    failed_once: std::sync::Mutex<bool>,
}
impl mvserve::registry::reembed::Reembedder for FailingEmbedder {
    fn embed(&self, _model: &Arc<dyn TaskModel>, original: &Path) -> Result<Vec<f32>, String> {
        let bytes = std::fs::read_to_string(original).map_err(|e| e.to_string())?;
        if self.broken.as_deref() == Some(bytes.as_str()) {
            return Err("cannot decode".into());
        }
        if bytes == self.flaky {
            let mut once = self.failed_once.lock().unwrap();
            if !*once {
                *once = true;
                return Err("queue full".into());
            }
        }
        Ok(vec![2.0; 32])
    }
}

/// Stores `n` videos (ids v0.., originals with contents "video 0".., meta {"n": i}) in the
/// task's current generation, as uploads leave them.
fn store_videos(reg: &Registry, task: &str, n: usize) {
    let g = reg.get(task).unwrap().current();
    std::fs::create_dir_all(reg.tmp_dir()).unwrap();
    for i in 0..n {
        let up = reg.tmp_dir().join(format!("up{i}"));
        std::fs::write(&up, format!("video {i}")).unwrap();
        let id = format!("v{i}");
        g.store
            .put_blob(&id, mvserve::store::BlobKind::Original, &up)
            .unwrap();
        g.store
            .add(
                &id,
                &[1.0; 32],
                g.model.digest(),
                serde_json::json!({"n": i}),
            )
            .unwrap();
    }
}

#[test]
fn re_embedding_retries_and_never_drops_a_video() {
    // A transient failure is retried: the cutover carries every video.
    let data = tempfile::tempdir().unwrap();
    let adapters = tempfile::tempdir().unwrap();
    let dir = adapters.path();
    put(dir, "news.safetensors", "ok:news-1");
    let reg = Arc::new(Registry::new(data.path(), 32, StoreConfig::default()));
    *reg.reembedder.write() = Some(Arc::new(FailingEmbedder {
        flaky: "video 1".into(),
        broken: None,
        failed_once: Default::default(),
    }));
    reg.scan(&FakeLoader, dir);
    store_videos(&reg, "news", 3);
    put(dir, "news.safetensors", "ok:news-2");
    let task = reg.get("news").unwrap();
    let o = reg.apply_file(&FakeLoader, "news", &dir.join("news.safetensors"));
    assert_eq!(o, Outcome::Reembedding { generation: 1 });
    wait_for("the cutover", || task.current().number == 1);
    assert_eq!(task.current().store.len(), 3);
    assert!(task.last_error.read().is_none());

    // A video that fails every time stops the cutover: the old generation keeps all three.
    let data = tempfile::tempdir().unwrap();
    put(dir, "news.safetensors", "ok:news-1");
    let reg = Arc::new(Registry::new(data.path(), 32, StoreConfig::default()));
    *reg.reembedder.write() = Some(Arc::new(FailingEmbedder {
        flaky: String::new(),
        broken: Some("video 2".into()),
        failed_once: Default::default(),
    }));
    reg.scan(&FakeLoader, dir);
    store_videos(&reg, "news", 3);
    put(dir, "news.safetensors", "ok:news-2");
    let task = reg.get("news").unwrap();
    let o = reg.apply_file(&FakeLoader, "news", &dir.join("news.safetensors"));
    assert_eq!(o, Outcome::Reembedding { generation: 1 });
    wait_for("the refusal", || task.pending.lock().is_none());
    let err = task.last_error.read().clone().unwrap();
    assert!(err.contains("v2") && err.contains("not installed"), "{err}");
    assert_eq!(task.current().number, 0);
    assert_eq!(task.current().model.digest(), "ok:news-1");
    assert_eq!(task.current().store.len(), 3);
    assert!(!data.path().join("tasks/news/gen-1").exists());
    assert_eq!(reg.recorded_generation("news"), Some(0));
}
