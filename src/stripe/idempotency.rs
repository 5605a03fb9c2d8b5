//! Idempotency keys derived from what a call means.
//!
//! A key built from a row id would be wrong: ids from a sequence are not
//! reused after a rollback, so a transaction that rolled back after Stripe
//! answered would, on its retry, send a new key and create a second
//! PaymentIntent or refund. A key built from meaning (this installation, this
//! order or payment, this amount and currency, and how many earlier attempts of
//! this kind exist) comes out the same on the retry, so Stripe replays its
//! first answer; a genuinely new refund of the same amount has one more earlier
//! attempt, so it gets a new key.
//!
//! Stripe keeps keys for at least 24 hours and refuses a reused key whose
//! parameters differ (`idempotency_error`), which is what we want if an order's
//! price changed between a rolled-back attempt and the next one.

use sha2::{Digest, Sha256};

/// Stripe accepts keys up to 255 characters; ours are at most 6 + 32 + 1 + 64.
const MAX_KIND_LEN: usize = 32;

/// `pgpay-<kind>-<sha256 hex>` over the installation id, the kind of call
/// (`payment`, `refund`, `customer`, `subscription`, `cancel`…), the parts
/// that give the call its meaning (order or payment reference, amount,
/// currency, price…) and `attempt`, the count of earlier attempts of the same
/// kind for the same object.
///
/// Deterministic: the same inputs always give the same key, on any machine.
/// Each component is length-prefixed before hashing, so `["ab","c"]` and
/// `["a","bc"]` differ. Do not pass row ids from sequences as parts.
/// The kind is repeated in clear (letters, digits and `_` only, at most 32) so
/// the request log is readable; the hash covers the exact kind given.
pub fn idempotency_key(installation_id: &str, kind: &str, parts: &[&str], attempt: u64) -> String {
    let mut hasher = Sha256::new();
    let mut feed = |bytes: &[u8]| {
        hasher.update((bytes.len() as u64).to_be_bytes());
        hasher.update(bytes);
    };
    feed(b"pg_payment idempotency v1");
    feed(installation_id.as_bytes());
    feed(kind.as_bytes());
    feed(&(parts.len() as u64).to_be_bytes());
    for part in parts {
        feed(part.as_bytes());
    }
    feed(&attempt.to_be_bytes());
    let digest = hasher.finalize();

    let readable: String = kind
        .chars()
        .take(MAX_KIND_LEN)
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect();
    let mut key = String::with_capacity(6 + readable.len() + 1 + 64);
    key.push_str("pgpay-");
    key.push_str(&readable);
    key.push('-');
    for byte in digest {
        key.push_str(&format!("{byte:02x}"));
    }
    key
}

/// How many saved errors a call walks past before it gives up (each one is a real request
/// that Stripe refused, then saved under that key).
pub const MAX_REPLAYED_ERRORS: u32 = 8;

/// The `replay`-th key of the sequence that starts at `key`: where a call goes on when
/// Stripe replays an error it saved for the previous one (Stripe keeps the first answer to a
/// key for at least 24 hours, errors included, so the same key would fail all day). The
/// same derivation every time, so a transaction that rolled back after a success walks the
/// same keys and reaches the same object again.
pub fn replay_key(key: &str, replay: u32) -> String {
    if replay == 0 {
        key.to_string()
    } else {
        format!("{key}-r{replay}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INSTALLATION: &str = "3f2b9c1e-0d6a-4c55-9a5e-6f1f0c1d2e3f";

    #[test]
    fn replay_keys_are_a_fixed_sequence_from_the_key() {
        let key = idempotency_key(INSTALLATION, "payment", &["42", "9999", "usd"], 0);
        assert_eq!(replay_key(&key, 0), key);
        assert_eq!(replay_key(&key, 1), format!("{key}-r1"));
        assert_ne!(replay_key(&key, 1), replay_key(&key, 2));
        assert!(replay_key(&key, MAX_REPLAYED_ERRORS).len() <= 255);
    }

    #[test]
    fn same_meaning_gives_the_same_key() {
        let a = idempotency_key(INSTALLATION, "payment", &["order:42", "9999", "usd"], 0);
        let b = idempotency_key(INSTALLATION, "payment", &["order:42", "9999", "usd"], 0);
        assert_eq!(a, b);
        assert!(a.starts_with("pgpay-payment-"), "{a}");
        assert_eq!(a.len(), "pgpay-payment-".len() + 64);
    }

    #[test]
    fn key_is_stable_across_releases() {
        // Changing this value changes every key in flight: a retry after an
        // upgrade would then create a second PaymentIntent. Don't.
        let key = idempotency_key("inst", "refund", &["pi_1", "500", "eur"], 1);
        assert_eq!(
            key,
            "pgpay-refund-bbe4c5be664eb91935489ea03b23db8330f51171d5a7eef205269c73c9552061"
        );
    }

    #[test]
    fn every_component_changes_the_key() {
        let base = idempotency_key(INSTALLATION, "refund", &["pay:7", "500", "eur"], 0);
        let variants = [
            idempotency_key("other-installation", "refund", &["pay:7", "500", "eur"], 0),
            idempotency_key(INSTALLATION, "payment", &["pay:7", "500", "eur"], 0),
            idempotency_key(INSTALLATION, "refund", &["pay:8", "500", "eur"], 0),
            idempotency_key(INSTALLATION, "refund", &["pay:7", "501", "eur"], 0),
            idempotency_key(INSTALLATION, "refund", &["pay:7", "500", "usd"], 0),
            idempotency_key(INSTALLATION, "refund", &["pay:7", "500", "eur"], 1),
            idempotency_key(INSTALLATION, "refund", &["pay:7", "500"], 0),
        ];
        for v in variants {
            assert_ne!(base, v);
        }
    }

    #[test]
    fn components_cannot_run_into_each_other() {
        assert_ne!(
            idempotency_key("i", "k", &["ab", "c"], 0),
            idempotency_key("i", "k", &["a", "bc"], 0)
        );
        assert_ne!(
            idempotency_key("ik", "", &[], 0),
            idempotency_key("i", "k", &[], 0)
        );
    }

    #[test]
    fn odd_kinds_stay_readable_and_bounded() {
        let key = idempotency_key("i", "Sub/Cancel now", &[], 0);
        assert!(key.starts_with("pgpay-sub_cancel_now-"), "{key}");
        let long = "x".repeat(300);
        assert!(idempotency_key("i", &long, &[], 0).len() <= 255);
    }
}
