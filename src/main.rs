//! The `tripletlab` binary: parses the command line and runs a CLI command.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    tripletlab::keep_freed_memory();
    let cli = tripletlab::cli::Cli::parse();
    match tripletlab::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("Error: {}", tripletlab::core::error_message(err.as_ref()));
            ExitCode::FAILURE
        }
    }
}
