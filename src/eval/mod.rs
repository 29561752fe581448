//! Retrieval evaluation: dataset annotation readers, the metrics of a text x video similarity
//! matrix, and the run that embeds a dataset with the backbone (and an optional adapter).
//!
//! Owns: the test-set formats ([`data`]: generic jsonl, MSR-VTT csv/json, MSVD tsv, DiDeMo and
//! ActivityNet paragraphs), the ranking rules and recall/rank statistics ([`metrics`], MV-Adapter
//! spec section 13), and the run over a dataset ([`run`]: batched decoding and embedding, the full
//! similarity matrix). It does not own decoding (`media`) or the model (`embed`, `backbone`,
//! `adapter`).

pub mod data;
pub mod metrics;
pub mod run;

pub use data::{load, DataError, Dataset, DatasetFormat, VideoEntry};
pub use metrics::{EvalReport, MetricsError, RetrievalMetrics, SimilarityMatrix};
pub use run::{embed_dataset, similarity, EvalError, EvalOptions};
