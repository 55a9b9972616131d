//! The `tokenwarden` binary: parse the command line, set up logging, run the command.

use clap::Parser;
use tokenwarden_server::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The server logs JSON on stdout at info; operator commands keep stdout for their output
    // and log warnings only, on stderr.
    let serving = matches!(cli.command, Command::Serve(_));
    let _log_writer = tokenwarden_server::telemetry::init_logging(serving);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(tokenwarden_server::cli::execute(cli))?;
    Ok(())
}
