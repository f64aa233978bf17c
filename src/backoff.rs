//! Capped exponential backoff with full jitter, for retrying anything that talks to another
//! process (the agent's dial to the daemon, its Docker event subscription; the Git source's
//! failed checks share its exponential step): after `n` failures
//! the wait is uniform in `[0, min(cap, base * 2^n)]` (AWS's "full jitter"), so many agents
//! retrying together spread out instead of hammering a peer that just came back.

use std::hash::{BuildHasher as _, RandomState};
use std::time::{Duration, SystemTime};

/// Nanoseconds in a second, for turning a `u128` nanosecond count back into a [`Duration`].
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Doubling more often than this exceeds every `Duration` for any base of at least 1 ns
/// (`Duration::MAX` is below 2^95 ns), so the attempt count is clamped here before shifting.
const MAX_DOUBLINGS: u32 = 100;

/// The delays between attempts: each [`Backoff::next_delay`] doubles the ceiling until it
/// reaches the cap; [`Backoff::reset`] starts over after a success.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    /// A backoff whose first delay is at most `base` and no delay exceeds `cap`.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    /// The wait before the next attempt, uniform in `[0, min(cap, base * 2^attempt)]`. Advances
    /// the attempt count, which saturates at `u32::MAX`.
    pub fn next_delay(&mut self) -> Duration {
        let delay = full_jitter(self.ceiling(), random_u128());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Starts over from `base`, after an attempt succeeded.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    /// How many delays were handed out since the start or the last reset.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The upper bound of the next delay.
    fn ceiling(&self) -> Duration {
        ceiling(self.base, self.cap, self.attempt)
    }
}

/// `min(cap, base * 2^attempt)`, without overflow: the one exponential step drover's retries
/// share (the agent's dial and event watch, the Git source's failed checks).
pub fn ceiling(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let doublings = attempt.min(MAX_DOUBLINGS);
    let grown = base.as_nanos().saturating_mul(1u128 << doublings);
    from_nanos(grown.min(cap.as_nanos()))
}

/// A point of `[0, ceiling]` chosen by `random` (uniform when `random` is; the bias of the
/// modulo is below 2^-33 since a `Duration` holds fewer than 2^95 nanoseconds).
fn full_jitter(ceiling: Duration, random: u128) -> Duration {
    let span = ceiling.as_nanos().saturating_add(1);
    from_nanos(random % span)
}

/// `nanos` as a `Duration`; callers keep it within `Duration::MAX`.
fn from_nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    // The remainder is below 10^9, so it fits a u32.
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, subsec)
}

