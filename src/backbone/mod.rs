//! The frozen CLIP backbone: weights, tokenizer, image preprocessing, and the two towers with a hook
//! for a per-sample adapter after the MLP of every encoder block.
//!
//! It owns everything that is plain CLIP. It does not own adapters (`adapter`), batching (`encode`)
//! or video decoding (`media`).

pub mod preprocess;
