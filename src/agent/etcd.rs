//! PLACEHOLDER until the etcd-tasks branch lands.
use std::path::Path;

use crate::protocol::{EtcdTask, EtcdTaskOutcome};

pub async fn run(_task: &EtcdTask, _client_url: &str, _pki_dir: &Path) -> EtcdTaskOutcome {
    EtcdTaskOutcome::Failed {
        error: "not yet".into(),
    }
}

pub async fn health(_client_url: &str, _pki_dir: &Path) -> Result<(), String> {
    Err("not yet".into())
}
