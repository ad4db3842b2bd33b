//! Property tests of the delay contract.

use std::io;
use std::time::Duration;

use proptest::prelude::*;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use steadfast_backoff::{Backoff, CapMode, Jitter, retry};
use tokio::time::Instant;

fn jitter() -> impl Strategy<Value = Jitter> {
    prop_oneof![
        Just(Jitter::None),
        Just(Jitter::Full),
        Just(Jitter::Equal),
        Just(Jitter::Decorrelated),
        (0.0..=1.0f64).prop_map(Jitter::Proportional),
    ]
}

fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::MAX),
        (1u64..=u64::MAX).prop_map(Duration::from_nanos),
        (0u64..=u64::MAX, 0u32..1_000_000_000).prop_map(|(secs, nanos)| Duration::new(secs, nanos)),
    ]
}

/// Any valid policy, extreme settings included.
fn policy() -> impl Strategy<Value = Backoff> {
    (
        duration(),
        duration(),
        1.0..1e300f64,
        jitter(),
        any::<bool>(),
        0.0..=1.0f64,
    )
        .prop_map(|(a, b, factor, jitter, soft, floor)| {
            let (initial, max_delay) = if a <= b { (a, b) } else { (b, a) };
            let cap = if soft { CapMode::Soft } else { CapMode::Hard };
            Backoff::exponential(initial)
                .max_delay(max_delay)
                .factor(factor)
                .jitter(jitter)
                .cap_mode(cap)
                .min_delay(initial.mul_f64(floor))
                .unlimited_attempts()
        })
}

fn bounds(policy: &Backoff) -> (Duration, Duration) {
    let floor = policy.min_delay.unwrap_or(policy.initial);
    let ceiling = match (policy.cap, policy.jitter) {
        (CapMode::Soft, Jitter::Proportional(spread)) => {
            // In integer nanoseconds: `Duration::mul_f64` panics near `Duration::MAX`.
            let cap = policy.max_delay.as_nanos();
            let extra = (cap as f64 * spread) as u128;
            nanos(cap.saturating_add(extra))
        }
        _ => policy.max_delay,
    };
    (floor, ceiling)
}

fn nanos(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / 1_000_000_000).unwrap_or(u64::MAX);
    if secs == u64::MAX {
        return Duration::MAX;
    }
    Duration::new(secs, (nanos % 1_000_000_000) as u32)
}

proptest! {
    #[test]
    fn every_jitter_mode_stays_within_floor_and_cap(policy in policy(), seed: u64) {
        prop_assert!(policy.validate().is_ok());
        let (floor, ceiling) = bounds(&policy);
        for delay in policy.schedule().with_seed(seed).take(64) {
            prop_assert!(delay >= floor, "{delay:?} below {floor:?}");
            prop_assert!(delay <= ceiling, "{delay:?} above {ceiling:?}");
        }
    }

    #[test]
    fn no_overflow_at_extreme_attempts(policy in policy(), seed: u64, retry in 10_000u32..=u32::MAX) {
        let (floor, ceiling) = bounds(&policy);
        let mut rng = SmallRng::seed_from_u64(seed);
        for attempt in [10_000, retry, u32::MAX] {
            let delay = policy.delay_for(attempt, &mut rng);
            prop_assert!(delay >= floor && delay <= ceiling, "{delay:?} at {attempt}");
        }
        let delay = policy.schedule().with_seed(seed).nth(10_000);
        prop_assert!(delay.is_some_and(|delay| delay >= floor && delay <= ceiling));
    }

    #[test]
    fn invalid_settings_never_panic(
        initial in duration(),
        max_delay in duration(),
        min_delay in duration(),
        factor: f64,
        spread: f64,
        seed: u64,
    ) {
        let policy = Backoff::exponential(initial)
            .max_delay(max_delay)
            .min_delay(min_delay)
            .factor(factor)
            .unlimited_attempts();
        let mut rng = SmallRng::seed_from_u64(seed);
        for jitter in [Jitter::Full, Jitter::Equal, Jitter::Decorrelated, Jitter::Proportional(spread)] {
            let policy = policy.clone().jitter(jitter);
            for delay in policy.schedule().with_seed(seed).take(40) {
                prop_assert!(delay <= max_delay.max(initial).saturating_mul(2));
            }
            let _ = policy.delay_for(u32::MAX, &mut rng);
        }
    }

    #[test]
    fn same_seed_same_schedule(policy in policy(), seed: u64) {
        let first: Vec<Duration> = policy.schedule().with_seed(seed).take(50).collect();
        let second: Vec<Duration> = policy.schedule().with_seed(seed).take(50).collect();
        prop_assert_eq!(first, second);
    }

    #[test]
    fn deadline_is_never_overslept(
        initial_ms in 1u64..5_000,
        factor in 1.0..4.0f64,
        jitter in jitter(),
        limit_ms in 0u64..60_000,
        call_ms in 0u64..3_000,
        seed: u64,
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let limit = Duration::from_millis(limit_ms);
        let policy = Backoff::exponential(Duration::from_millis(initial_ms))
            .factor(factor)
            .jitter(jitter)
            .unlimited_attempts()
            .max_elapsed(limit);

        let (starts, error, elapsed) = runtime.block_on(async {
            let started = Instant::now();
            let mut starts = Vec::new();
            let error = retry(&policy, || {
                starts.push(started.elapsed());
                async move {
                    tokio::time::sleep(Duration::from_millis(call_ms)).await;
                    Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionReset))
                }
            })
            .with_seed(seed)
            .await
            .unwrap_err();
            (starts, error, started.elapsed())
        });

        prop_assert!(error.is_deadline());
        for start in &starts[1..] {
            prop_assert!(*start <= limit, "a call started at {start:?}, past {limit:?}");
        }
        // The loop ends when a call ends: it never sleeps beyond the limit.
        let last_start = *starts.last().unwrap();
        prop_assert_eq!(elapsed, last_start + Duration::from_millis(call_ms));
    }
}
