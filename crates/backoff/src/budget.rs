//! Retry budgets: a shared limit on how much retrying may add to the load.
//!
//! Per-call attempt limits do not protect a struggling dependency: with 4 attempts
//! each, 1,000 callers turn an outage into 4,000 calls. A budget shared by all callers
//! caps retries as a share of real traffic, so an outage costs at most a little more
//! than the traffic itself.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::time::Instant;
use tracing::trace;

use crate::policy::BuildError;

/// What kind of failure a retry follows; token buckets charge timeouts more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RetryKind {
    /// Any failure but a timeout.
    Error,
    /// A timeout.
    Timeout,
}

/// A budget the retry loop consults. Implemented by [`RetryBudget`] and
/// [`TokenBucket`]; implement it for a budget of your own.
///
/// Implementations are shared between tasks (`Send + Sync`) and must not block.
pub trait Budget: fmt::Debug + Send + Sync {
    /// Called once per operation, before its first call.
    fn on_request(&self);

    /// Called before each retry; `false` means no budget is left and the loop
    /// gives up at once with [`GiveUpReason::Budget`](crate::GiveUpReason::Budget).
    fn try_withdraw_retry(&self, kind: RetryKind) -> bool;

    /// Called when a call succeeds; `last_retry` is the kind of the retry that led to
    /// it, or `None` when the first call succeeded.
    fn on_success(&self, last_retry: Option<RetryKind>) {
        let _ = last_retry;
    }
}

/// A ratio budget over a sliding window: retries may add up to `ratio` of the
/// original requests, plus a floor of `min_per_second` retries per second.
///
/// Every original request [deposits](RetryBudget::deposit) `ratio` of a retry, every
/// retry [withdraws](RetryBudget::try_withdraw) one. Deposits expire after the window,
/// so the budget follows current traffic. Accounting is in integer thousandths of a
/// retry, so fractional ratios are exact to three decimals: at 0.6, ten deposits allow
/// exactly six withdrawals. Clones share one budget.
///
/// ```
/// use std::time::Duration;
///
/// use steadfast_backoff::RetryBudget;
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.6).unwrap();
/// let shared = budget.clone();
/// for _ in 0..10 {
///     budget.deposit();
/// }
/// let retries = std::iter::from_fn(|| shared.try_withdraw().then_some(())).count();
/// assert_eq!(retries, 6);
/// # }
/// ```
#[derive(Clone)]
pub struct RetryBudget {
    shared: Arc<RatioShared>,
}

/// Settings of a [`RetryBudget`] as a plain value (for configuration files).
///
/// The struct is `#[non_exhaustive]`: outside this crate, start from
/// [`BudgetConfig::default`] and change fields, then build with
/// [`RetryBudget::from_config`].
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct BudgetConfig {
    /// How long a deposit counts (1 s to 60 s).
    pub window: Duration,
    /// Retries allowed per second whatever the traffic, so that a quiet client can
    /// still retry.
    pub min_per_second: u32,
    /// Retries allowed per original request (0.2: one retry per five requests).
    pub ratio: f64,
}

/// An AWS-SDK-style retry quota: a bucket of tokens that retries spend and
/// successes refill. Clones share one bucket.
///
/// With the defaults ([`TokenBucket::aws_standard`]): 500 tokens, a retry costs 5,
/// a retry after a timeout 10, a first-try success adds 1 back, and a success after
/// a retry returns that retry's cost. Under a sustained outage this allows exactly 100
/// retries, then every caller fails fast until successes refill the bucket.
#[derive(Clone)]
pub struct TokenBucket {
    shared: Arc<BucketShared>,
}

/// Settings of a [`TokenBucket`].
///
/// The struct is `#[non_exhaustive]`, so outside this crate start from the defaults and
/// change fields:
///
/// ```
/// use steadfast_backoff::{RetryKind, TokenBucket, TokenBucketConfig};
///
/// let mut config = TokenBucketConfig::default();
/// config.capacity = 50;
/// let bucket = TokenBucket::new(config);
/// assert!(bucket.try_acquire(RetryKind::Timeout));
/// assert_eq!(bucket.available(), 40);
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[cfg_attr(feature = "serde", serde(default))]
#[non_exhaustive]
pub struct TokenBucketConfig {
    /// Tokens the bucket starts with and never exceeds.
    pub capacity: u32,
    /// Tokens a retry after an ordinary failure costs.
    pub retry_cost: u32,
    /// Tokens a retry after a timeout costs.
    pub timeout_retry_cost: u32,
    /// Tokens a first-try success adds back.
    pub success_reward: u32,
}

