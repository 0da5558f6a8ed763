//! `pier`: the platform's one binary. `pier api`, `pier runner`, `pier coordinator`,
//! `pier drainer` and `pier up` run services; every other verb is a client of the API.

mod cli;
mod drainer;
mod drains;
mod git;
mod pg;
mod platform_verbs;
mod run;
mod services;
mod stats;
mod up;
mod usage;

use std::process::ExitCode;

use clap::Parser as _;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse_from(cli::shorthand(std::env::args_os().collect()));
    let service = match &cli.command {
        Command::Api(args) => Some(("api", services::run_api(args))),
        Command::Runner(args) => Some(("runner", services::run_runner(args))),
        Command::Coordinator(args) => Some(("coordinator", services::run_coordinator(args))),
        Command::Drainer(args) => Some(("drainer", drainer::run_drainer(args))),
        Command::Up(args) => Some(("up", up::run(args))),
        _ => None,
    };
    if let Some((name, result)) = service {
        return match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("pier {name}: error: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pier: error: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let mut stdout = std::io::stdout().lock();
    let result = rt.block_on(cli::run_client(&cli, &mut stdout));
    // A read of stdin may still wait in a blocking thread (pier run): do not wait for it.
    rt.shutdown_background();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(cli::CliError::Exit(code)) => ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1)),
        Err(e) => {
            eprintln!("pier: error: {e}");
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}
