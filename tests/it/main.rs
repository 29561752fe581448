//! The integration tests: one test binary, a module per area (each was a binary of its own,
//! linking the whole crate and its dependencies again). `cargo test --release --test it
//! server_api::` runs one module's tests; `common` holds what they share.
//!
//! All the tests run in this one process, in parallel: a test that needs process-wide state (an
//! environment variable the code reads) runs its body in a child process of its own
//! (`common::alone_in_process`); `layout` checks that every file here is a module of this binary.

// As in the server binary: tensor buffers come and go every layer; mimalloc reuses them
// (adapter_training measured with it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod common;

mod adapter_cli;
mod adapter_file;
mod adapter_model;
mod adapter_parity;
mod adapter_training;
mod backbone_parity;
mod cli_embed;
mod deploy_k8s;
mod deploy_metrics;
mod device;
mod encode_paths;
mod eval_cli;
mod eval_data;
mod int8_parity;
mod layout;
mod media_ffprobe_limit;
mod media_hostile;
mod media_real;
mod media_seek;
mod milvus_restart;
mod openapi;
mod page_browser;
mod preprocess_parity;
mod server_adapters;
mod server_api;
mod server_crash;
mod server_distributed;
mod server_encode;
mod server_example;
mod server_filter;
mod server_grpc;
mod server_hardening;
mod server_moments;
mod server_registry;
mod server_tenants;
mod store_codec;
mod store_conformance;
mod store_durability;
mod store_search;
mod synth;
mod train;
