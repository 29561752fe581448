//! mvserve: multi-tenant text-to-video retrieval.
//!
//! One frozen CLIP backbone ([`backbone`]) is shared by every task; a task is an MV-Adapter checkpoint
//! plus its own vector index. Data flows one way: `media` turns uploads into frame tensors, the
//! backbone (with a task's adapter) turns frames and text into embeddings, and `store` keeps them.
//! The README's "Module map" names what each module owns.

pub mod adapter;
pub mod backbone;
pub mod bench;
pub mod embed;
pub mod encode;
pub mod eval;
pub mod media;
pub mod registry;
pub mod server;
pub mod simd;
pub mod store;
pub mod synth;
pub mod train;
