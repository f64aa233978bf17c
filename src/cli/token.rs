//! `drover token create CLUSTER`: a join token and the agent command line that uses it;
//! `drover token list` and `drover token revoke ID` for the tokens not yet spent;
//! `drover token operator` for the operator API (`drover plan --server`).
//!
//! The token is printed once (or written to `--out`, owner-only, never overwriting a file) and
//! stored by the daemon only as a hash. The command line names a token *file*, so the token
//! never lands in a process's arguments. A token is listed and revoked by its id, the part
//! before the dot, which is not secret.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use super::state::StateArgs;
use super::Exit;
use crate::api::create_operator_token;
use crate::join::{create_token, list_tokens, revoke_token, JoinError, TokenRules, MAX_TOKEN_TTL};
use crate::model::{ClusterName, NodeName};
use crate::pki::DaemonCa;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Create a join token for CLUSTER and print the agent command line that uses it.
    Create(CreateArgs),
    /// List the join tokens the daemon keeps: id, cluster, use, expiry and whether it is valid.
    List(StateArgs),
    /// Revoke the join token with ID at once (a leaked or no longer needed token).
    Revoke(RevokeArgs),
    /// Make the operator token that `drover plan --server` presents; the previous one stops
    /// working.
    Operator(OperatorArgs),
}

#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// Write the token to this new file (mode 0600) instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, clap::Args)]
struct RevokeArgs {
    /// The token's id: the 8 hex digits before the dot, as `token create` and `token list` show.
    id: String,
    #[command(flatten)]
    state: StateArgs,
}

#[derive(Debug, clap::Args)]
struct CreateArgs {
    /// The cluster the token joins nodes to.
    cluster: String,
    /// How long the token is valid (at most 7 days), e.g. `30m`, `2h`.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    ttl: Duration,
    /// Let the token join several nodes until it expires (default: single use).
    #[arg(long)]
    reusable: bool,
    /// Let the token join this node only (default: any node of CLUSTER).
    #[arg(long, env = "DROVER_TOKEN_NODE")]
    node: Option<String>,
    /// The URL agents dial, e.g. `wss://drover.example.net:7443`.
    #[arg(long, env = "DROVER_SERVER")]
    server: String,
    #[command(flatten)]
    state: StateArgs,
    /// Write the token to this new file (mode 0600) instead of printing it.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// Where the printed command line tells the operator to put the token.
const TOKEN_FILE_HINT: &str = "/etc/drover/join-token";

pub fn run(args: &Args, out: &mut dyn Write) -> Exit {
    match &args.command {
        Command::Create(args) => create(args, out),
        Command::List(args) => list(args, out),
        Command::Revoke(args) => revoke(args, out),
        Command::Operator(args) => operator(args, out),
    }
}

fn operator(args: &OperatorArgs, out: &mut dyn Write) -> Exit {
    if let Some(path) = &args.out {
        // Refuse before the old token is replaced.
        if path.exists() {
            eprintln!(
                "error: {} exists; the token goes in a new file",
                path.display()
            );
            return Exit::Io;
        }
    }
    let state = match args.state.open() {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    let token = match create_operator_token(&state) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return Exit::Io;
        }
    };
    let text = match &args.out {
        Some(path) => {
            if let Err(e) = write_new_private(path, token.expose()) {
                eprintln!("error: cannot write the token to {}: {e}", path.display());
                return Exit::Io;
            }
            format!(
                "The operator token is in {} (mode 0600); any previous one no longer works.\nGive it to `drover plan --server` with --api-token-file.\n",
                path.display()
            )
        }
        None => format!(
            "Operator token (any previous one no longer works):\n\n    {}\n\nSave it to a file readable by you only and give it to `drover plan --server` with --api-token-file.\n",
            token.expose()
        ),
    };
    match out.write_all(text.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Io,
    }
}

fn list(args: &StateArgs, out: &mut dyn Write) -> Exit {
    let state = match args.open() {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    let tokens = match list_tokens(&state) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return Exit::Io;
        }
    };
    let now = SystemTime::now();
    let mut text = String::new();
    if tokens.is_empty() {
        text.push_str("no join tokens\n");
    } else {
        text.push_str(&format!(
            "{:<8}  {:<20}  {:<20}  {:<10}  {:<20}  STATUS\n",
            "ID", "CLUSTER", "NODE", "USE", "EXPIRES"
        ));
        for t in &tokens {
            let usage = if t.single_use { "single" } else { "reusable" };
            let node = t.node.as_ref().map_or("any", NodeName::as_str);
            text.push_str(&format!(
                "{:<8}  {:<20}  {:<20}  {:<10}  {:<20}  {}\n",
                t.id,
                t.cluster,
                node,
                usage,
                humantime::format_rfc3339_seconds(t.expires()).to_string(),
                t.status(now)
            ));
        }
    }
    match out.write_all(text.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Io,
    }
}

