//! Awaiting a condition instead of sleeping: poll a probe until it succeeds,
//! within a deadline, and say what hung when it does not.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use tokio::time::{sleep, timeout, Instant};

/// Pause between two probes. Short: probes are cheap and start-up is fast.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// A probe kept failing until the deadline.
#[derive(Debug)]
pub struct TimedOut<E> {
    pub after: Duration,
    /// The last probe's error; `None` if every probe hung until the deadline.
    pub last_error: Option<E>,
}

/// Polls `probe` until it returns `Ok`, for at most `limit`. Each probe is
/// itself cut off at the deadline, so a hanging probe cannot overrun it.
pub async fn poll_until<T, E, F, Fut>(limit: Duration, mut probe: F) -> Result<T, TimedOut<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let start = Instant::now();
    let deadline = start + limit;
    let mut last_error = None;
    loop {
        match timeout(deadline.saturating_duration_since(Instant::now()), probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => last_error = Some(error),
            Err(_elapsed) => {}
        }
        if Instant::now() + POLL_INTERVAL >= deadline {
            return Err(TimedOut {
                after: start.elapsed(),
                last_error,
            });
        }
        sleep(POLL_INTERVAL).await;
    }
}

/// Like [`poll_until`], but panics with `what` and the last error on timeout.
pub async fn eventually<T, E, F, Fut>(what: &str, limit: Duration, probe: F) -> T
where
    E: Debug,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    match poll_until(limit, probe).await {
        Ok(value) => value,
        Err(timed_out) => panic!(
            "timed out after {:.1?} waiting for {what}; last error: {:?}",
            timed_out.after, timed_out.last_error
        ),
    }
}
