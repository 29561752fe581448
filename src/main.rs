//! The `mvserve` binary: logging, the allocator, and the command line ([`cli`]).

use anyhow::Result;

mod cli;

// Tensor buffers of several MB are allocated and freed every layer; glibc returns them to the
// kernel each time (page faults and zeroing on every op), mimalloc keeps and reuses them.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    cli::run()
}
