//! `drover node reset CLUSTER NODE`: forgets the key a node is bound to, so the node can join
//! again with a new key (a reinstalled machine). Its current credential stops working at once:
//! the daemon re-reads bindings and ends the session within a heartbeat.
//! `drover node list`: every node that joined, the key it is bound to, and whether its
//! credential is revoked. `drover node show CLUSTER NODE`: what the node's agent receives, asked
//! of the daemon (see `status`).

use std::io::Write;

use super::state::StateArgs;
use super::Exit;
use crate::join::{bindings_name, load_all_bindings, split_fleet_bindings, Bindings};
use crate::model::{ClusterName, NodeName};

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Forget NODE's credential binding; its next join (with a new token) may bring a new key.
    Reset(ResetArgs),
    /// List the nodes that joined: cluster, node, the key they are bound to, and their status.
    List(ListArgs),
    /// Show what NODE's agent receives from the daemon (its plan, file contents and keys left
    /// out; its certificates' subjects and expiry) and its last report.
    Show(super::status::NodeShowArgs),
}

#[derive(Debug, clap::Args)]
struct ListArgs {
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, clap::Args)]
struct ResetArgs {
    cluster: String,
    node: String,
    #[command(flatten)]
    state: StateArgs,
}

pub fn run(args: &Args, out: &mut dyn Write) -> Exit {
    match &args.command {
        Command::Reset(args) => reset(args, out),
        Command::List(args) => list(args, out),
        Command::Show(args) => super::status::node_show(args, out),
    }
}

fn list(args: &ListArgs, out: &mut dyn Write) -> Exit {
    let state = match args.state.open() {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    let bindings = match load_all_bindings(&state) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return Exit::Io;
        }
    };
    let mut text = String::new();
    if bindings.nodes.is_empty() {
        text.push_str("no node has joined\n");
    } else {
        text.push_str(&format!("{:<40}  {:<20}  STATUS\n", "CLUSTER/NODE", "KEY"));
    }
    for (key, b) in &bindings.nodes {
        // A key's pin identifies it and is not secret; its first 12 digits tell keys apart.
        let pin = &b.key_pin[..b.key_pin.len().min("sha256:".len() + 12)];
        let status = match (&b.revoked, &b.next_pin) {
            (Some(why), _) => format!("revoked: {why}"),
            (None, Some(_)) => "bound, renewal pending".to_string(),
            (None, None) => "bound".to_string(),
        };
        text.push_str(&format!("{key:<40}  {pin:<20}  {status}\n"));
    }
    match out.write_all(text.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Io,
    }
}

fn reset(args: &ResetArgs, out: &mut dyn Write) -> Exit {
    if let Err(e) = ClusterName::parse(&args.cluster) {
        eprintln!("error: cluster name `{}`: {e}", args.cluster);
        return Exit::Usage;
    }
    if let Err(e) = NodeName::parse(&args.node) {
        eprintln!("error: node name `{}`: {e}", args.node);
        return Exit::Usage;
    }
    let state = match args.state.open() {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    // Split first: bindings left in the one document of an earlier drover would otherwise
    // bring the reset binding back when a daemon splits them.
    if let Err(e) = split_fleet_bindings(&state) {
        eprintln!("error: {}", super::error_chain(&e));
        return Exit::Io;
    }
    let outcome = state.update(&bindings_name(&args.cluster), |b: &mut Bindings| {
        Ok::<_, std::convert::Infallible>(b.reset(&args.cluster, &args.node))
    });
    let text = match outcome.map(|o| o.map(|u| u.result)) {
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
