//! BO-01: jittered delays stay within [min, cap] and do not pile up on the cap or at zero.

use std::time::Duration;

use steadfast_backoff::{Backoff, CapMode, Jitter};

const DRAWS: u64 = 10_000;
const ATTEMPTS: usize = 41;
const MIN: Duration = Duration::from_millis(100);
const CAP: Duration = Duration::from_secs(10);
const SATURATED_FROM: usize = 7;

const MODES: [Jitter; 5] = [
    Jitter::None,
    Jitter::Full,
    Jitter::Equal,
    Jitter::Decorrelated,
    Jitter::Proportional(0.2),
];

fn policy(jitter: Jitter) -> Backoff {
    Backoff::exponential(MIN)
        .factor(2.0)
        .max_delay(CAP)
        .jitter(jitter)
        .unlimited_attempts()
}

/// `draws[attempt]` holds 10,000 delays for that attempt, from seeded schedules.
fn draw(policy: &Backoff) -> Vec<Vec<Duration>> {
    let mut draws: Vec<Vec<Duration>> = (0..ATTEMPTS)
        .map(|_| Vec::with_capacity(DRAWS as usize))
        .collect();
    for seed in 0..DRAWS {
        for (attempt, delay) in policy.schedule().with_seed(seed).take(ATTEMPTS).enumerate() {
            draws[attempt].push(delay);
        }
    }
    draws
}

fn saturated(draws: &[Vec<Duration>]) -> impl Iterator<Item = &Duration> {
    draws[SATURATED_FROM..].iter().flatten()
}

#[test]
fn bo_01_hard_cap_keeps_every_delay_within_min_and_cap() {
    for mode in MODES {
        let draws = draw(&policy(mode));
        assert_eq!(
            draws.iter().map(Vec::len).sum::<usize>(),
            ATTEMPTS * DRAWS as usize
        );
        for (attempt, delays) in draws.iter().enumerate() {
            for delay in delays {
                assert!(
                    (MIN..=CAP).contains(delay),
                    "{mode:?} attempt {attempt}: {delay:?} outside [100 ms, 10 s]"
                );
            }
        }
    }
}

#[test]
fn bo_01_soft_cap_never_exceeds_cap_times_one_plus_spread() {
    for mode in MODES {
        let spread = match mode {
            Jitter::Proportional(spread) => spread,
            _ => 0.0,
        };
        let ceiling = CAP.mul_f64(1.0 + spread);
        let draws = draw(&policy(mode).cap_mode(CapMode::Soft));
        for delay in draws.iter().flatten() {
            assert!(*delay <= ceiling, "{mode:?}: {delay:?} above {ceiling:?}");
            assert!(*delay >= MIN, "{mode:?}: {delay:?} below the floor");
        }
        if spread > 0.0 {
            assert!(
                saturated(&draws).any(|delay| *delay > CAP),
                "soft cap lets proportional jitter above the cap"
            );
        }
    }
}

#[test]
fn bo_01_saturated_draws_rarely_equal_the_cap_and_are_never_zero() {
    for mode in MODES.into_iter().filter(|mode| *mode != Jitter::None) {
        let draws = draw(&policy(mode));
        let total = saturated(&draws).count();
        let at_cap = saturated(&draws).filter(|delay| **delay == CAP).count();
        assert!(
            at_cap * 20 <= total,
            "{mode:?}: {at_cap} of {total} saturated draws equal the cap"
        );
        assert!(
            saturated(&draws).all(|delay| !delay.is_zero()),
            "{mode:?}: a zero delay"
        );

        let distinct: std::collections::HashSet<&Duration> = saturated(&draws).collect();
        assert!(distinct.len() > 1000, "{mode:?}: jitter died at the cap");
    }
}

#[test]
fn bo_01_saturated_proportional_draws_fall_between_8_and_10_s() {
    let draws = draw(&policy(Jitter::Proportional(0.2)));
    for delay in saturated(&draws) {
        assert!(
            (Duration::from_secs(8)..=CAP).contains(delay),
            "{delay:?} outside [8 s, 10 s]"
        );
    }
}

#[test]
fn bo_01_saturated_equal_jitter_averages_7_5_s() {
    let draws = draw(&policy(Jitter::Equal));
    for (attempt, delays) in draws.iter().enumerate().skip(SATURATED_FROM) {
        let mean = delays.iter().map(Duration::as_secs_f64).sum::<f64>() / delays.len() as f64;
        assert!(
            (7.425..=7.575).contains(&mean),
            "attempt {attempt}: equal jitter averages {mean} s"
        );
    }
}

#[test]
fn bo_01_no_jitter_follows_the_exact_schedule() {
    let delays: Vec<Duration> = policy(Jitter::None).schedule().take(9).collect();
    let expected: Vec<Duration> = [100, 200, 400, 800, 1_600, 3_200, 6_400, 10_000, 10_000]
        .into_iter()
        .map(Duration::from_millis)
        .collect();
    assert_eq!(delays, expected);
}