fn revoke(args: &RevokeArgs, out: &mut dyn Write) -> Exit {
    if args.id.len() != 8 || !args.id.bytes().all(|b| b.is_ascii_hexdigit()) {
        // Someone pasting the whole token: say what is wanted, and never echo it.
        eprintln!(
            "error: a token id is the 8 hex digits before the dot, as `drover token list` shows"
        );
        return Exit::Usage;
    }
    let state = match args.state.open() {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    match revoke_token(&state, &args.id) {
        Ok(true) => match writeln!(out, "join token {} revoked", args.id) {
            Ok(()) => Exit::Ok,
            Err(_) => Exit::Io,
        },
        Ok(false) => {
            eprintln!("error: no join token with id {}", args.id);
            Exit::Invalid
        }
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            Exit::Io
        }
    }
}

fn create(args: &CreateArgs, out: &mut dyn Write) -> Exit {
    let cluster = match ClusterName::parse(&args.cluster) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: cluster name `{}`: {e}", args.cluster);
            return Exit::Usage;
        }
    };
    let node = match args.node.as_deref().map(NodeName::parse).transpose() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("error: --node: {e}");
            return Exit::Usage;
        }
    };
    if let Err(e) = crate::agent::session::Dial::new(&args.server, "") {
        eprintln!("error: --server: {e}");
        return Exit::Usage;
    }
    if args.ttl > MAX_TOKEN_TTL || args.ttl.is_zero() {
        eprintln!(
            "error: --ttl must be more than 0 and at most {}",
            humantime::format_duration(MAX_TOKEN_TTL)
        );
        return Exit::Usage;
    }
    let state = match args.state.open() {
        Ok(state) => state,
        Err(exit) => return exit,
    };
    let ca = match DaemonCa::ensure(&state) {
        Ok(ca) => ca,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return Exit::Io;
        }
    };
    let now = SystemTime::now();
    let rules = TokenRules {
        ttl: args.ttl,
        single_use: !args.reusable,
        node: node.clone(),
    };
    let (token, record) = match create_token(&state, &cluster, rules, now) {
        Ok(t) => t,
        Err(e @ (JoinError::TooManyTokens | JoinError::TtlTooLong { .. })) => {
            eprintln!("error: {e}");
            return Exit::Usage;
        }
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return Exit::Io;
        }
    };
    let token_file = match &args.out {
        Some(path) => {
            if let Err(e) = write_new_private(path, token.expose()) {
                eprintln!("error: cannot write the token to {}: {e}", path.display());
                return Exit::Io;
            }
            path.display().to_string()
        }
        None => TOKEN_FILE_HINT.to_string(),
    };
    let expires = humantime::format_rfc3339_seconds(now + args.ttl);
    let usage = if args.reusable {
        "reusable"
    } else {
        "single use"
    };
    let for_node = node
        .as_ref()
        .map_or(String::new(), |n| format!(", node {n} only"));
    let mut text = format!(
        "Join token {} for cluster {cluster}{for_node}: {usage}, expires {expires}.\n\n",
        record.id
    );
    match &args.out {
        Some(path) => text.push_str(&format!(
            "The token is in {} (mode 0600). Copy it to the node, then run there:\n\n",
            path.display()
        )),
        None => text.push_str(&format!(
            "    {}\n\nOn the node, save it to {token_file} (readable by root only), then run:\n\n",
            token.expose()
        )),
    }
    let node_arg = node
        .as_ref()
        .map_or("<NODE>".to_string(), NodeName::to_string);
    text.push_str(&format!(
        "    drover agent --server {} --ca-hash {} --token-file {token_file} --node-name {node_arg}\n\n",
        args.server,
        ca.pin()
    ));
    text.push_str(&format!(
        "{node_arg} must be a node of cluster {cluster} in Git. After joining, the agent no longer needs the token.\n"
    ));
    match out.write_all(text.as_bytes()) {
        Ok(()) => Exit::Ok,
        Err(_) => Exit::Io,
    }
}

/// Creates `path` (which must not exist) with mode 0600 and `content`.
fn write_new_private(path: &std::path::Path, content: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(content.as_bytes())?;
    f.write_all(b"\n")?;
    f.sync_all()
}
