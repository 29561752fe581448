//! Indexing uploads, for both transports: each video is streamed into a file under
//! `<data-dir>/tmp/` with the size cap checked as bytes arrive (never held whole in memory), then
//! every video of the request is decoded and encoded, and only when all of them succeeded are
//! they stored, with one log write (all or nothing).
//!
//! The transport drives an [`IndexBatch`]: [`IndexBatch::begin`] takes one of the server's upload
//! slots before the first byte of the body is read (so memory and disk per request are bounded
//! up front: a full server answers 503 at once), [`IndexBatch::open_video`] for each video, then
//! [`Spool::write`] per chunk, [`IndexBatch::push`] when its bytes end, [`IndexBatch::commit`].
//!
//! Each video's files go into the store under a fresh blob version (while its frames are
//! encoded, so the fsyncs are off the critical path), so a re-upload of an id never overwrites
//! the files of the record that is still acknowledged; if the commit fails, or the request is
//! dropped, they are discarded and the old record keeps its own. The time of each stage is
//! recorded in `mvserve_ingest_stage_seconds`.

use super::service::{record, task_of, thumb_url};
use super::{ApiError, AppState};
use crate::registry::{Generation, Task};
use crate::store::moments::{self, Layout};
use crate::store::{BlobKind, BlobVersion, NewRecord, VectorStore};
use serde::Serialize;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncWriteExt;
use tokio::sync::OwnedSemaphorePermit;

/// Uploads and decodes take seconds each: a slot frees in about this long.
const RETRY_UPLOAD_S: u64 = 2;
/// The new generation is live when this is refused: sending again can go at once.
const RETRY_RESEND_S: u64 = 1;

static UPLOAD_SEQ: AtomicU64 = AtomicU64::new(0);

/// Removes the temporary files of a request however it ends.
pub(super) struct TmpFiles(pub(super) Vec<PathBuf>);
impl Drop for TmpFiles {
    fn drop(&mut self) {
        for p in &self.0 {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// One video's bytes on their way to a temporary file.
pub struct Spool {
    file: tokio::fs::File,
    path: PathBuf,
    bytes: u64,
    cap: u64,
}

impl Spool {
    /// A new temporary file under the server's `tmp` folder, named `{prefix}-{pid}-{n}`, taking
    /// at most `cap` bytes. The caller removes it (a [`TmpFiles`] that holds the path).
    pub(super) async fn create(
        state: &AppState,
        prefix: &str,
        cap: u64,
    ) -> Result<(Spool, PathBuf), ApiError> {
        let n = UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed);
        let path = state
            .tmp_dir
            .join(format!("{prefix}-{}-{n}", std::process::id()));
        let file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| ApiError::internal(format!("creating upload file: {e}")))?;
        let spool = Spool {
            file,
            path: path.clone(),
            bytes: 0,
            cap,
        };
        Ok((spool, path))
    }

    /// Ends the bytes: flushed to the file, whose path and length are returned.
    pub(super) async fn close(mut self) -> Result<(PathBuf, u64), ApiError> {
        self.file
            .flush()
            .await
            .map_err(|e| ApiError::internal(format!("writing upload: {e}")))?;
        Ok((self.path, self.bytes))
    }

    /// Appends a chunk; past the cap the upload is refused before the chunk is written.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.bytes += chunk.len() as u64;
        if self.bytes > self.cap {
            return Err(ApiError::too_large(format!(
                "a video may be at most {} bytes",
                self.cap
            )));
        }
        self.file
            .write_all(chunk)
            .await
            .map_err(|e| ApiError::internal(format!("writing upload: {e}")))
    }
}

