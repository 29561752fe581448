//! The `mvserve` command line: a thin layer that parses arguments and calls into the library.

use clap::Parser;

#[derive(Parser)]
#[command(name = "mvserve", version, about = "Multi-tenant text-to-video retrieval with MV-Adapters")]
struct Cli {}

fn main() {
    Cli::parse();
}
