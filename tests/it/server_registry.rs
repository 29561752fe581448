//! The registry's adapter folder rules with a stand-in loader (the real one reads `AdapterFile`s):
//! files found at start become tasks, the watcher picks up new, replaced, bad and removed files,
//! a bad file never replaces a good model, and `clip` cannot be shadowed.

use mvserve::encode::{ClipModel, EncodeError, TaskModel};
use mvserve::registry::reembed::ReembedError;
use mvserve::registry::watch::{watch, AdapterLoader, Outcome};
use mvserve::registry::{ModelInfo, Registry};
use mvserve::store::{BlobKind, BlobVersion, NewRecord, StoreConfig};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

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

    fn keep_copy(&self, digest: &str, dst: &Path) -> Result<(), String> {
        // The digest is the file's text.
        std::fs::write(dst, digest).map_err(|e| e.to_string())
    }
}

/// A data folder, and an adapters folder holding `news.safetensors` with digest `ok:news-1`.
fn news_dirs() -> (tempfile::TempDir, tempfile::TempDir) {
    let data = tempfile::tempdir().unwrap();
    let adapters = tempfile::tempdir().unwrap();
    put(adapters.path(), "news.safetensors", "ok:news-1");
    (data, adapters)
}

/// A registry of 32-d vectors over `data`.
fn registry(data: &tempfile::TempDir) -> Arc<Registry> {
    Arc::new(Registry::new(data.path(), 32, StoreConfig::default()))
}

/// Writes beside and renames into place, as a deployment would.
fn put(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// Waits up to 10 s.
fn wait_for(what: &str, f: impl FnMut() -> bool) {
    crate::common::server::wait_until(what, Duration::from_secs(10), f);
}

fn digest(r: &Registry, task: &str) -> Option<String> {
    r.get(task).map(|t| t.current().model.digest().to_string())
}

#[test]
fn adapter_folder_is_watched_and_bad_files_never_replace_good_ones() {
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    put(dir, "broken.safetensors", "garbage");
    put(dir, "clip.safetensors", "ok:shadow");
    std::fs::write(dir.join("README.md"), "not an adapter").unwrap();

    let reg = registry(&data);
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
    assert!(reg.rejected().contains_key("broken"));

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
        reg.get("sports").unwrap().last_error().is_some()
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
        reg.get("news").unwrap().last_error().is_some()
    });
    assert_eq!(digest(&reg, "news").as_deref(), Some("ok:news-1"));
    assert_eq!(reg.status("news").unwrap().videos, Some(1));

    // A fixed broken file becomes a task; a removed file takes its task out of service.
    put(dir, "broken.safetensors", "ok:fixed");
    wait_for("the fixed file", || digest(&reg, "broken").is_some());
    assert!(!reg.rejected().contains_key("broken"));
    std::fs::remove_file(dir.join("sports.safetensors")).unwrap();
    wait_for("the removal", || reg.get("sports").is_none());
}

/// A file renamed into the folder is whole, so it is loaded at once, without waiting for the
/// debounce; a file written in place waits until it has been quiet for the debounce, so a
/// half-written file (here one the loader would accept) is never loaded.
#[test]
fn a_renamed_file_is_loaded_at_once_and_one_written_in_place_only_when_quiet() {
    use std::io::Write;
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    let reg = registry(&data);
    reg.scan(&FakeLoader, dir);
    // Long enough that "well before the debounce" survives a loaded machine.
    let debounce = Duration::from_secs(4);
    let seen = Arc::new(parking_lot::Mutex::new(Vec::<(String, Outcome)>::new()));
    let _w = {
        let seen = seen.clone();
        watch(
            reg.clone(),
            Arc::new(FakeLoader),
            dir,
            debounce,
            Arc::new(move |task: &str, o: &Outcome, _| seen.lock().push((task.into(), o.clone()))),
        )
        .unwrap()
    };

    // A rename swaps the model well before the debounce would have passed.
    let t0 = std::time::Instant::now();
    put(dir, "news.safetensors", "ok:news-2");
    wait_for("the renamed file", || {
        digest(&reg, "news").as_deref() == Some("ok:news-2")
    });
    assert!(
        t0.elapsed() < debounce / 2,
        "a rename took {:?} to be loaded (debounce {debounce:?})",
        t0.elapsed()
    );

    // Written in place, in two parts with a pause shorter than the debounce: nothing is loaded
    // until the file is whole and quiet.
    let path = dir.join("sports.safetensors");
    let mut f = std::fs::File::create(&path).unwrap();
    f.write_all(b"ok:spo").unwrap();
    f.flush().unwrap();
    std::thread::sleep(debounce / 2);
    assert!(
        reg.get("sports").is_none(),
        "a half-written file was loaded"
    );
    f.write_all(b"rts-1").unwrap();
    drop(f);
    let last_write = std::time::Instant::now();
    wait_for("the file written in place", || {
        digest(&reg, "sports").as_deref() == Some("ok:sports-1")
    });
    assert!(
        last_write.elapsed() >= debounce - Duration::from_millis(100),
        "loaded {:?} after the last write (debounce {debounce:?})",
        last_write.elapsed()
    );
    let sports: Vec<Outcome> = seen
        .lock()
        .iter()
        .filter(|(t, _)| t == "sports")
        .map(|(_, o)| o.clone())
        .collect();
    assert_eq!(sports, vec![Outcome::Added { generation: 0 }]);
}