/// One uploaded video waiting in a temporary file.
struct Upload {
    id: Option<String>,
    meta: Value,
    file_name: Option<String>,
    path: PathBuf,
    bytes: u64,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IndexedVideo {
    pub id: String,
    pub bytes: u64,
    /// Frames embedded.
    pub frames: usize,
    /// Container, codec, duration, size, fps, decoder, frame count.
    pub media: Value,
    pub thumbnail: String,
    /// Vectors stored for it: 1, or the number of its segments when it was indexed as moments
    /// (`--segment-seconds`).
    pub segments: usize,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct IndexResult {
    pub task: String,
    pub generation: u64,
    pub indexed: Vec<IndexedVideo>,
}

/// The videos of one index request, for one task.
pub struct IndexBatch {
    state: Arc<AppState>,
    task: Arc<Task>,
    gen: Arc<Generation>,
    uploads: Vec<Upload>,
    tmp: TmpFiles,
    t0: Instant,
    /// One of the server's upload slots, held until the request ends.
    _slot: OwnedSemaphorePermit,
}

impl IndexBatch {
    /// Resolves the task and takes an upload slot; an unknown task, a server that is not ready
    /// and a server whose slots are all taken are refused before any byte is read.
    pub fn begin(state: &Arc<AppState>, task: Option<&str>) -> Result<IndexBatch, ApiError> {
        let t0 = Instant::now();
        super::service::refuse_writes_on_replica(state)?;
        let (task, gen) = task_of(state, task)?;
        let slot = state
            .upload_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::overloaded(
                    format!(
                        "{} uploads are already in progress",
                        state.config.max_concurrent_uploads
                    ),
                    RETRY_UPLOAD_S,
                )
            })?;
        Ok(IndexBatch {
            state: state.clone(),
            task,
            gen,
            uploads: Vec::new(),
            tmp: TmpFiles(Vec::new()),
            t0,
            _slot: slot,
        })
    }

    pub fn task(&self) -> &str {
        &self.task.name
    }

    /// A temporary file for the next video (refused past `max_videos_per_request`).
    pub async fn open_video(&mut self) -> Result<Spool, ApiError> {
        let most = self.state.config.max_videos_per_request;
        if self.uploads.len() >= most {
            return Err(ApiError::too_large(format!(
                "at most {most} videos per request"
            )));
        }
        let (spool, path) =
            Spool::create(&self.state, "upload", self.state.config.max_upload_bytes).await?;
        self.tmp.0.push(path);
        Ok(spool)
    }

    /// Ends a video's bytes; `id: None` gets a hash of the content.
    pub async fn push(
        &mut self,
        spool: Spool,
        id: Option<String>,
        meta: Value,
        file_name: Option<String>,
    ) -> Result<(), ApiError> {
        let (path, bytes) = spool.close().await?;
        if bytes == 0 {
            return Err(ApiError::bad_request(
                "empty_video",
                "a video part is empty",
            ));
        }
        self.uploads.push(Upload {
            id,
            meta,
            file_name,
            path,
            bytes,
        });
        Ok(())
    }

