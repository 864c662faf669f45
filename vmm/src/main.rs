//! `vmm`: splitvm's minimal KVM VMM. See README.md for usage.

use clap::Parser;
use vmm::{cli, exit, vm};

#[derive(Debug, thiserror::Error)]
enum MainError {
    #[error(transparent)]
    Cli(#[from] cli::CliError),
    #[error(transparent)]
    Vm(#[from] vm::VmError),
    #[error("cannot enter the sandbox (--sandbox off to run without it)")]
    Sandbox(#[from] splitvm_common::sandbox::Error),
}

fn run() -> Result<exit::ExitReason, MainError> {
    let args = match cli::Args::try_parse() {
        Ok(a) => a,
        Err(e) if !e.use_stderr() => e.exit(), // --help, --version
        Err(e) => {
            // One line, like every other error; clap's full text follows at debug level.
            let text = e.to_string();
            let first = text
                .lines()
                .next()
                .unwrap_or("")
                .trim_start_matches("error: ");
            let next = text.lines().nth(1).map(str::trim).unwrap_or("");
            eprintln!("vmm: error: {first} {next} (see vmm --help)");
            std::process::exit(2);
        }
    };
    let sandbox = args.sandbox.clone();
    let cfg = args.into_config()?;
    let vm = vm::Vm::new(&cfg)?;
    vmm::sandbox::apply(&sandbox, cfg.api_socket.as_deref())?;
    Ok(vm.run()?)
}

/// `outer: inner: innermost`.
fn cause_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cur = c.source();
    }
    s
}

fn main() {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn"))
        .target(env_logger::Target::Stderr)
        .init();
    match run() {
        Ok(reason) => {
            eprintln!("vmm: {}", reason.describe());
            std::process::exit(reason.code());
        }
        Err(e) => {
            eprintln!("vmm: error: {}", cause_chain(&e));
            std::process::exit(1);
        }
    }
}
