//! What the agent keeps in its data directory (each file owner-only, written crash-safely):
//!
//! - `credential.json`: the cluster and node it joined as, its private key and the client
//!   certificate the daemon issued for that key;
//! - `credential-next.json`: a renewed key waiting for its certificate;
//! - `plan.json`: the last node plan received, so a restarted agent reconciles at once;
//! - `applied.json`: the generation and checksum it last applied without a failed step;
//! - `fence.json`: the newest fencing token it has seen (`fence`).

use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

use crate::nodeplan::NodeSpec;
use crate::pki::{self, Identity, NodeKey, PkiError};
use crate::protocol::AppliedMark;
use crate::secret::Secret;
use crate::state::{StateDir, StateError};

const CREDENTIAL: &str = "credential.json";
const NEXT_KEY: &str = "credential-next.json";
const PLAN: &str = "plan.json";
const APPLIED: &str = "applied.json";
/// The host files plans made this agent write, so it removes those a later plan drops.
const HOST_FILES: &str = "host-files.json";

/// The node credential.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credential {
    pub cluster: String,
    pub node: String,
    pub key_pem: Secret,
    pub cert_pem: String,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct NextKey {
    key_pem: Secret,
}

/// A plan as received, kept for the agent's restart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanRecord {
    pub generation: u64,
    pub checksum: String,
    pub spec: NodeSpec,
}

/// Why the data directory could not be used.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("the renewed certificate is not for the key this agent made")]
    WrongRenewal,
    #[error("a data directory task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// The agent's data directory.
#[derive(Debug, Clone)]
pub struct DataDir {
    state: StateDir,
}

impl DataDir {
    pub fn new(state: StateDir) -> DataDir {
        DataDir { state }
    }

    /// Runs `work` on this directory on a blocking thread: async code never reads, writes or
    /// fsyncs the agent's files on its worker threads.
    pub async fn off_thread<R: Send + 'static>(
        &self,
        work: impl FnOnce(&DataDir) -> Result<R, DataError> + Send + 'static,
    ) -> Result<R, DataError> {
        let data = self.clone();
        tokio::task::spawn_blocking(move || work(&data))
            .await
            .map_err(DataError::Task)?
    }

    pub fn credential(&self) -> Result<Option<Credential>, DataError> {
        Ok(self.state.load(CREDENTIAL)?)
    }

    pub fn save_credential(&self, credential: &Credential) -> Result<(), DataError> {
        Ok(self.state.save(CREDENTIAL, credential)?)
    }

    /// The TLS identity of a credential.
    pub fn identity(credential: &Credential) -> Result<Identity, DataError> {
        let key = NodeKey::from_pem(&credential.key_pem)?;
        Ok(key.identity(&credential.cert_pem)?)
    }

    /// Makes a fresh key for a renewal, keeps it, and returns its signing request.
    pub fn begin_renewal(&self, node: &str) -> Result<String, DataError> {
        let key = NodeKey::generate()?;
        let csr = key.csr_pem(node)?;
        self.state.save(
            NEXT_KEY,
            &NextKey {
                key_pem: key.to_pem(),
            },
        )?;
        Ok(csr)
    }

    /// Stores the renewed certificate with the key made for it; later connections use it.
    pub fn finish_renewal(&self, cert_pem: &str) -> Result<(), DataError> {
        let next: NextKey = self.state.load(NEXT_KEY)?.ok_or(DataError::WrongRenewal)?;
        let key = NodeKey::from_pem(&next.key_pem)?;
        let cert = pki::pem_certificate(cert_pem).ok_or(PkiError::BadCertificate)?;
        if pki::cert_pin(&cert)? != key.pin() {
            return Err(DataError::WrongRenewal);
        }
        let mut credential = self.credential()?.ok_or(DataError::WrongRenewal)?;
        credential.key_pem = next.key_pem;
        credential.cert_pem = cert_pem.to_string();
        self.save_credential(&credential)?;
        let _ = std::fs::remove_file(self.state.path(NEXT_KEY));
        Ok(())
    }

    pub fn plan(&self) -> Result<Option<PlanRecord>, DataError> {
        Ok(self.state.load(PLAN)?)
    }

    pub fn save_plan(&self, plan: &PlanRecord) -> Result<(), DataError> {
        Ok(self.state.save(PLAN, plan)?)
    }

    pub fn applied(&self) -> Result<Option<AppliedMark>, DataError> {
        Ok(self.state.load(APPLIED)?)
    }

    pub fn save_applied(&self, mark: &AppliedMark) -> Result<(), DataError> {
        Ok(self.state.save(APPLIED, mark)?)
    }

    /// The host files this agent wrote for its plans and has not removed (absolute paths).
    pub fn host_files(&self) -> Result<BTreeSet<String>, DataError> {
        Ok(self.state.load(HOST_FILES)?.unwrap_or_default())
    }

    pub fn save_host_files(&self, paths: &BTreeSet<String>) -> Result<(), DataError> {
        Ok(self.state.save(HOST_FILES, paths)?)
    }

    pub(super) fn load<T: serde::de::DeserializeOwned>(
        &self,
        name: &str,
    ) -> Result<Option<T>, StateError> {
        self.state.load(name)
    }

    pub(super) fn save<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StateError> {
        self.state.save(name, value)
    }
}