    /// Decodes and encodes every video, then stores them all or none. A video's original and
    /// thumbnail are put into the store (fsynced) while its frames are encoded, so the disk's
    /// flushes are off the critical path; only the log write waits for the encode.
    pub async fn commit(self) -> Result<IndexResult, ApiError> {
        let IndexBatch {
            state,
            task,
            gen,
            uploads,
            tmp,
            t0,
            _slot,
        } = self;
        if uploads.is_empty() {
            return Err(ApiError::bad_request(
                "missing_video",
                "the request has no video",
            ));
        }
        stage(&state, "receive", t0);
        let core = state.core()?;
        let size = core.encoder.backbone().image_size;
        let frames = gen.model.frames();
        let mut prepared = Vec::with_capacity(uploads.len());
        for up in uploads {
            let t = Instant::now();
            let (_admitted, slot) = state.decode_slot(RETRY_UPLOAD_S).await?;
            let decoder = state.decoder.clone();
            let path = up.path.clone();
            let st = state.clone();
            let (decoded, cut) = tokio::task::spawn_blocking(move || {
                let _slot = slot;
                let d = decoder.decode(&path, frames, size)?;
                // A long video is decoded again, every 1-fps candidate once, to cut its segments.
                let cut = match super::moments::plan(&st.config, &d.info, size) {
                    Some(spans) => Some((decoder.decode_timeline(&path, frames, size)?, spans)),
                    None => None,
                };
                Ok::<_, super::ingest::DecodeError>((d, cut))
            })
            .await??;
            stage(&state, "decode", t);
            let super::ingest::DecodedVideo {
                pixels,
                mask,
                thumbnail_jpeg,
                info,
            } = decoded;
            let t = Instant::now();
            let blobs = BlobVersion::fresh();
            let files = {
                let (st, store) = (state.clone(), gen.store.clone());
                let (path, id, jpeg) = (up.path.clone(), up.id.clone(), thumbnail_jpeg);
                tokio::task::spawn_blocking(move || {
                    let t = Instant::now();
                    let r = stage_files(store, &path, id, &jpeg, blobs, &st.tmp_dir);
                    stage(&st, "files", t);
                    r
                })
            };
            let encoded = async {
                match cut {
                    None => {
                        let v = core
                            .encoder
                            .encode_video(gen.model.clone(), pixels, mask.clone())
                            .await?;
                        Ok::<_, ApiError>((vec![v], None))
                    }
                    Some((timeline, spans)) => {
                        let vectors = super::moments::embed_spans(
                            &core.encoder,
                            &gen.model,
                            &timeline,
                            &spans,
                        )
                        .await?;
                        Ok((vectors, Some(Layout::new(spans))))
                    }
                }
            };
            let (files, encoded) = tokio::join!(files, encoded);
            // On an error the staged files (a guard) are dropped, which removes them.
            let staged = files??;
            let (vectors, layout) = encoded?;
            stage(&state, "encode", t);
            let frames_used = mask.iter().filter(|&&m| m).count();
            prepared.push((up, staged, vectors, layout, info, frames_used));
        }
        let t = Instant::now();
        let task_name = task.name.clone();
        let g = gen.clone();
        let tk = task.clone();
        let indexed =
            tokio::task::spawn_blocking(move || -> Result<Vec<IndexedVideo>, ApiError> {
                // The temporary files live until the request ends (their blobs are moved).
                let _tmp = tmp;
                // Writers hold the gate shared; a re-embedding cutover takes it exclusively.
                let _gate = tk.write_guard();
                if tk.current().number != g.number {
                    return Err(ApiError::overloaded(
                        "the task's adapter changed while this upload was encoded; send it again",
                        RETRY_RESEND_S,
                    ));
                }
                let mut items: Vec<NewRecord> = Vec::with_capacity(prepared.len());
                let mut out = Vec::with_capacity(prepared.len());
                // Removed again (dropped) unless the log write below succeeds.
                let mut staged = Vec::with_capacity(prepared.len());
                // Segments of earlier uploads of these ids that the new records leave behind.
                let mut stale: Vec<String> = Vec::new();
                for (up, files, vectors, layout, info, frames_used) in prepared {
                    let id = files.id.clone();
                    let blobs = files.blobs;
                    staged.push(files);
                    let old = g.store.get(&id)?;
                    let segments = vectors.len();
                    stale.extend(moments::stale_keys(
                        &id,
                        old.as_ref().map(|r| &r.meta),
                        segments,
                    ));
                    let stored = serde_json::json!({
                        "meta": up.meta,
                        "file_name": up.file_name,
                        "bytes": up.bytes,
                        "media": &info,
                        "frames": frames_used,
                    });
                    out.push(IndexedVideo {
                        thumbnail: thumb_url(&task_name, &id),
                        id: id.clone(),
                        bytes: up.bytes,
                        frames: frames_used,
                        media: info,
                        segments,
                    });
                    match &layout {
                        Some(l) => items.extend(moments::records(&id, stored, blobs, l, vectors)),
                        None => items.extend(vectors.into_iter().map(|vector| NewRecord {
                            id: id.clone(),
                            vector,
                            meta: stored.clone(),
                            blobs,
                        })),
                    }
                }
                g.store.add_records(g.model.digest(), items)?;
                for s in &mut staged {
                    s.keep();
                }
                // Already invisible (they are not the current upload's); this frees them.
                for key in stale {
                    if let Err(e) = g.store.delete(&key) {
                        tracing::warn!(key, error = %e, "could not remove a replaced segment");
                    }
                }
                Ok(out)
            })
            .await??;
        stage(&state, "store", t);
        state
            .metrics
            .videos_indexed
            .with_label_values(&[task.name.as_str()])
            .inc_by(indexed.len() as u64);
        let segments: usize = indexed
            .iter()
            .filter(|v| v.segments > 1)
            .map(|v| v.segments)
            .sum();
        state
            .metrics
            .segments_indexed
            .with_label_values(&[task.name.as_str()])
            .inc_by(segments as u64);
        record(&state, &task.name, "index", t0);
        tracing::info!(task = %task.name, videos = indexed.len(), "indexed");
        Ok(IndexResult {
            task: task.name.clone(),
            generation: gen.number,
            indexed,
        })
    }
}

