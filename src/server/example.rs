//! Search by example, for both transports: an image or a short video is the query instead of a
//! text. Owns the example's lifecycle: its slot, its temporary file (with the size cap checked as
//! bytes arrive), telling an image from a video by its bytes, turning it into the task's query
//! vector, and the `mvserve_example_searches_total` count. The body's wire format is the
//! transport's ([`super::multipart::example`] for HTTP, [`super::grpc`] for gRPC); the store search
//! and the answer are the text search's own ([`super::service::search_vector`]).
//!
//! A video goes through exactly the ingest path of an upload: the server's [`VideoDecoder`]
//! (same decoders, limits and frame sampling), the encoder's video queue with the task's model
//! (its adapter and pooling). So a video searched by example scores ~1.0 against itself once
//! indexed. A still image (JPEG or PNG) becomes a video that shows it for the whole clip: the
//! frame preprocessed as video frames are, repeated into all F slots (`media::still`). A GIF is a
//! video, as it is for uploads.
//!
//! Bounds: an example holds one of `--max-concurrent-examples` slots from before its first byte
//! is read until it is answered, and at most `--max-example-mb` bytes. These are its own slots,
//! not the uploads': a search is a read that must not be refused because indexing is busy, nor
//! starve indexing. Decoding, the CPU-heavy part, shares the uploads' decode workers and queue
//! (`--decode-workers`), so examples and uploads together never decode more at once than that.

use super::ingest::{self, DecodedVideo};
use super::service::{self, SearchResult, Wanted};
use super::upload::{Spool, TmpFiles};
use super::{ApiError, AppState};
use crate::media::{self, Container};
use crate::registry::{Generation, Task};
use crate::store::Filter;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tokio::io::AsyncReadExt;
use tokio::sync::OwnedSemaphorePermit;

/// An example is decoded and encoded in about a second: a slot frees in about this long.
const RETRY_EXAMPLE_S: u64 = 1;
/// Enough leading bytes to recognise every container `media::detect` knows (an MPEG-TS needs
/// three 188-byte packets).
const HEAD_BYTES: usize = 4096;

/// What an example turned out to be, from its bytes (the metric's `kind` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExampleKind {
    Image,
    Video,
}

impl ExampleKind {
    pub fn label(self) -> &'static str {
        match self {
            ExampleKind::Image => "image",
            ExampleKind::Video => "video",
        }
    }
}

/// An image or a video by its leading bytes; anything else is `unsupported_media` before it is
/// handed to a decoder.
pub fn classify(head: &[u8]) -> Result<ExampleKind, ApiError> {
    if media::still::detect_still(head).is_some() {
        return Ok(ExampleKind::Image);
    }
    if media::detect(head) != Container::Unknown {
        return Ok(ExampleKind::Video);
    }
    Err(ApiError::new(
        super::error::ErrorKind::UnsupportedMedia,
        "unsupported_media",
        "unsupported media: the example is neither an image (JPEG, PNG) nor a video \
         (MP4/MOV, AVI, WebM/MKV, GIF, ...)",
    ))
}

/// One example search, from its slot to its answer. The transport calls [`ExampleQuery::begin`]
/// before reading the body, [`ExampleQuery::write`] per chunk, then [`ExampleQuery::search`].
pub struct ExampleQuery {
    state: Arc<AppState>,
    task: Arc<Task>,
    gen: Arc<Generation>,
    k: usize,
    filter: Option<Filter>,
    segments: Option<usize>,
    spool: Spool,
    bytes: u64,
    /// Removes the temporary file however the request ends.
    _tmp: TmpFiles,
    t0: Instant,
    /// One of the server's example slots, held until the request ends.
    _slot: OwnedSemaphorePermit,
}

impl ExampleQuery {
    /// Resolves the task (a query replica first catches up, as for a text search), checks `k`
    /// and takes an example slot: an unknown task, a bad `k`, a server that is not ready and a
    /// server whose example slots are all taken are refused before any byte is read.
    pub async fn begin(
        state: &Arc<AppState>,
        task: Option<&str>,
        k: Option<usize>,
        filter: Option<&str>,
        segments: Option<usize>,
    ) -> Result<ExampleQuery, ApiError> {
        let t0 = Instant::now();
        let (task, gen) = service::task_for_read(state, task).await?;
        let k = service::check_k(k)?;
        let filter = service::parse_filter(filter)?;
        let segments = service::check_segments(segments)?;
        let slot = state
            .example_slots
            .clone()
            .try_acquire_owned()
            .map_err(|_| {
                ApiError::overloaded(
                    format!(
                        "{} searches by example are already in progress",
                        state.config.max_concurrent_examples
                    ),
                    RETRY_EXAMPLE_S,
                )
            })?;
        let cap = state.config.max_example_bytes;
        let (spool, path) = Spool::create(state, "example", cap).await?;
        Ok(ExampleQuery {
            state: state.clone(),
            task,
            gen,
            k,
            filter,
            segments,
            spool,
            bytes: 0,
            _tmp: TmpFiles(vec![path]),
            t0,
            _slot: slot,
        })
    }

