//! Which daemon should own which cluster, when several share the state in etcd: rendezvous
//! (highest random weight) hashing of each cluster over the live daemons, and the rule that a
//! change of membership moves clusters only once it has held for a while.
//!
//! Rendezvous hashing needs no coordination beyond agreeing on the members: every daemon
//! computes the same owner, a daemon that leaves moves only its own clusters, and one that
//! joins takes only the clusters it now wins. Both are pure; the leases that say who is live,
//! and the owner keys that fence the work, are the etcd side's.

use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};

/// The member that should own `cluster`: the one whose weight for it is highest (ties, which
/// need equal hashes, go to the smaller id). `None` without members.
pub fn owner<'m>(cluster: &str, members: &'m [String]) -> Option<&'m str> {
    members
        .iter()
        .map(|m| (weight(m, cluster), m))
        .max_by(|(wa, a), (wb, b)| wa.cmp(wb).then_with(|| b.cmp(a)))
        .map(|(_, m)| m.as_str())
}

/// A member's weight for a cluster: the first 8 bytes of sha256 over both, separated so that
/// no two pairs share their bytes.
fn weight(member: &str, cluster: &str) -> u64 {
    let mut hash = Sha256::new();
    hash.update((member.len() as u64).to_be_bytes());
    hash.update(member.as_bytes());
    hash.update(cluster.as_bytes());
    let digest = hash.finalize();
    u64::from_be_bytes(digest[..8].try_into().expect("8 bytes"))
}

/// The membership clusters are assigned over: the first one seen at once, a change that only
/// removes daemons at once too (their leases expired: they act no more, and their clusters
/// have no owner until another claims them), and a change that adds one only after it has
/// held, unchanged, for `settle`. A daemon restarting, or a burst of daemons starting, thus
/// moves clusters once, not at every step, and a dead daemon's clusters move without delay.
#[derive(Debug)]
pub struct Settled {
    settle: Duration,
    current: Option<Vec<String>>,
    pending: Option<(Vec<String>, Instant)>,
}

impl Settled {
    pub fn new(settle: Duration) -> Settled {
        Settled {
            settle,
            current: None,
            pending: None,
        }
    }

    /// Takes the members seen `now` (any order) and returns the membership to assign over.
    pub fn observe(&mut self, mut seen: Vec<String>, now: Instant) -> &[String] {
        seen.sort();
        seen.dedup();
        match &self.current {
            None => {
                self.current = Some(seen);
                self.pending = None;
            }
            Some(current) if *current == seen => self.pending = None,
            Some(current) if seen.iter().all(|m| current.contains(m)) => {
                self.current = Some(seen);
                self.pending = None;
            }
            Some(_) => match &self.pending {
                Some((pending, since)) if *pending == seen => {
                    if now.duration_since(*since) >= self.settle {
                        self.current = Some(seen);
                        self.pending = None;
                    }
                }
                _ => self.pending = Some((seen, now)),
            },
        }
        self.current.as_deref().unwrap_or_default()
    }

    /// Whether a change is waiting to settle.
    pub fn unsettled(&self) -> bool {
        self.pending.is_some()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn members(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("daemon-{i}")).collect()
    }

    fn clusters(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("c{i}")).collect()
    }

    fn assignment(clusters: &[String], members: &[String]) -> BTreeMap<String, String> {
        clusters
            .iter()
            .map(|c| (c.clone(), owner(c, members).expect("members").to_string()))
            .collect()
    }

    #[test]
    fn every_daemon_computes_the_same_owner_whatever_the_order() {
        let mut shuffled = members(5);
        shuffled.reverse();
        for c in clusters(200) {
            assert_eq!(owner(&c, &members(5)), owner(&c, &shuffled));
        }
        assert_eq!(owner("c0", &[]), None);
    }

    #[test]
    fn clusters_spread_over_the_daemons() {
        for (n, total) in [(3, 100), (3, 1000), (5, 1000)] {
            let m = members(n);
            let mut counts: BTreeMap<String, usize> = BTreeMap::new();
            for owner in assignment(&clusters(total), &m).into_values() {
                *counts.entry(owner).or_default() += 1;
            }
            let (most, least) = (
                *counts.values().max().unwrap(),
                *counts.values().min().unwrap(),
            );
            assert_eq!(counts.len(), n, "a daemon owns nothing: {counts:?}");
            // Within half of the fair share either way.
            let fair = total / n;
            assert!(
                most <= fair * 3 / 2 && least >= fair / 2,
                "{n} daemons, {total} clusters: {counts:?}"
            );
        }
    }

    #[test]
    fn only_the_clusters_of_a_daemon_that_comes_or_goes_move() {
        let all = clusters(500);
        let three = members(3);
        let before = assignment(&all, &three);
        // daemon-1 leaves: only its clusters move.
        let two = vec![three[0].clone(), three[2].clone()];
        let after = assignment(&all, &two);
        for (c, was) in &before {
            if *was != "daemon-1" {
                assert_eq!(after[c], *was, "{c} moved though its owner stayed");
            }
        }
        // daemon-3 joins: clusters move only to it.
        let four = members(4);
        let joined = assignment(&all, &four);
        let moved: Vec<&String> = all.iter().filter(|c| joined[*c] != before[*c]).collect();
        assert!(!moved.is_empty());
        assert!(moved.iter().all(|c| joined[*c] == "daemon-3"), "{moved:?}");
    }

    #[test]
    fn a_membership_change_counts_once_it_has_held() {
        let settle = Duration::from_secs(10);
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut m = Settled::new(settle);
        let one = vec!["a".to_string()];
        let two = vec!["b".to_string(), "a".to_string()];
        let three = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        // The first membership seen counts at once.
        assert_eq!(m.observe(one.clone(), at(0)), ["a"]);
        // A change waits; a further change restarts the wait.
        assert_eq!(m.observe(two.clone(), at(1)), ["a"]);
        assert!(m.unsettled());
        assert_eq!(m.observe(three.clone(), at(5)), ["a"]);
        assert_eq!(m.observe(three.clone(), at(14)), ["a"]);
        assert_eq!(m.observe(three.clone(), at(15)), ["a", "b", "c"]);
        assert!(!m.unsettled());
        // A daemon that left counts at once: its lease expired.
        assert_eq!(m.observe(two.clone(), at(20)), ["a", "b"]);
        assert!(!m.unsettled());
        // One that comes back waits again; a blip that goes back before settling changes
        // nothing.
        assert_eq!(m.observe(three, at(21)), ["a", "b"]);
        assert_eq!(m.observe(two, at(22)), ["a", "b"]);
        assert!(!m.unsettled());
        // One leaving and another joining at once is a change that waits.
        let other = vec!["a".to_string(), "d".to_string()];
        assert_eq!(m.observe(other.clone(), at(30)), ["a", "b"]);
        assert_eq!(m.observe(other.clone(), at(35)), ["a", "b"]);
        assert_eq!(m.observe(other, at(40)), ["a", "d"]);
    }
}
