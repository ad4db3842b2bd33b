//! Delay arithmetic: nanoseconds in `u128`, saturating everywhere.
//!
//! `Duration::MAX` is about 1.8e28 ns, well inside `u128`, so every intermediate value
//! fits or saturates; nothing here can overflow, wrap or panic, whatever the policy.

use std::time::Duration;

use rand::Rng;

use crate::policy::{Backoff, CapMode, Jitter};

const NANOS_PER_SEC: u128 = 1_000_000_000;

/// The un-jittered delay before retry `retry + 1`, in nanoseconds, capped.
pub(crate) fn base_nanos(policy: &Backoff, retry: u32) -> u128 {
    let initial = policy.initial.as_nanos();
    let cap = policy.max_delay.as_nanos();
    // A zero initial delay stays zero: `0 * factor^n` is 0 even where `factor^n` overflows.
    if initial == 0
        || initial >= cap
        || retry == 0
        || policy.factor.is_nan()
        || policy.factor <= 1.0
    {
        return initial.min(cap);
    }

    let grown = if is_whole(policy.factor) {
        // Whole factors (the common 2.0) grow exactly, in integers.
        let factor = policy.factor as u128;
        factor
            .checked_pow(retry)
            .map_or(u128::MAX, |power| initial.saturating_mul(power))
    } else {
        let exponent = i32::try_from(retry).unwrap_or(i32::MAX);
        let scaled = initial as f64 * policy.factor.powi(exponent);
        if scaled.is_finite() && scaled < cap as f64 {
            scaled as u128
        } else {
            u128::MAX
        }
    };
    grown.min(cap)
}

/// The jittered delay before retry `retry + 1`, in nanoseconds.
///
/// `previous` is the last delay drawn (or the initial delay), used by decorrelated
/// jitter only.
pub(crate) fn jittered_nanos(
    policy: &Backoff,
    retry: u32,
    previous: u128,
    rng: &mut impl Rng,
) -> u128 {
    let base = base_nanos(policy, retry);
    let cap = policy.max_delay.as_nanos();
    let floor = policy
        .min_delay
        .unwrap_or(policy.initial)
        .as_nanos()
        .min(base);

    match policy.jitter {
        Jitter::None => base,
        Jitter::Full => uniform(rng, floor, base),
        Jitter::Equal => uniform(rng, floor.max(base / 2), base),
        Jitter::Decorrelated => {
            let high = previous.saturating_mul(3).min(cap);
            uniform(rng, floor.min(high), high)
        }
        Jitter::Proportional(spread) => {
            let spread = fraction_of(base, spread);
            let low = base.saturating_sub(spread).max(floor);
            let high = match policy.cap {
                CapMode::Hard => base.saturating_add(spread).min(cap),
                CapMode::Soft => base.saturating_add(spread),
            };
            uniform(rng, low, high.max(low))
        }
    }
}

/// Converts nanoseconds to a `Duration`, saturating at `Duration::MAX`.
pub(crate) fn to_duration(nanos: u128) -> Duration {
    match u64::try_from(nanos / NANOS_PER_SEC) {
        Ok(secs) => Duration::new(secs, (nanos % NANOS_PER_SEC) as u32),
        Err(_) => Duration::MAX,
    }
}

/// `value * fraction` for a fraction in `[0, 1]`; anything else counts as 0 or 1.
fn fraction_of(value: u128, fraction: f64) -> u128 {
    if fraction.is_nan() || fraction <= 0.0 {
        return 0;
    }
    if fraction >= 1.0 {
        return value;
    }
    ((value as f64 * fraction) as u128).min(value)
}

fn is_whole(factor: f64) -> bool {
    factor.fract() == 0.0 && factor <= u32::MAX as f64
}