    /// The most bytes an example may have.
    pub fn cap(&self) -> u64 {
        self.state.config.max_example_bytes
    }

    /// Appends a chunk; past `--max-example-mb` the example is refused before it is written.
    pub async fn write(&mut self, chunk: &[u8]) -> Result<(), ApiError> {
        self.bytes += chunk.len() as u64;
        if self.bytes > self.cap() {
            return Err(ApiError::too_large(format!(
                "an example may be at most {} bytes (--max-example-mb)",
                self.cap()
            )));
        }
        self.spool.write(chunk).await
    }

    /// Decodes and encodes the example with the task's model, then searches the task with it.
    pub async fn search(self) -> Result<SearchResult, ApiError> {
        let ExampleQuery {
            state,
            task,
            gen,
            k,
            filter,
            segments,
            spool,
            _tmp,
            t0,
            _slot,
            ..
        } = self;
        let (path, bytes) = spool.close().await?;
        if bytes == 0 {
            return Err(ApiError::bad_request(
                "empty_video",
                "the example is empty: send an image or a video",
            ));
        }
        let kind = classify(&head(&path).await?)?;
        let core = state.core()?;
        let size = core.encoder.backbone().image_size;
        let frames = gen.model.frames();
        let decoded = decode(&state, kind, path, frames, size).await?;
        let vector = core
            .encoder
            .encode_video(gen.model.clone(), decoded.pixels, decoded.mask)
            .await?;
        let result = service::search_vector(
            &state,
            &task,
            &gen,
            vector,
            Wanted {
                k,
                filter,
                segments,
            },
            "search_example",
            t0,
        )
        .await?;
        state
            .metrics
            .example_searches
            .with_label_values(&[task.name.as_str(), kind.label()])
            .inc();
        Ok(result)
    }
}

/// The first [`HEAD_BYTES`] of the file (fewer when it is shorter).
async fn head(path: &std::path::Path) -> Result<Vec<u8>, ApiError> {
    let read = async {
        let mut f = tokio::fs::File::open(path).await?;
        let mut buf = Vec::with_capacity(HEAD_BYTES);
        (&mut f)
            .take(HEAD_BYTES as u64)
            .read_to_end(&mut buf)
            .await?;
        Ok::<_, std::io::Error>(buf)
    };
    read.await
        .map_err(|e| ApiError::internal(format!("reading the example: {e}")))
}

/// Decodes on the blocking pool under the decode bounds uploads use: a place in the decode queue
/// (or 503 at once), then a decode worker.
async fn decode(
    state: &Arc<AppState>,
    kind: ExampleKind,
    path: PathBuf,
    frames: usize,
    size: usize,
) -> Result<DecodedVideo, ApiError> {
    let (_admitted, slot) = state.decode_slot(RETRY_EXAMPLE_S).await?;
    let decoder = state.decoder.clone();
    let max_bytes = state.config.max_example_bytes;
    let decoded = tokio::task::spawn_blocking(move || {
        let _slot = slot;
        match kind {
            ExampleKind::Video => decoder.decode(&path, frames, size),
            ExampleKind::Image => ingest::decode_still(&path, frames, size, max_bytes),
        }
    })
    .await??;
    Ok(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn examples_are_told_apart_by_their_bytes() {
        assert_eq!(
            classify(b"\xFF\xD8\xFF\xE0\0\x10JFIF").unwrap(),
            ExampleKind::Image
        );
        assert_eq!(
            classify(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR").unwrap(),
            ExampleKind::Image
        );
        assert_eq!(classify(b"\0\0\0\x20ftypisom").unwrap(), ExampleKind::Video);
        assert_eq!(classify(b"GIF89a..").unwrap(), ExampleKind::Video);
        let e = classify(b"{\"q\": \"a cat\"}").unwrap_err();
        assert_eq!((e.code, e.status().as_u16()), ("unsupported_media", 415));
        assert_eq!(classify(b"").unwrap_err().code, "unsupported_media");
    }
}
