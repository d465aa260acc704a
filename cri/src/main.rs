//! `berth`: the daemon, and the few commands an operator needs beside it.

use std::path::PathBuf;
use std::process::ExitCode;

use berth_cri::config::{Config, DEFAULT_CONFIG_PATH, LogFormat};
use clap::{Parser, Subcommand};

/// Berth, a Kubernetes node runtime serving CRI v1.
#[derive(Parser)]
#[command(name = "berth", version, about)]
struct Cli {
    /// Configuration file; a missing file means the defaults.
    #[arg(long, global = true, default_value = DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    /// Log filter, overriding `[log] level` (error, warn, info, debug, trace).
    #[arg(long, global = true)]
    log_level: Option<String>,
    /// Log format, overriding `[log] format`.
    #[arg(long, global = true, value_enum)]
    log_format: Option<LogFormat>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve CRI on the socket (the default).
    Daemon,
    /// Configuration commands.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Print the version.
    Version,
    /// Commands for looking into a node.
    Debug {
        #[command(subcommand)]
        command: DebugCommand,
    },
}

#[derive(Subcommand)]
enum DebugCommand {
    /// List what is left in the kernel or on disk without a record of the running daemon,
    /// and records whose objects are missing; exits 1 when there is any.
    Leaks,
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Print the complete default configuration as TOML.
    Default,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Version) => {
            println!("berth {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        Some(Command::Config {
            command: ConfigCommand::Default,
        }) => {
            print!("{}", Config::default_toml());
            ExitCode::SUCCESS
        }
        Some(Command::Debug {
            command: DebugCommand::Leaks,
        }) => match leaks(&cli.config) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(1),
            Err(e) => {
                eprintln!("berth: {e:#}");
                ExitCode::from(2)
            }
        },
        None | Some(Command::Daemon) => match daemon(cli.config, cli.log_level, cli.log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("berth: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn daemon(path: PathBuf, level: Option<String>, format: Option<LogFormat>) -> anyhow::Result<()> {
    // Everything the daemon and its monitors create is the node's root's alone unless
    // given a mode on purpose (what containers see, the CRI socket, log files). First,
    // before any thread or file exists. Monitors inherit it; containers get 022 back.
    // SAFETY: umask only swaps an integer of the process.
    unsafe { libc::umask(0o077) };
    let mut config = Config::load(&path)?;
    if let Some(level) = level {
        config.log.level = level;
    }
    if let Some(format) = format {
        config.log.format = format;
    }
    berth_cri::logging::init(&config.log.level, config.log.format)?;
    berth_cri::memory::limit_arenas();
    // Two workers: the daemon's work is short calls and waiting on the kernel, and every
    // thread costs resident memory on every node. Blocking threads (a burst of pods starts
    // dozens) end after 2 s without work rather than tokio's 10 s, so an idle node is
    // back to its few threads soon after the burst.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_keep_alive(std::time::Duration::from_secs(2))
        .enable_all()
        .build()?;
    runtime.block_on(berth_cri::server::run(config))
}

/// `berth debug leaks`: true when nothing leaked.
fn leaks(path: &std::path::Path) -> anyhow::Result<bool> {
    let config = Config::load(path)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let owned = runtime.block_on(berth_cri::leaks::owned_by_daemon(
        &config.grpc.socket,
        &config.root.join("snapshots"),
    ))?;
    let found = berth_cri::leaks::account(&config, &owned);
    for f in &found {
        println!("LEAK {f}");
    }
    if found.is_empty() {
        println!(
            "no leaks: {} pods, {} containers accounted for",
            owned.pods.len(),
            owned.containers.len()
        );
    }
    Ok(found.is_empty())
}
