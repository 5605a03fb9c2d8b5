//! Stripe webhook signature verification, exactly as Stripe's libraries do it.
//!
//! The `Stripe-Signature` header is `t=<unix time>,v1=<hex hmac>[,v1=...][,v0=...]`. Each
//! `v1` is HMAC-SHA256 of `"<t>.<raw body>"` keyed with an endpoint's `whsec_` secret. Any
//! `v1` matching any configured secret passes (secrets are rolled by having two at once);
//! other schemes are ignored. Only then is the timestamp checked against the tolerance, and
//! only for being too old, as stripe-python and stripe-node do.
//!
//! Nothing here allocates on the happy path: the header is split in place, hex is decoded
//! onto the stack, and the HMAC is fed the timestamp, the dot and the body in three updates.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// Headers longer than this are not Stripe's (a few signatures of 64 hex chars each).
const MAX_HEADER_LEN: usize = 4096;
/// More v1 values than any real rollover produces; bounds the work an attacker can ask for.
const MAX_SIGNATURES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignatureError {
    /// The header has no `t=` or no `v1=` (or is not a Stripe header at all).
    Malformed(&'static str),
    /// No v1 signature matched any configured secret.
    NoMatch,
    /// The signature matched but its timestamp is older than the tolerance.
    TooOld { age_s: i64, tolerance_s: i64 },
}

impl std::fmt::Display for SignatureError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SignatureError::Malformed(why) => write!(f, "the Stripe-Signature header is malformed: {why}"),
            SignatureError::NoMatch => f.write_str(
                "no signature in the Stripe-Signature header matches the payload for any configured webhook secret",
            ),
            SignatureError::TooOld { age_s, tolerance_s } => write!(
                f,
                "the webhook signature timestamp is {age_s} s old, older than the tolerance of {tolerance_s} s"
            ),
        }
    }
}

/// Verify `header` over `payload` against every secret. `now` is unix seconds;
/// a `tolerance_s` of 0 turns the age check off. Returns the signed timestamp.
pub fn verify<'s>(
    payload: &[u8],
    header: &str,
    secrets: impl IntoIterator<Item = &'s str> + Clone,
    now: i64,
    tolerance_s: i64,
) -> Result<i64, SignatureError> {
    if header.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed("it is too long"));
    }
    let mut timestamp: Option<&str> = None;
    let mut signatures: [[u8; 32]; MAX_SIGNATURES] = [[0; 32]; MAX_SIGNATURES];
    let mut count = 0;
    let mut saw_v1 = false;
    for item in header.split(',') {
        // No trimming and lower-case hex only: stripe-python and stripe-node compare the
        // header's text as is, and a relay must not accept what Stripe's libraries refuse.
        let Some((key, value)) = item.split_once('=') else {
            continue;
        };
        match key {
            "t" => timestamp = Some(value),
            "v1" => {
                saw_v1 = true;
                // A v1 that is not 64 hex digits can never match; skip it like Stripe does.
                if count < MAX_SIGNATURES && decode_hex32(value, &mut signatures[count]) {
                    count += 1;
                }
            }
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed("no t= timestamp"))?;
    let timestamp: i64 = timestamp
        .parse()
        .map_err(|_| SignatureError::Malformed("t= is not a unix timestamp"))?;
    if !saw_v1 {
        return Err(SignatureError::Malformed("no v1= signature"));
    }
    let mut t_buf = itoa_buf(timestamp);
    let t_bytes = t_buf.as_bytes();

    let mut matched = false;
    for secret in secrets.clone() {
        let mut mac = match HmacSha256::new_from_slice(secret.as_bytes()) {
            Ok(m) => m,
            Err(_) => continue,
        };
        mac.update(t_bytes);
        mac.update(b".");
        mac.update(payload);
        let expected: [u8; 32] = mac.finalize().into_bytes().into();
        // Compare against every candidate without short-circuiting, so timing reveals nothing.
        for candidate in &signatures[..count] {
            matched |= bool::from(expected.ct_eq(candidate));
        }
    }
    t_buf.clear();
    if !matched {
        return Err(SignatureError::NoMatch);
    }
    if tolerance_s > 0 && timestamp < now - tolerance_s {
        return Err(SignatureError::TooOld {
            age_s: now - timestamp,
            tolerance_s,
        });
    }
    Ok(timestamp)
}

/// Stripe signs the decimal timestamp as it appears in the header; re-render it canonically
/// (a header `t=0017...` would not be produced by Stripe and must not match).
fn itoa_buf(value: i64) -> TimestampText {
    let mut buf = TimestampText {
        bytes: [0; 24],
        len: 0,
    };
    let mut n = value.unsigned_abs();
    let mut digits = [0u8; 20];
    let mut i = 0;
    loop {
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        i += 1;
        if n == 0 {
            break;
        }
    }
    if value < 0 {
        buf.bytes[0] = b'-';
        buf.len = 1;
    }
    while i > 0 {
        i -= 1;
        buf.bytes[buf.len] = digits[i];
        buf.len += 1;
    }
    buf
}