fn uniform(rng: &mut impl Rng, low: u128, high: u128) -> u128 {
    if low >= high {
        low
    } else {
        rng.random_range(low..=high)
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;

    use super::*;

    fn ms(millis: u64) -> Duration {
        Duration::from_millis(millis)
    }

    #[test]
    fn base_grows_by_the_factor_and_stops_at_the_cap() {
        let policy = Backoff::exponential(ms(100)).max_delay(ms(1_000));
        let delays: Vec<Duration> = (0..6).map(|retry| policy.base_delay(retry)).collect();
        assert_eq!(
            delays,
            [ms(100), ms(200), ms(400), ms(800), ms(1_000), ms(1_000)]
        );
    }

    #[test]
    fn fractional_factor_grows_in_floating_point() {
        let policy = Backoff::exponential(ms(1_000))
            .factor(1.6)
            .max_delay(ms(120_000));
        assert_eq!(policy.base_delay(1), ms(1_600));
        assert_eq!(policy.base_delay(2), ms(2_560));
        assert_eq!(policy.base_delay(60), ms(120_000));
    }

    #[test]
    fn extreme_attempts_and_settings_saturate() {
        let policy = Backoff::exponential(Duration::MAX).max_delay(Duration::MAX);
        assert_eq!(policy.base_delay(u32::MAX), Duration::MAX);

        let policy = Backoff::exponential(ms(1))
            .factor(1e300)
            .max_delay(Duration::MAX);
        assert_eq!(policy.base_delay(10_000), Duration::MAX);

        let policy = Backoff::exponential(Duration::from_nanos(1)).factor(u32::MAX as f64);
        assert_eq!(policy.base_delay(10_000), Backoff::DEFAULT_MAX_DELAY);
    }

    #[test]
    fn zero_initial_delay_stays_zero_at_any_retry() {
        let whole = Backoff::exponential(Duration::ZERO);
        let fractional = whole.clone().factor(1.5);
        let mut rng = SmallRng::seed_from_u64(5);
        for policy in [whole, fractional] {
            for retry in [0, 1, 63, 64, 200, 10_000, u32::MAX] {
                assert_eq!(policy.base_delay(retry), Duration::ZERO, "retry {retry}");
                assert_eq!(policy.delay_for(retry, &mut rng), Duration::ZERO);
            }
        }
    }

    #[test]
    fn to_duration_saturates() {
        assert_eq!(to_duration(u128::MAX), Duration::MAX);
        assert_eq!(to_duration(Duration::MAX.as_nanos()), Duration::MAX);
        assert_eq!(to_duration(1_500_000_000), ms(1_500));
    }

    #[test]
    fn equal_jitter_keeps_half_the_delay() {
        let policy = Backoff::exponential(ms(100)).jitter(Jitter::Equal);
        let mut rng = SmallRng::seed_from_u64(1);
        for _ in 0..1_000 {
            let delay = to_duration(jittered_nanos(&policy, 4, 0, &mut rng));
            assert!((ms(800)..=ms(1_600)).contains(&delay), "{delay:?}");
        }
    }

    #[test]
    fn hard_cap_proportional_spreads_below_the_cap() {
        let policy = Backoff::exponential(ms(100))
            .max_delay(ms(1_000))
            .jitter(Jitter::Proportional(0.2));
        let mut rng = SmallRng::seed_from_u64(2);
        let draws: Vec<u128> = (0..1_000)
            .map(|_| jittered_nanos(&policy, 20, 0, &mut rng))
            .collect();
        assert!(
            draws
                .iter()
                .all(|nanos| (800_000_000..=1_000_000_000).contains(nanos))
        );
        assert!(
            draws
                .iter()
                .filter(|nanos| **nanos == 1_000_000_000)
                .count()
                < 10
        );
    }

    #[test]
    fn soft_cap_lets_proportional_jitter_exceed_the_cap_by_the_spread() {
        let policy = Backoff::exponential(ms(100))
            .max_delay(ms(1_000))
            .jitter(Jitter::Proportional(0.2))
            .cap_mode(CapMode::Soft);
        let mut rng = SmallRng::seed_from_u64(3);
        let draws: Vec<u128> = (0..1_000)
            .map(|_| jittered_nanos(&policy, 20, 0, &mut rng))
            .collect();
        assert!(draws.iter().all(|nanos| *nanos <= 1_200_000_000));
        assert!(draws.iter().any(|nanos| *nanos > 1_000_000_000));
    }

    #[test]
    fn decorrelated_stays_within_three_times_the_previous_delay() {
        let policy = Backoff::exponential(ms(100)).jitter(Jitter::Decorrelated);
        let mut rng = SmallRng::seed_from_u64(4);
        for _ in 0..1_000 {
            let nanos = jittered_nanos(&policy, 3, 500_000_000, &mut rng);
            assert!((100_000_000..=1_500_000_000).contains(&nanos));
        }
    }
}
