//! The command line: clap definitions, dispatch, and the one place errors become exit codes.

mod agent;
mod client;
mod logging;
mod node;
mod plan;
mod schema;
mod serve;
mod snapshot;
mod state;
mod status;
mod token;
mod validate;

use std::io::Write;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::error_chain;

/// Exit codes, shared by every subcommand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Success; for `validate`, no errors (warnings allowed).
    Ok = 0,
    /// The input has errors: invalid cluster files, or (for `plan`) an unsafe plan.
    Invalid = 1,
    /// `plan`: the plan has changes.
    Changes = 2,
    /// Bad usage: unknown flags, a path that does not exist (sysexits EX_USAGE).
    Usage = 64,
    /// A service the command needs is not reachable: the daemon, Docker (sysexits
    /// EX_UNAVAILABLE).
    Unavailable = 69,
    /// An input could not be read (sysexits EX_IOERR).
    Io = 74,
    /// The daemon refused the agent, or its CA is not the pinned one (sysexits EX_NOPERM).
    Refused = 77,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> Self {
        ExitCode::from(e as u8)
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "drover",
    version,
    about = "Declarative GitOps reconciler for self-managed clusters",
    long_about = "drover reads cluster definitions (nodes, roles, components, etcd and its \
                  snapshot policy) from a Git repository and drives every node to them."
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a repository's cluster files and report every problem with its file:line:column.
    Validate(validate::Args),
    /// Show what merging a change would do: the plan from a base revision (as if running) to a head.
    Plan(plan::Args),
    /// Print the JSON Schema of cluster files, for editors and CI.
    Schema(schema::Args),
    /// Join tokens for new nodes.
    Token(token::Args),
    /// Node credentials.
    Node(node::Args),
    /// Run the node agent: join, then apply this node's plan with Docker and report.
    Agent(agent::Args),
    /// Run the daemon: follow the source and drive every declared cluster to it.
    Serve(serve::Args),
    /// Show what the daemon is doing: clusters, their conditions, plans and nodes.
    Status(status::Args),
    /// Ask the daemon to reconcile a cluster now.
    Reconcile(status::ReconcileArgs),
    /// A cluster's etcd certificates.
    #[command(subcommand)]
    Cert(CertCommand),
    /// A cluster's etcd snapshots: list, save, verify, prune.
    #[command(subcommand)]
    Snapshot(snapshot::Command),
    /// The daemon's durable state: move it from a state directory into etcd.
    #[command(subcommand)]
    State(state::Command),
}

#[derive(Debug, Subcommand)]
enum CertCommand {
    /// Issue new etcd certificates to every node of a cluster now, with a gated rolling
    /// restart of its members (they are renewed on their own well before expiry).
    Rotate(status::RotateArgs),
}

/// The async runtime a command's requests run on; `Exit::Io`, said, when there is none.
fn runtime() -> Result<tokio::runtime::Runtime, Exit> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: cannot start the async runtime: {e}");
            Exit::Io
        })
}

/// Runs the command line and returns the process exit code.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    Exit::Ok.into()
                }
                _ => Exit::Usage.into(),
            };
        }
    };
    let mut out = std::io::stdout().lock();
    let exit = match cli.command {
        Command::Validate(args) => validate::run(&args, &mut out),
        Command::Plan(args) => plan::run(&args, &mut out),
        Command::Schema(args) => schema::run(&args, &mut out),
        Command::Token(args) => token::run(&args, &mut out),
        Command::Node(args) => node::run(&args, &mut out),
        Command::Agent(args) => agent::run(&args, &mut out),
        Command::Serve(args) => serve::run(&args, &mut out),
        Command::Status(args) => status::run(&args, &mut out),
        Command::Reconcile(args) => status::reconcile(&args, &mut out),
        Command::Cert(CertCommand::Rotate(args)) => status::rotate(&args, &mut out),
        Command::Snapshot(command) => snapshot::run(&command, &mut out),
        Command::State(command) => state::run(&command, &mut out),
    };
    let _ = out.flush();
    exit.into()
}
