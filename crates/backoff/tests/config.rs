//! Policies and budget settings as plain values read from configuration.
#![cfg(feature = "serde")]

use std::time::Duration;

use steadfast_backoff::{Backoff, BudgetConfig, CapMode, Jitter, RetryBudget, TokenBucketConfig};

#[test]
fn a_policy_survives_a_round_trip() {
    let policy = Backoff::grpc()
        .max_elapsed(Duration::from_secs(300))
        .cap_mode(CapMode::Soft)
        .min_delay(Duration::from_millis(500));

    let json = serde_json::to_string(&policy).unwrap();
    let back: Backoff = serde_json::from_str(&json).unwrap();

    assert_eq!(back, policy);
}

#[test]
fn missing_fields_take_the_documented_defaults() {
    let policy: Backoff =
        serde_json::from_str(r#"{ "factor": 3.0, "jitter": "Equal", "max_attempts": null }"#)
            .unwrap();

    assert_eq!(policy.factor, 3.0);
    assert_eq!(policy.jitter, Jitter::Equal);
    assert_eq!(policy.max_attempts, None);
    assert_eq!(policy.initial, Backoff::default().initial);
    assert_eq!(policy.max_delay, Backoff::DEFAULT_MAX_DELAY);
}

#[test]
fn a_misspelt_field_is_refused_rather_than_ignored() {
    let error = serde_json::from_str::<Backoff>(r#"{ "max_atempts": 3 }"#).unwrap_err();

    assert!(error.to_string().contains("max_atempts"), "{error}");
}

#[test]
fn a_bad_policy_from_configuration_is_caught_by_validate() {
    let policy: Backoff = serde_json::from_str(r#"{ "factor": 0.5 }"#).unwrap();

    let error = policy.validate().unwrap_err();

    assert_eq!(
        error.to_string(),
        "factor must be a finite number of at least 1.0, got 0.5"
    );
}

#[test]
fn budget_settings_deserialize_and_build() {
    let config: BudgetConfig = serde_json::from_str(r#"{ "ratio": 0.5 }"#).unwrap();
    assert_eq!(config.window, Duration::from_secs(10));
    assert!(RetryBudget::from_config(&config).is_ok());

    let bucket: TokenBucketConfig = serde_json::from_str(r#"{ "capacity": 50 }"#).unwrap();
    assert_eq!(bucket.retry_cost, 5);
}
