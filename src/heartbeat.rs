//! Liveness of an agent session, the same on both sides: each side sends a heartbeat every
//! interval and drops a peer it has not heard from for `SILENT_INTERVALS` intervals. Anything
//! the peer sends counts as hearing from it.

use std::time::Duration;

use tokio::time::{Instant, Interval, MissedTickBehavior};

/// Intervals of silence after which a peer is dropped ("three" in the messages that say so).
pub const SILENT_INTERVALS: u32 = 3;

/// What a tick asks of the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// Send heartbeat number `seq`.
    Send(u64),
    /// The peer was silent for `SILENT_INTERVALS` intervals: drop it.
    Silent,
}

/// One session's heartbeat clock.
#[derive(Debug)]
pub struct Liveness {
    interval: Duration,
    ticker: Interval,
    heard: Instant,
    seq: u64,
}

impl Liveness {
    pub fn new(interval: Duration) -> Liveness {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Liveness {
            interval,
            ticker,
            heard: Instant::now(),
            seq: 0,
        }
    }

    /// The peer said something.
    pub fn heard(&mut self) {
        self.heard = Instant::now();
    }

    /// Waits for the next tick and says what to do; cancel-safe, for `select!`.
    pub async fn tick(&mut self) -> Beat {
        self.ticker.tick().await;
        if self.heard.elapsed() > self.interval * SILENT_INTERVALS {
            return Beat::Silent;
        }
        self.seq += 1;
        Beat::Send(self.seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn beats_until_the_peer_is_silent_for_three_intervals() {
        let mut l = Liveness::new(Duration::from_secs(10));
        assert_eq!(l.tick().await, Beat::Send(1), "the first tick is at once");
        assert_eq!(l.tick().await, Beat::Send(2));
        l.heard();
        assert_eq!(l.tick().await, Beat::Send(3));
        assert_eq!(l.tick().await, Beat::Send(4));
        assert_eq!(
            l.tick().await,
            Beat::Send(5),
            "30 s of silence is not over three intervals"
        );
        assert_eq!(l.tick().await, Beat::Silent);
    }
}
