//! STUB (not committed): replaced by the etcd-tasks branch.
use std::collections::BTreeMap;
use std::time::SystemTime;

use crate::nodeplan::FileSpec;
use crate::state::StateDir;

#[derive(Debug, thiserror::Error)]
#[error("stub")]
pub struct EtcdPkiError;

pub struct ClusterCa;

impl ClusterCa {
    pub fn ensure(_state: &StateDir, _cluster: &str) -> Result<ClusterCa, EtcdPkiError> {
        Ok(ClusterCa)
    }
    pub fn issue(
        &self,
        _node: &str,
        _addresses: &[String],
        _now: SystemTime,
    ) -> Result<BTreeMap<String, FileSpec>, EtcdPkiError> {
        Ok(BTreeMap::new())
    }
    pub fn needs_reissue(
        &self,
        _files: &BTreeMap<String, FileSpec>,
        _addresses: &[String],
        _now: SystemTime,
    ) -> Option<String> {
        None
    }
}