struct TimestampText {
    bytes: [u8; 24],
    len: usize,
}

impl TimestampText {
    fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
    fn clear(&mut self) {
        self.len = 0;
    }
}

fn decode_hex32(text: &str, out: &mut [u8; 32]) -> bool {
    let bytes = text.as_bytes();
    if bytes.len() != 64 {
        return false;
    }
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => out[i] = (hi << 4) | lo,
            _ => return false,
        }
    }
    true
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Compute a `v1` signature, for tests.
#[cfg(any(test, feature = "pg_test"))]
pub fn sign_v1(payload: &[u8], secret: &str, timestamp: i64) -> String {
    let mut mac = HmacSha256::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(payload);
    hex::encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAYLOAD: &[u8] = br#"{"id":"evt_test_webhook","object":"event"}"#;
    const SECRET: &str = "whsec_test_secret";
    const T: i64 = 1_700_000_000;
    const KNOWN_V1: &str = "d95c6b7477fbd7e9f90b1b0ef5f9c7ac25abca5382460e0d988c2b2a5b71b990";

    #[test]
    fn known_test_vector_matches_stripe() {
        assert_eq!(sign_v1(PAYLOAD, SECRET, T), KNOWN_V1);
        let header = format!("t={T},v1={KNOWN_V1}");
        assert_eq!(verify(PAYLOAD, &header, [SECRET], T + 10, 300), Ok(T));
    }

    #[test]
    fn any_of_several_v1_values_may_match_and_v0_is_ignored() {
        let bad = "0".repeat(64);
        let header = format!("t={T},v0={KNOWN_V1},v1={bad},v1={KNOWN_V1}");
        assert_eq!(verify(PAYLOAD, &header, [SECRET], T, 300), Ok(T));
        let only_v0 = format!("t={T},v0={KNOWN_V1}");
        assert_eq!(
            verify(PAYLOAD, &only_v0, [SECRET], T, 300),
            Err(SignatureError::Malformed("no v1= signature"))
        );
    }

    #[test]
    fn every_configured_secret_is_tried() {
        let header = format!("t={T},v1={KNOWN_V1}");
        assert_eq!(
            verify(PAYLOAD, &header, ["whsec_other", SECRET], T, 300),
            Ok(T)
        );
        assert_eq!(
            verify(PAYLOAD, &header, ["whsec_other"], T, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn a_changed_byte_of_payload_fails() {
        let header = format!("t={T},v1={KNOWN_V1}");
        let changed = br#"{"id":"evt_test_webhook","object":"event" }"#;
        assert_eq!(
            verify(changed, &header, [SECRET], T, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn old_signatures_are_refused_future_ones_are_not() {
        let header = format!("t={T},v1={KNOWN_V1}");
        assert_eq!(
            verify(PAYLOAD, &header, [SECRET], T + 301, 300),
            Err(SignatureError::TooOld {
                age_s: 301,
                tolerance_s: 300
            })
        );
        assert_eq!(verify(PAYLOAD, &header, [SECRET], T - 1000, 300), Ok(T));
        assert_eq!(verify(PAYLOAD, &header, [SECRET], T + 100_000, 0), Ok(T));
    }

    #[test]
    fn a_bad_signature_is_reported_before_its_age() {
        let header = format!("t={T},v1={}", "a".repeat(64));
        assert_eq!(
            verify(PAYLOAD, &header, [SECRET], T + 10_000, 300),
            Err(SignatureError::NoMatch)
        );
    }

    #[test]
    fn malformed_headers_are_refused() {
        for header in ["", "garbage", "v1=abc", &format!("t=abc,v1={KNOWN_V1}")] {
            assert!(
                matches!(
                    verify(PAYLOAD, header, [SECRET], T, 300),
                    Err(SignatureError::Malformed(_))
                ),
                "{header}"
            );
        }
        let long = format!("t={T},{}", "v1=00,".repeat(1000));
        assert!(matches!(
            verify(PAYLOAD, &long, [SECRET], T, 300),
            Err(SignatureError::Malformed(_))
        ));
    }

    #[test]
    fn uppercase_hex_and_padded_keys_are_refused_like_stripe_libraries_do() {
        let upper = format!("t={T},v1={}", KNOWN_V1.to_uppercase());
        assert_eq!(
            verify(PAYLOAD, &upper, [SECRET], T, 300),
            Err(SignatureError::NoMatch)
        );
        let padded = format!("t={T}, v1={KNOWN_V1}");
        assert_eq!(
            verify(PAYLOAD, &padded, [SECRET], T, 300),
            Err(SignatureError::Malformed("no v1= signature"))
        );
    }

    #[test]
    fn timestamp_text_is_canonical_decimal() {
        assert_eq!(itoa_buf(0).as_bytes(), b"0");
        assert_eq!(itoa_buf(1_700_000_000).as_bytes(), b"1700000000");
        assert_eq!(itoa_buf(-5).as_bytes(), b"-5");
    }
}
