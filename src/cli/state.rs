//! The daemon's durable state, as the commands that run on its machine open it (`token`,
//! `node`), and `drover state migrate`, which moves a single daemon's state directory into
//! the etcd its configuration names.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Exit;
use crate::state::StateDir;
use crate::store::etcd::{EtcdStateError, EtcdStore};
use crate::store::{Change, DurableState, Store};

/// Where a command finds the daemon's state: the state directory, unless the daemon's
/// configuration puts the state in etcd.
#[derive(Debug, clap::Args)]
pub struct StateArgs {
    /// The daemon's state directory.
    #[arg(long, default_value = "/var/lib/drover", env = "DROVER_STATE_DIR")]
    pub state_dir: PathBuf,
    /// The daemon's configuration: when its `state.etcd` is set, the state is read there.
    #[arg(long = "config", env = "DROVER_CONFIG")]
    pub daemon_config: Option<PathBuf>,
}

impl StateArgs {
    /// Opens the state, saying why it could not.
    pub fn open(&self) -> Result<DurableState, Exit> {
        let Some(path) = &self.daemon_config else {
            return Ok(StateDir::new(&self.state_dir).into());
        };
        match open_etcd(path)? {
            Some(store) => Ok(DurableState::new(Arc::new(store))),
            None => Ok(StateDir::new(&self.state_dir).into()),
        }
    }
}

/// The etcd store `path`'s configuration names, or `None` when the state is in a directory.
fn open_etcd(path: &Path) -> Result<Option<EtcdStore>, Exit> {
    let config = crate::config::load(path).map_err(|e| {
        eprintln!("error: {}", super::error_chain(&e));
        Exit::Usage
    })?;
    let Some(etcd) = config.state_etcd else {
        return Ok(None);
    };
    EtcdStore::open(&etcd).map(Some).map_err(|e| {
        eprintln!("error: {}", super::error_chain(&e));
        match e {
            EtcdStateError::File { .. }
            | EtcdStateError::BadKey { .. }
            | EtcdStateError::LooseKey { .. } => Exit::Usage,
            EtcdStateError::Connect { .. } | EtcdStateError::Timeout { .. } => Exit::Unavailable,
            EtcdStateError::Runtime(_) => Exit::Io,
        }
    })
}

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Copy a daemon's state directory into the etcd its configuration names. Stop the
    /// daemon first. A document already in etcd with other content is left alone and
    /// reported (exit 1).
    Migrate(MigrateArgs),
}

#[derive(Debug, clap::Args)]
pub struct MigrateArgs {
    /// The state directory to copy from.
    #[arg(long, default_value = "/var/lib/drover", env = "DROVER_STATE_DIR")]
    state_dir: PathBuf,
    /// The daemon's configuration, whose `state.etcd` is the destination.
    #[arg(long = "config", env = "DROVER_CONFIG")]
    daemon_config: PathBuf,
    /// Say what would be copied, and copy nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Files of the state directory that belong to this machine, not to the shared state.
const LOCAL_FILES: [&str; 1] = [crate::daemon::ENDPOINT_FILE];

pub fn run(command: &Command, out: &mut dyn Write) -> Exit {
    match command {
        Command::Migrate(args) => migrate(args, out),
    }
}

/// What happened to one document.
enum Copy {
    /// It was absent from etcd: copied (or, in a dry run, would be).
    Done,
    Same,
    Differs,
}

fn migrate(args: &MigrateArgs, out: &mut dyn Write) -> Exit {
    let target = match open_etcd(&args.daemon_config) {
        Ok(Some(store)) => store,
        Ok(None) => {
            eprintln!(
                "error: {} has no state.etcd: there is nowhere to migrate to",
                args.daemon_config.display()
            );
            return Exit::Usage;
        }
        Err(exit) => return exit,
    };
    let source = StateDir::new(&args.state_dir);
    let names = match Store::names(&source, "") {
        Ok(names) => names,
        Err(e) => {
            eprintln!("error: {}", super::error_chain(&e));
            return Exit::Io;
        }
    };
    let mut conflicts = 0;
    for name in names.iter().filter(|n| !LOCAL_FILES.contains(&n.as_str())) {
        let outcome = copy(&source, &target, name, args.dry_run);
        let said = match outcome {
            Ok(Copy::Done) if args.dry_run => "would copy",
            Ok(Copy::Done) => "copied",
            Ok(Copy::Same) => "already there",
            Ok(Copy::Differs) => {
                conflicts += 1;
                "already there with other content: left alone"
            }
            Err(e) => {
                eprintln!("error: {name}: {}", super::error_chain(&e));
                return Exit::Io;
            }
        };
        if writeln!(out, "{name}: {said}").is_err() {
            return Exit::Io;
        }
    }
    match conflicts {
        0 => Exit::Ok,
        _ => Exit::Invalid,
    }
}

/// Copies `name` unless etcd has it: create-if-absent, so a daemon already on etcd is never
/// overwritten.
fn copy(
    source: &StateDir,
    target: &EtcdStore,
    name: &str,
    dry_run: bool,
) -> Result<Copy, crate::state::StateError> {
    let Some(bytes) = Store::read(source, name)? else {
        return Ok(Copy::Same);
    };
    let mut outcome = Copy::Same;
    target.modify(name, &mut |current| {
        outcome = match current {
            None => Copy::Done,
            Some(there) if there == bytes.as_slice() => Copy::Same,
            Some(_) => Copy::Differs,
        };
        Ok(match (&outcome, dry_run) {
            (Copy::Done, false) => Change::Write(bytes.clone()),
            _ => Change::Keep,
        })
    })?;
    Ok(outcome)
}
