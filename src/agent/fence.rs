//! The agent's side of fencing. When several daemons share the state, every plan and etcd task
//! carries its cluster's fencing token (the owner key's creation revision, which only grows
//! from one owner to the next). The agent keeps the newest token it has seen in `fence.json`,
//! written (and fsynced) before it acts on anything that carried it, and refuses whatever
//! carries an older one: a daemon that lost its cluster cannot drive the node, however late
//! its message arrives.
//!
//! A message without a token comes from a daemon that does not share its state. Once the agent
//! has followed a fenced owner it refuses those too: going back to one daemon on a state
//! directory is `drover node reset` (a new agent data directory), never a silent downgrade.

use serde::{Deserialize, Serialize};

use super::credential::{DataDir, DataError};

/// The file that holds the newest token.
pub const FENCE_FILE: &str = "fence.json";

/// What the agent does with a message that carries `offered`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Act on it; first record `newest` when it is newer than what is kept.
    Accept { record: Option<u64> },
    /// Refuse it: the agent has seen `newest`.
    Refuse { newest: u64 },
}

/// The rule: a token at least as new as the newest seen is accepted (and recorded when newer);
/// an older one, or none once a token was seen, is refused.
pub fn judge(newest: Option<u64>, offered: Option<u64>) -> Verdict {
    match (newest, offered) {
        (None, None) => Verdict::Accept { record: None },
        (None, Some(f)) => Verdict::Accept { record: Some(f) },
        (Some(n), Some(f)) if f > n => Verdict::Accept { record: Some(f) },
        (Some(n), Some(f)) if f == n => Verdict::Accept { record: None },
        (Some(n), _) => Verdict::Refuse { newest: n },
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct FenceRecord {
    newest: u64,
}

impl DataDir {
    /// The newest fencing token this agent has seen.
    pub fn fence(&self) -> Result<Option<u64>, DataError> {
        Ok(self.load::<FenceRecord>(FENCE_FILE)?.map(|r| r.newest))
    }

    /// Judges `offered` against the kept token, recording it first when it is newer. Blocking.
    pub fn admit_fence(&self, offered: Option<u64>) -> Result<Verdict, DataError> {
        let verdict = judge(self.fence()?, offered);
        if let Verdict::Accept {
            record: Some(newest),
        } = verdict
        {
            self.save(FENCE_FILE, &FenceRecord { newest })?;
        }
        Ok(verdict)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::StateDir;

    #[test]
    fn the_rule() {
        let cases = [
            (None, None, Verdict::Accept { record: None }),
            (None, Some(4), Verdict::Accept { record: Some(4) }),
            (Some(4), Some(9), Verdict::Accept { record: Some(9) }),
            (Some(9), Some(9), Verdict::Accept { record: None }),
            (Some(9), Some(4), Verdict::Refuse { newest: 9 }),
            (Some(9), None, Verdict::Refuse { newest: 9 }),
        ];
        for (newest, offered, want) in cases {
            assert_eq!(judge(newest, offered), want, "{newest:?} {offered:?}");
        }
    }

    #[test]
    fn the_newest_token_survives_a_restart_and_older_ones_are_refused() {
        let dir = crate::state::private_tempdir();
        let data = DataDir::new(StateDir::new(dir.path()));
        assert_eq!(
            data.admit_fence(None).unwrap(),
            Verdict::Accept { record: None }
        );
        assert_eq!(data.fence().unwrap(), None);
        assert_eq!(
            data.admit_fence(Some(12)).unwrap(),
            Verdict::Accept { record: Some(12) }
        );
        let restarted = DataDir::new(StateDir::new(dir.path()));
        assert_eq!(restarted.fence().unwrap(), Some(12));
        assert_eq!(
            restarted.admit_fence(Some(7)).unwrap(),
            Verdict::Refuse { newest: 12 }
        );
        assert_eq!(restarted.fence().unwrap(), Some(12));
        let mode = std::fs::metadata(dir.path().join(FENCE_FILE)).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o077,
            0
        );
    }
}