/// Records how long an ingest stage took (`mvserve_ingest_stage_seconds{stage}`).
fn stage(state: &AppState, name: &str, since: Instant) {
    state
        .metrics
        .ingest_stage
        .with_label_values(&[name])
        .observe(since.elapsed().as_secs_f64());
}

/// A video's files put into the store ahead of its record: removed when dropped, unless
/// [`StagedFiles::keep`] was called once the record is in the log (so a failed encode, a failed
/// log write and a request dropped midway all leave nothing behind).
struct StagedFiles {
    store: Arc<dyn VectorStore>,
    id: String,
    blobs: BlobVersion,
    kept: bool,
}

impl StagedFiles {
    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Drop for StagedFiles {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Err(e) = self.store.discard_blobs(&self.id, self.blobs) {
            tracing::warn!(id = %self.id, error = %e, "could not remove the files of a failed upload");
        }
    }
}

/// Moves the upload at `path` into the store as `id`'s original under `blobs` and writes its
/// thumbnail next to it (both fsynced by `put_blob`); `id: None` gets a hash of the content.
fn stage_files(
    store: Arc<dyn VectorStore>,
    path: &Path,
    id: Option<String>,
    jpeg: &[u8],
    blobs: BlobVersion,
    tmp_dir: &Path,
) -> Result<StagedFiles, ApiError> {
    let id = match id {
        Some(id) => id,
        None => {
            let mut h = blake3::Hasher::new();
            std::fs::File::open(path)
                .and_then(|f| h.update_reader(f).map(|_| ()))
                .map_err(|e| ApiError::internal(e.to_string()))?;
            h.finalize().to_hex()[..16].to_string()
        }
    };
    let staged = StagedFiles {
        store,
        id,
        blobs,
        kept: false,
    };
    staged
        .store
        .put_blob(&staged.id, blobs, BlobKind::Original, path)?;
    if !jpeg.is_empty() {
        let n = UPLOAD_SEQ.fetch_add(1, Ordering::Relaxed);
        let tp = tmp_dir.join(format!("thumb-{}-{n}", std::process::id()));
        // Removes it when `put_blob` did not move it.
        let _tmp = TmpFiles(vec![tp.clone()]);
        // Not fsynced here: `put_blob` fsyncs it before the rename.
        std::fs::write(&tp, jpeg)
            .map_err(|e| ApiError::internal(format!("writing thumbnail: {e}")))?;
        staged
            .store
            .put_blob(&staged.id, blobs, BlobKind::Thumbnail, &tp)?;
    }
    Ok(staged)
}