impl RetryBudget {
    /// Makes a budget: deposits count for `window`, `min_per_second` retries per
    /// second are always allowed, and each original request allows `ratio` retries.
    ///
    /// # Errors
    ///
    /// [`BuildError::BudgetWindow`] for a window outside 1 s ..= 60 s,
    /// [`BuildError::BudgetRatio`] for a ratio outside `[0, 1000]`.
    pub fn new(window: Duration, min_per_second: u32, ratio: f64) -> Result<Self, BuildError> {
        if !(Duration::from_secs(1)..=Duration::from_secs(60)).contains(&window) {
            return Err(BuildError::BudgetWindow { window });
        }
        if !ratio.is_finite() || !(0.0..=1000.0).contains(&ratio) {
            return Err(BuildError::BudgetRatio { ratio });
        }

        let deposit = (ratio * MILLI as f64).round() as i64;
        let window_millis = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let reserve = i64::from(min_per_second).saturating_mul(window_millis);
        let slot = window / SLOTS as u32;
        Ok(Self {
            shared: Arc::new(RatioShared {
                deposit,
                reserve,
                slot,
                state: Mutex::new(Slots {
                    values: [0; SLOTS],
                    current: 0,
                    current_start: Instant::now(),
                }),
            }),
        })
    }

    /// Makes a budget from its settings.
    ///
    /// # Errors
    ///
    /// As [`RetryBudget::new`].
    pub fn from_config(config: &BudgetConfig) -> Result<Self, BuildError> {
        Self::new(config.window, config.min_per_second, config.ratio)
    }

    /// Records an original request, allowing `ratio` more retries for one window.
    pub fn deposit(&self) {
        let amount = self.shared.deposit;
        self.shared
            .with_slots(|slots| slots.values[slots.current] += amount);
    }

    /// Takes one retry from the budget; `false` (and nothing taken) when it is empty.
    pub fn try_withdraw(&self) -> bool {
        let reserve = self.shared.reserve;
        let granted = self.shared.with_slots(|slots| {
            let balance = reserve.saturating_add(slots.values.iter().sum::<i64>());
            let granted = balance >= MILLI;
            if granted {
                slots.values[slots.current] -= MILLI;
            }
            granted
        });
        trace!(granted, "retry budget withdrawal");
        granted
    }

    /// Retries the budget would allow right now.
    pub fn available(&self) -> u64 {
        let reserve = self.shared.reserve;
        let balance = self
            .shared
            .with_slots(|slots| reserve.saturating_add(slots.values.iter().sum::<i64>()));
        u64::try_from(balance / MILLI).unwrap_or(0)
    }
}

impl Default for RetryBudget {
    /// The [`BudgetConfig`] defaults: a 10 s window, 10 retries/s, ratio 0.2.
    fn default() -> Self {
        Self::from_config(&BudgetConfig::default()).expect("the default budget settings are valid")
    }
}

impl fmt::Debug for RetryBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetryBudget")
            .field("available", &self.available())
            .field("deposit_milli", &self.shared.deposit)
            .field("reserve_milli", &self.shared.reserve)
            .finish()
    }
}

impl Budget for RetryBudget {
    fn on_request(&self) {
        self.deposit();
    }

    fn try_withdraw_retry(&self, _kind: RetryKind) -> bool {
        self.try_withdraw()
    }
}

impl Default for BudgetConfig {
    /// A 10 s window, 10 retries per second, ratio 0.2 (tower's defaults).
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            min_per_second: 10,
            ratio: 0.2,
        }
    }
}

impl TokenBucket {
    /// Makes a full bucket with these settings.
    pub fn new(config: TokenBucketConfig) -> Self {
        Self {
            shared: Arc::new(BucketShared {
                tokens: Mutex::new(config.capacity),
                config,
            }),
        }
    }

    /// The AWS SDKs' standard retry quota: 500 tokens, 5 per retry, 10 per retry after
    /// a timeout, 1 back per first-try success.
    pub fn aws_standard() -> Self {
        Self::new(TokenBucketConfig::default())
    }

    /// Tokens left.
    pub fn available(&self) -> u32 {
        *self.lock()
    }

    /// Tokens a retry after an ordinary failure costs.
    pub fn retry_cost(&self) -> u32 {
        self.shared.config.retry_cost
    }

    /// Tokens a retry after a timeout costs.
    pub fn timeout_retry_cost(&self) -> u32 {
        self.shared.config.timeout_retry_cost
    }

