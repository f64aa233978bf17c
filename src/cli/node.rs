//! `drover node reset CLUSTER NODE`: forgets the key a node is bound to, so the node can join
//! again with a new key (a reinstalled machine). Its current credential stops working at once:
//! the daemon re-reads bindings and ends the session within a heartbeat.

use std::io::Write;
use std::path::PathBuf;

use super::Exit;
use crate::join::{Bindings, BINDINGS};
use crate::model::{ClusterName, NodeName};
use crate::state::StateDir;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Forget NODE's credential binding; its next join (with a new token) may bring a new key.
    Reset(ResetArgs),
}

#[derive(Debug, clap::Args)]
struct ResetArgs {
    cluster: String,
    node: String,
    /// The daemon's state directory.
    #[arg(long, default_value = "/var/lib/drover", env = "DROVER_STATE_DIR")]
    state_dir: PathBuf,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Exit {
    let Command::Reset(args) = &args.command;
    if let Err(e) = ClusterName::parse(&args.cluster) {
        eprintln!("error: cluster name `{}`: {e}", args.cluster);
        return Exit::Usage;
    }
    if let Err(e) = NodeName::parse(&args.node) {
        eprintln!("error: node name `{}`: {e}", args.node);
        return Exit::Usage;
    }
    let state = StateDir::new(&args.state_dir);
    let outcome = state.update(BINDINGS, |b: &mut Bindings| {
        Ok::<_, std::convert::Infallible>(b.reset(&args.cluster, &args.node))
    });
    let text = match outcome {
        Ok(Ok(true)) => format!(
            "node {} of cluster {}: credential binding removed; its old credential no longer works, and its next join (with a new token) may bring a new key\n",
            args.node, args.cluster
        ),
        Ok(Ok(false)) => format!(
            "node {} of cluster {} had no credential binding; nothing to reset\n",
            args.node, args.cluster
        ),
        Ok(Err(never)) => match never {},
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return Exit::Io;
        }
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Io,
    }
}
