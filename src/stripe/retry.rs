//! When to try a request again, and how long to wait first: the rules of
//! stripe-python's `HTTPClient._should_retry` and `_sleep_time_seconds`, kept
//! pure so they can be tested without a network.
//!
//! - never past `max_network_retries`;
//! - a network error is retried when it is a connect, read or timeout error,
//!   not a TLS certificate failure or a malformed request (stripe-python's
//!   `_handle_request_error` makes the same split);
//! - an answer with `Stripe-Should-Retry: true|false` does what it says (Stripe
//!   sets it, for example, on a lock timeout, or to say a replay is pointless);
//! - otherwise 409 (conflict, e.g. a concurrent use of the same key) and every
//!   5xx are retried; every other status, 429 included, is not.
//!
//! A retry always reuses the Idempotency-Key, so it can never act twice.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// stripe-python's `INITIAL_DELAY`, `MAX_DELAY` and `MAX_RETRY_AFTER`.
pub const INITIAL_DELAY_MS: u64 = 500;
pub const MAX_DELAY_MS: u64 = 5_000;
pub const MAX_RETRY_AFTER_S: u64 = 60;

/// What one attempt came back with, as far as the retry decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt<'a> {
    /// No HTTP answer. `retryable` is false for failures a retry cannot fix.
    NetworkError { retryable: bool },
    /// An HTTP answer, with its `Stripe-Should-Retry` header if any.
    Response {
        status: u16,
        should_retry_header: Option<&'a str>,
    },
}

/// Whether to try again after `attempt`, given `retries_done` retries so far.
pub fn should_retry(attempt: Attempt<'_>, retries_done: u32, max_network_retries: u32) -> bool {
    if retries_done >= max_network_retries {
        return false;
    }
    match attempt {
        Attempt::NetworkError { retryable } => retryable,
        Attempt::Response {
            status,
            should_retry_header,
        } => {
            // Stripe's header wins, but only its two exact values, as in
            // stripe-python; anything else falls through to the status.
            match should_retry_header.map(str::trim) {
                Some("true") => return true,
                Some("false") => return false,
                _ => {}
            }
            status == 409 || status >= 500
        }
    }
}

/// How long to wait before retry number `retry` (1 for the first retry).
///
/// `min(0.5 s * 2^(retry-1), 5 s)`, then jitter to between half and all of
/// that, never below 0.5 s; and never less than a `Retry-After` of at most 60
/// seconds. `jitter_permille` (0..=1000) stands for stripe-python's
/// `random.uniform(0, 1)`; integer milliseconds keep this exact and testable.
pub fn backoff_delay(retry: u32, retry_after: Option<&str>, jitter_permille: u64) -> Duration {
    let exponent = retry.saturating_sub(1).min(16);
    let base = INITIAL_DELAY_MS
        .saturating_mul(1_u64 << exponent)
        .min(MAX_DELAY_MS);
    let jitter = jitter_permille.min(1000);
    let jittered = base * (1000 + jitter) / 2000;
    let mut delay = jittered.max(INITIAL_DELAY_MS);
    if let Some(seconds) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        if seconds <= MAX_RETRY_AFTER_S {
            delay = delay.max(seconds * 1000);
        }
    }
    Duration::from_millis(delay)
}

/// A jitter value in 0..=1000 without a random-number crate: std's
/// `RandomState` is seeded from the OS once per process and changes with every
/// `new()`, and the clock is mixed in. Good enough to spread retries; it is not
/// used for anything secret.
pub fn jitter_permille() -> u64 {
    let mut hasher = RandomState::new().build_hasher();
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    hasher.write_u64(nanos);
    hasher.finish() % 1001
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(status: u16) -> Attempt<'static> {
        Attempt::Response {
            status,
            should_retry_header: None,
        }
    }

    #[test]
    fn conflicts_and_server_errors_are_retried() {
        for code in [409, 500, 502, 503, 504, 599] {
            assert!(should_retry(status(code), 0, 2), "{code}");
        }
    }

    #[test]
    fn other_client_errors_are_never_retried() {
        for code in [200, 302, 400, 401, 402, 403, 404, 429] {
            assert!(!should_retry(status(code), 0, 2), "{code}");
        }
    }

    #[test]
    fn stripe_should_retry_header_wins() {
        let said = |status, value| Attempt::Response {
            status,
            should_retry_header: Some(value),
        };
        assert!(should_retry(said(429, "true"), 0, 2));
        assert!(should_retry(said(400, "true"), 0, 2));
        assert!(!should_retry(said(500, "false"), 0, 2));
        assert!(!should_retry(said(409, "false"), 0, 2));
        // Not one of the two values: decided by the status.
        assert!(should_retry(said(503, "maybe"), 0, 2));
        assert!(!should_retry(said(429, "TRUE"), 0, 2));
    }

    #[test]
    fn network_errors_follow_their_kind() {
        assert!(should_retry(
            Attempt::NetworkError { retryable: true },
            0,
            1
        ));
        assert!(!should_retry(
            Attempt::NetworkError { retryable: false },
            0,
            1
        ));
    }

    #[test]
    fn retries_stop_at_the_limit() {
        assert!(should_retry(status(500), 1, 2));
        assert!(!should_retry(status(500), 2, 2));
        assert!(!should_retry(status(500), 0, 0));
        assert!(!should_retry(
            Attempt::Response {
                status: 500,
                should_retry_header: Some("true")
            },
            3,
            3
        ));
    }

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_five() {
        // Full jitter (1000) is the un-jittered stripe-python value.
        let full = |n| backoff_delay(n, None, 1000).as_millis();
        assert_eq!(full(1), 500);
        assert_eq!(full(2), 1000);
        assert_eq!(full(3), 2000);
        assert_eq!(full(4), 4000);
        assert_eq!(full(5), 5000);
        assert_eq!(full(40), 5000);
    }

    #[test]
    fn jitter_halves_at_most_and_never_goes_below_half_a_second() {
        assert_eq!(backoff_delay(1, None, 0).as_millis(), 500);
        assert_eq!(backoff_delay(3, None, 0).as_millis(), 1000);
        assert_eq!(backoff_delay(3, None, 500).as_millis(), 1500);
        assert_eq!(backoff_delay(6, None, 0).as_millis(), 2500);
        for j in [0, 1, 250, 999, 1000, 5000] {
            let d = backoff_delay(2, None, j).as_millis();
            assert!((500..=1000).contains(&d), "{j}: {d}");
        }
    }

    #[test]
    fn retry_after_is_honoured_up_to_a_minute() {
        assert_eq!(backoff_delay(1, Some("3"), 0).as_millis(), 3000);
        assert_eq!(backoff_delay(1, Some(" 60 "), 0).as_millis(), 60_000);
        assert_eq!(backoff_delay(1, Some("61"), 0).as_millis(), 500);
        assert_eq!(backoff_delay(4, Some("1"), 1000).as_millis(), 4000);
        assert_eq!(backoff_delay(1, Some("soon"), 0).as_millis(), 500);
    }

    #[test]
    fn jitter_stays_in_range() {
        for _ in 0..100 {
            assert!(jitter_permille() <= 1000);
        }
    }
}