/// 128 random bits from the operating system. Should it ever fail, std's randomly keyed hasher
/// over the clock still spreads retries apart, which is all jitter is for.
fn random_u128() -> u128 {
    let mut bytes = [0u8; 16];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u128::from_le_bytes(bytes),
        Err(_) => {
            let keys = RandomState::new();
            let high = keys.hash_one(SystemTime::now());
            let low = keys.hash_one(high);
            (u128::from(high) << 64) | u128::from(low)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(30);

    /// The ceiling of the attempt the backoff is at, read before drawing its delay.
    fn ceilings(backoff: &mut Backoff, n: usize) -> Vec<Duration> {
        (0..n)
            .map(|_| {
                let ceiling = backoff.ceiling();
                backoff.next_delay();
                ceiling
            })
            .collect()
    }

    #[test]
    fn the_ceiling_doubles_then_caps() {
        let mut backoff = Backoff::new(BASE, CAP);
        let ms = |n| Duration::from_millis(n);
        assert_eq!(
            ceilings(&mut backoff, 11),
            [
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1_600),
                ms(3_200),
                ms(6_400),
                ms(12_800),
                ms(25_600),
                CAP,
                CAP
            ]
        );
        assert_eq!(backoff.attempt(), 11);
    }

    #[test]
    fn delays_stay_within_the_ceiling_for_every_attempt() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..200 {
            let ceiling = backoff.ceiling();
            let delay = backoff.next_delay();
            assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
            assert!(ceiling <= CAP);
        }
    }

    /// Attempts around every power-of-two boundary a shift could overflow at.
    const HUGE: [u32; 11] = [
        31,
        32,
        63,
        64,
        99,
        100,
        101,
        127,
        128,
        u32::MAX - 1,
        u32::MAX,
    ];

    /// The ceiling computed the slow way, doubling one step at a time with overflow checks.
    fn expected_ceiling(base: Duration, cap: Duration, attempt: u32) -> Duration {
        if base.is_zero() {
            return base;
        }
        let mut ceiling = base.min(cap);
        for _ in 0..attempt {
            match ceiling.checked_mul(2) {
                Some(doubled) if doubled < cap => ceiling = doubled,
                _ => return cap,
            }
        }
        ceiling
    }

    #[test]
    fn huge_attempts_saturate_without_overflow() {
        for (base, cap) in [
            (BASE, CAP),
            (Duration::from_nanos(1), Duration::MAX),
            (Duration::from_nanos(1), Duration::from_secs(3600)),
            (Duration::MAX, Duration::MAX),
            (Duration::MAX, CAP),
            (Duration::ZERO, CAP),
        ] {
            let mut backoff = Backoff::new(base, cap);
            for attempt in HUGE {
                backoff.attempt = attempt;
                let expected = expected_ceiling(base, cap, attempt);
                assert_eq!(
                    backoff.ceiling(),
                    expected,
                    "base {base:?} attempt {attempt}"
                );
                assert!(backoff.next_delay() <= expected);
                assert_eq!(backoff.attempt(), attempt.saturating_add(1));
            }
            assert_eq!(backoff.attempt(), u32::MAX, "the count saturates");
        }
        // Spot checks of the slow way itself.
        let one = Duration::from_nanos(1);
        assert_eq!(
            expected_ceiling(one, Duration::MAX, 64),
            Duration::from_nanos(u64::MAX) + one
        );
        assert_eq!(expected_ceiling(one, Duration::MAX, 100), Duration::MAX);
        assert_eq!(
            expected_ceiling(Duration::ZERO, CAP, u32::MAX),
            Duration::ZERO
        );
    }

    #[test]
    fn reset_starts_over_from_base() {
        let mut backoff = Backoff::new(BASE, CAP);
        for _ in 0..20 {
            backoff.next_delay();
        }
        assert_eq!(backoff.ceiling(), CAP);
        backoff.reset();
        assert_eq!(backoff.attempt(), 0);
        assert_eq!(backoff.ceiling(), BASE);
        assert!(backoff.next_delay() <= BASE);
        assert_eq!(backoff.attempt(), 1);
    }

    #[test]
    fn full_jitter_maps_randomness_onto_the_whole_interval() {
        let ceiling = Duration::from_nanos(999);
        assert_eq!(full_jitter(ceiling, 0), Duration::ZERO);
        assert_eq!(
            full_jitter(ceiling, 999),
            ceiling,
            "the ceiling itself is reachable"
        );
        assert_eq!(full_jitter(ceiling, 1_000), Duration::ZERO);
        assert_eq!(full_jitter(ceiling, u128::MAX), Duration::from_nanos(455));
        assert_eq!(full_jitter(Duration::ZERO, u128::MAX), Duration::ZERO);
        assert!(full_jitter(Duration::MAX, u128::MAX) <= Duration::MAX);
    }

    /// Jitter exists and is spread over the interval. With 4,000 uniform draws on
    /// `[0, ceiling]`, each bound below fails with probability under 10^-30, so the test does
    /// not flake; a constant or a half-interval jitter fails it every time.
    #[test]
    fn delays_are_spread_uniformly() {
        const DRAWS: usize = 4_000;
        let ceiling = CAP;
        let mut backoff = Backoff::new(CAP, CAP);
        let mut quarters = [0usize; 4];
        let mut sum = 0.0;
        for _ in 0..DRAWS {
            let delay = backoff.next_delay();
            let unit = delay.as_secs_f64() / ceiling.as_secs_f64();
            assert!((0.0..=1.0).contains(&unit));
            quarters[((unit * 4.0) as usize).min(3)] += 1;
            sum += unit;
        }
        // Each quarter expects 1,000 draws (standard deviation about 27).
        for (i, &count) in quarters.iter().enumerate() {
            assert!((700..=1_300).contains(&count), "quarter {i}: {quarters:?}");
        }
        // The mean expects 0.5 (standard deviation about 0.0046).
        let mean = sum / DRAWS as f64;
        assert!((0.45..=0.55).contains(&mean), "mean {mean}");
    }
}