    /// Takes the cost of one retry; `false` (and nothing taken) when too few are left.
    pub fn try_acquire(&self, kind: RetryKind) -> bool {
        let cost = self.cost(kind);
        let mut tokens = self.lock();
        let granted = *tokens >= cost;
        if granted {
            *tokens -= cost;
        }
        trace!(granted, cost, left = *tokens, "token bucket withdrawal");
        granted
    }

    /// Puts `amount` tokens back, never above the capacity.
    pub fn refill(&self, amount: u32) {
        let mut tokens = self.lock();
        *tokens = tokens
            .saturating_add(amount)
            .min(self.shared.config.capacity);
    }

    fn cost(&self, kind: RetryKind) -> u32 {
        match kind {
            RetryKind::Error => self.shared.config.retry_cost,
            RetryKind::Timeout => self.shared.config.timeout_retry_cost,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, u32> {
        // A plain counter cannot be left inconsistent by a panic elsewhere.
        self.shared
            .tokens
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for TokenBucket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenBucket")
            .field("available", &self.available())
            .field("config", &self.shared.config)
            .finish()
    }
}

impl Budget for TokenBucket {
    fn on_request(&self) {}

    fn try_withdraw_retry(&self, kind: RetryKind) -> bool {
        self.try_acquire(kind)
    }

    fn on_success(&self, last_retry: Option<RetryKind>) {
        match last_retry {
            Some(kind) => self.refill(self.cost(kind)),
            None => self.refill(self.shared.config.success_reward),
        }
    }
}

impl Default for TokenBucketConfig {
    /// The AWS SDKs' standard values: 500 tokens, costs 5 and 10, reward 1.
    fn default() -> Self {
        Self {
            capacity: 500,
            retry_cost: 5,
            timeout_retry_cost: 10,
            success_reward: 1,
        }
    }
}

/// One retry, in thousandths.
const MILLI: i64 = 1_000;

/// Slots per window: deposits expire with a granularity of a tenth of the window.
const SLOTS: usize = 10;

struct RatioShared {
    deposit: i64,
    reserve: i64,
    slot: Duration,
    state: Mutex<Slots>,
}

struct Slots {
    values: [i64; SLOTS],
    current: usize,
    current_start: Instant,
}

struct BucketShared {
    tokens: Mutex<u32>,
    config: TokenBucketConfig,
}

impl RatioShared {
    fn with_slots<T>(&self, f: impl FnOnce(&mut Slots) -> T) -> T {
        // Integer slots cannot be left inconsistent by a panic elsewhere.
        let mut slots = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        slots.rotate(Instant::now(), self.slot);
        f(&mut slots)
    }
}

impl Slots {
    /// Clears the slots whose time has passed out of the window.
    fn rotate(&mut self, now: Instant, slot: Duration) {
        let passed = now.saturating_duration_since(self.current_start);
        let steps = passed.as_nanos() / slot.as_nanos().max(1);
        if steps == 0 {
            return;
        }

        if steps >= SLOTS as u128 {
            self.values = [0; SLOTS];
            self.current_start = now;
            return;
        }
        for _ in 0..steps {
            self.current = (self.current + 1) % SLOTS;
            self.values[self.current] = 0;
        }
        self.current_start += slot * steps as u32;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn ratio_point_six_allows_exactly_six_of_ten() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 0.6).unwrap();
        for _ in 0..10 {
            budget.deposit();
        }
        let granted = (0..10).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 6);
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_expire_after_the_window() {
        let budget = RetryBudget::new(Duration::from_secs(10), 0, 1.0).unwrap();
        budget.deposit();
        budget.deposit();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(budget.available(), 2);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(budget.available(), 0);
        assert!(!budget.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn the_floor_refills_as_withdrawals_age_out() {
        let budget = RetryBudget::new(Duration::from_secs(2), 5, 0.0).unwrap();
        let granted = (0..20).filter(|_| budget.try_withdraw()).count();
        assert_eq!(granted, 10);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(budget.available(), 10);
    }

    #[test]
    fn bad_settings_are_rejected() {
        assert!(matches!(
            RetryBudget::new(Duration::ZERO, 1, 0.1),
            Err(BuildError::BudgetWindow { .. })
        ));
        assert!(matches!(
            RetryBudget::new(Duration::from_secs(10), 1, f64::NAN),
            Err(BuildError::BudgetRatio { .. })
        ));
    }

    #[test]
    fn token_bucket_refunds_and_rewards() {
        let bucket = TokenBucket::aws_standard();
        assert!(bucket.try_acquire(RetryKind::Timeout));
        assert_eq!(bucket.available(), 490);
        bucket.on_success(Some(RetryKind::Timeout));
        assert_eq!(bucket.available(), 500);
        bucket.on_success(None);
        assert_eq!(bucket.available(), 500);
    }
}