/// A stand-in for decode + encode: the vector is the file's bytes folded into 32 values. It waits
/// until the test releases it, so the test sees the old generation serve meanwhile.
struct FoldEmbedder(Arc<std::sync::atomic::AtomicBool>);
impl mvserve::registry::reembed::Reembedder for FoldEmbedder {
    fn embed(&self, model: &Arc<dyn TaskModel>, original: &Path) -> Result<Vec<f32>, ReembedError> {
        while !self.0.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let bytes = std::fs::read(original)?;
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
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    let reg = registry(&data);
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    reg.set_reembedder(Arc::new(FoldEmbedder(release.clone())));
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
        let _gate = task.write_guard();
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
    let mut ids = g1.store.ids().unwrap();
    ids.sort();
    assert_eq!(ids, vec!["v0", "v1", "v2", "v3"]);
    let r = g1.store.get("v2").unwrap().unwrap();
    assert_eq!(r.adapter_digest, "ok:news-2");
    assert_eq!(r.meta["n"], 2);
    assert!(g1
        .store
        .blob_path("v2", BlobKind::Original)
        .unwrap()
        .is_some());
    assert_eq!(reg.status("news").unwrap().pending_generation, None);
    assert_eq!(reg.recorded_generation("news").unwrap(), Some(1));
}

/// Fails once for `flaky` (a transient error) and always for `broken`, if set.
struct FailingEmbedder {
    flaky: String,
    broken: Option<String>,
    failed_once: std::sync::Mutex<bool>,
}
impl mvserve::registry::reembed::Reembedder for FailingEmbedder {
    fn embed(
        &self,
        _model: &Arc<dyn TaskModel>,
        original: &Path,
    ) -> Result<Vec<f32>, ReembedError> {
        let bytes = std::fs::read_to_string(original)?;
        if self.broken.as_deref() == Some(bytes.as_str()) {
            return Err(ReembedError::Decode("cannot decode".into()));
        }
        if bytes == self.flaky {
            let mut once = self.failed_once.lock().unwrap();
            if !*once {
                *once = true;
                return Err(EncodeError::Overloaded("video").into());
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
        let blobs = BlobVersion::fresh();
        g.store
            .put_blob(&id, blobs, BlobKind::Original, &up)
            .unwrap();
        let record = NewRecord {
            id,
            vector: vec![1.0; 32],
            meta: serde_json::json!({"n": i}),
            blobs,
        };
        g.store.add_records(g.model.digest(), vec![record]).unwrap();
    }
}

#[test]
fn re_embedding_retries_and_never_drops_a_video() {
    // A transient failure is retried: the cutover carries every video.
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    let reg = registry(&data);
    reg.set_reembedder(Arc::new(FailingEmbedder {
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
    assert_eq!(task.current().store.count().unwrap(), 3);
    assert!(task.last_error().is_none());

    // A video that fails every time stops the cutover: the old generation keeps all three.
    let data = tempfile::tempdir().unwrap();
    put(dir, "news.safetensors", "ok:news-1");
    let reg = registry(&data);
    reg.set_reembedder(Arc::new(FailingEmbedder {
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
    wait_for("the refusal", || task.pending().is_none());
    let err = task.last_error().unwrap();
    assert!(err.contains("v2") && err.contains("not installed"), "{err}");
    assert_eq!(task.current().number, 0);
    assert_eq!(task.current().model.digest(), "ok:news-1");
    assert_eq!(task.current().store.count().unwrap(), 3);
    assert!(!data.path().join("tasks/news/gen-1").exists());
    assert_eq!(reg.recorded_generation("news").unwrap(), Some(0));
}

/// The ids of a task's current generation, sorted.
fn ids_of(reg: &Registry, task: &str) -> Vec<String> {
    let mut ids = reg.get(task).unwrap().current().store.ids().unwrap();
    ids.sort();
    ids
}

/// Review item: a restart after the adapter file changed while the server was down installed the
/// next generation empty, so every video dropped out of search. Now the old generation comes back
/// with the adapter it was made with (its own copy), answers while the videos are re-embedded,
/// and the new generation carries every video; the replaced one is removed from disk.
#[test]
fn restart_after_the_adapter_changed_while_down_keeps_every_video() {
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    {
        let reg = registry(&data);
        reg.scan(&FakeLoader, dir);
        store_videos(&reg, "news", 3);
    }
    // The server is down; the operator replaces the file; the server starts again.
    put(dir, "news.safetensors", "ok:news-2");
    let reg = registry(&data);
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    reg.set_reembedder(Arc::new(FoldEmbedder(release.clone())));
    let out = reg.scan(&FakeLoader, dir);
    assert_eq!(
        out,
        vec![("news".to_string(), Outcome::Reembedding { generation: 1 })]
    );
    let task = reg.get("news").unwrap();
    assert_eq!(task.current().number, 0);
    assert_eq!(task.current().model.digest(), "ok:news-1");
    assert_eq!(ids_of(&reg, "news"), vec!["v0", "v1", "v2"]);
    release.store(true, std::sync::atomic::Ordering::Release);
    wait_for("the cutover", || task.current().number == 1);
    assert_eq!(task.current().model.digest(), "ok:news-2");
    assert_eq!(ids_of(&reg, "news"), vec!["v0", "v1", "v2"]);
    assert_eq!(reg.recorded_generation("news").unwrap(), Some(1));
    // Nothing holds generation 0 any more: its directory goes.
    wait_for("generation 0 removed", || {
        !data.path().join("tasks/news/gen-0").exists()
    });
    assert!(data
        .path()
        .join("tasks/news/gen-1/adapter.safetensors")
        .exists());
}

/// Review item: after a crash mid re-embedding, the restart installed the half-built generation.
/// It is discarded and rebuilt from the generation that was served.
#[test]
fn a_half_built_generation_left_by_a_crash_is_discarded_and_rebuilt() {
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    {
        let reg = registry(&data);
        reg.scan(&FakeLoader, dir);
        store_videos(&reg, "news", 3);
        // What a crash mid re-embedding leaves: generation 1 holding part of the videos (and
        // here one that generation 0 never had), CURRENT still naming generation 0.
        put(dir, "news.safetensors", "ok:news-2");
        let (model, info) = FakeLoader
            .load("news", &dir.join("news.safetensors"))
            .unwrap();
        let g1 = reg.open_generation("news", 1, model, info).unwrap();
        g1.store
            .add("ghost", &[3.0; 32], "ok:news-2", serde_json::json!({}))
            .unwrap();
        g1.store
            .add("v0", &[3.0; 32], "ok:news-2", serde_json::json!({}))
            .unwrap();
    }
    let reg = registry(&data);
    let release = Arc::new(std::sync::atomic::AtomicBool::new(true));
    reg.set_reembedder(Arc::new(FoldEmbedder(release)));
    reg.scan(&FakeLoader, dir);
    let task = reg.get("news").unwrap();
    wait_for("the cutover", || task.current().number == 1);
    assert_eq!(task.current().model.digest(), "ok:news-2");
    assert_eq!(ids_of(&reg, "news"), vec!["v0", "v1", "v2"]);
}

/// Review item: swapping the adapter of an empty task skipped the write gate, so an upload
/// acknowledged meanwhile landed in the generation being replaced and was lost. The swap now
/// waits for writers; an upload that got in first makes the task non-empty, so it is
/// re-embedded with it.
#[test]
fn an_empty_swap_waits_for_an_upload_in_flight() {
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    let reg = registry(&data);
    let release = Arc::new(std::sync::atomic::AtomicBool::new(true));
    reg.set_reembedder(Arc::new(FoldEmbedder(release)));
    reg.scan(&FakeLoader, dir);
    let task = reg.get("news").unwrap();
    put(dir, "news.safetensors", "ok:news-2");
    // An upload holds the gate (as `IndexBatch::commit` does) while the file is replaced.
    let gate = task.write_guard();
    let swap = {
        let reg = reg.clone();
        let path = dir.join("news.safetensors");
        std::thread::spawn(move || reg.apply_file(&FakeLoader, "news", &path))
    };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        task.current().number,
        0,
        "the swap must wait for the writer"
    );
    store_videos(&reg, "news", 1);
    drop(gate);
    let outcome = swap.join().unwrap();
    assert_eq!(outcome, Outcome::Reembedding { generation: 1 });
    wait_for("the cutover", || task.current().number == 1);
    assert_eq!(ids_of(&reg, "news"), vec!["v0"]);
}

/// Deletes the video it is not embedding on its `at`-th call, from the old generation's store,
/// and makes deletes in the new generation fail from then on: a delete that lands while the
/// carry-over runs and cannot be carried over.
struct DeletingEmbedder {
    calls: std::sync::atomic::AtomicUsize,
    at: usize,
    old: Arc<dyn mvserve::store::VectorStore>,
    new_dir: std::path::PathBuf,
    deleted: std::sync::Mutex<Option<String>>,
}
impl mvserve::registry::reembed::Reembedder for DeletingEmbedder {
    fn embed(
        &self,
        _model: &Arc<dyn TaskModel>,
        original: &Path,
    ) -> Result<Vec<f32>, ReembedError> {
        let n = self.calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let bytes = std::fs::read_to_string(original)?;
        if n == self.at {
            let this = format!("v{}", bytes.trim_start_matches("video "));
            let victim = self
                .old
                .ids()
                .unwrap()
                .into_iter()
                .find(|id| *id != this)
                .unwrap();
            mvserve::store::fail_next_deletes(&self.new_dir, 100);
            assert!(self.old.delete(&victim).unwrap());
            *self.deleted.lock().unwrap() = Some(victim);
        }
        Ok(vec![2.0; 32])
    }
}

/// Review item: a delete that failed in the new generation was ignored, so the deleted video came
/// back at the cutover. Now it is retried, and one that keeps failing stops the cutover.
#[test]
fn a_delete_that_cannot_be_carried_over_stops_the_cutover() {
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    let reg = registry(&data);
    reg.scan(&FakeLoader, dir);
    store_videos(&reg, "news", 3);
    let task = reg.get("news").unwrap();
    let embedder = Arc::new(DeletingEmbedder {
        calls: Default::default(),
        at: 3,
        old: task.current().store.clone(),
        new_dir: reg.generation_dir("news", 1),
        deleted: Default::default(),
    });
    reg.set_reembedder(embedder.clone());
    put(dir, "news.safetensors", "ok:news-2");
    let o = reg.apply_file(&FakeLoader, "news", &dir.join("news.safetensors"));
    assert_eq!(o, Outcome::Reembedding { generation: 1 });
    wait_for("the end of the re-embedding", || task.pending().is_none());
    let victim = embedder.deleted.lock().unwrap().clone().unwrap();
    assert_eq!(task.current().number, 0, "no cutover");
    assert!(
        task.current().store.get(&victim).unwrap().is_none(),
        "still deleted"
    );
    let err = task.last_error().unwrap();
    assert!(err.contains(&victim), "{err}");
}

/// Review item: a re-embedding that finished after the task's adapter file was removed put the
/// task back in service. The finished generation is discarded instead.
#[test]
fn a_re_embedding_that_ends_after_the_file_was_removed_does_not_bring_the_task_back() {
    let (data, adapters) = news_dirs();
    let dir = adapters.path();
    let reg = registry(&data);
    let release = Arc::new(std::sync::atomic::AtomicBool::new(false));
    reg.set_reembedder(Arc::new(FoldEmbedder(release.clone())));
    reg.scan(&FakeLoader, dir);
    store_videos(&reg, "news", 2);
    let task = reg.get("news").unwrap();
    put(dir, "news.safetensors", "ok:news-2");
    let o = reg.apply_file(&FakeLoader, "news", &dir.join("news.safetensors"));
    assert_eq!(o, Outcome::Reembedding { generation: 1 });
    std::fs::remove_file(dir.join("news.safetensors")).unwrap();
    let o = reg.apply_file(&FakeLoader, "news", &dir.join("news.safetensors"));
    assert_eq!(o, Outcome::Removed);
    release.store(true, std::sync::atomic::Ordering::Release);
    wait_for("the end of the re-embedding", || task.pending().is_none());
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        reg.get("news").is_none(),
        "the task must stay out of service"
    );
    assert_eq!(reg.recorded_generation("news").unwrap(), Some(0));
    assert!(!data.path().join("tasks/news/gen-1").exists());
    // Its data stays: the file coming back serves the same videos.
    drop(task);
    put(dir, "news.safetensors", "ok:news-1");
    reg.apply_file(&FakeLoader, "news", &dir.join("news.safetensors"));
    assert_eq!(ids_of(&reg, "news"), vec!["v0", "v1"]);
}
