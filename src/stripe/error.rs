//! What can go wrong talking to Stripe, with the SQLSTATE each case should
//! surface as and a hint saying what to do next.
//!
//! SQLSTATE choices (the lead's error module is the one place that reports):
//! - `card_error`, `invalid_request_error`, an unknown type on a 4xx, and a
//!   bad argument refused before sending: `22023` (invalid_parameter_value):
//!   the input is wrong and repeating the call fails the same way.
//! - `idempotency_error`: `55000` (object_not_in_prerequisite_state): the same
//!   key was already used for a call with other parameters.
//! - `authentication_error`: `28000`; `permission_error`: `42501`.
//! - `rate_limit_error` or HTTP 429: `53000` (insufficient_resources): try later.
//! - `api_error` or any 5xx, an unreadable answer, a network failure or our own
//!   timeout: `58000` (system_error, "external to PostgreSQL"). Class 08 would
//!   read better but poolers and drivers (HikariCP, pgbouncer clients) treat
//!   08xxx as "this database connection is dead" and drop it.
//! - interrupted by a query cancel or statement_timeout: `57014`.
//!
//! Nothing secret may reach a message: every text from the server or the
//! network stack goes through `scrub_secrets` before it is stored, and
//! `Display` scrubs again.

use serde::Deserialize;
use std::fmt;

/// Returned by the caller's interrupt hook to stop a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interrupted;

impl fmt::Display for Interrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("interrupted")
    }
}

impl std::error::Error for Interrupted {}

/// Stripe's error object, with the HTTP status and `Request-Id` it came with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub http_status: u16,
    /// `card_error`, `invalid_request_error`, `api_error`…
    pub error_type: String,
    pub code: Option<String>,
    pub decline_code: Option<String>,
    pub param: Option<String>,
    pub message: String,
    pub request_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StripeError {
    /// Stripe answered with an error object (boxed: it is the big one, and
    /// every `Result` carries the size of its largest error).
    Api(Box<ApiError>),
    /// No answer: DNS, connect, TLS, reset, a read error.
    Network { message: String, retryable: bool },
    /// No complete answer within `timeout_ms`.
    Timeout { after_ms: u64 },
    /// The caller's interrupt hook stopped the call.
    Interrupted,
    /// An answer that is not what Stripe sends (not JSON, not the object).
    BadResponse {
        http_status: u16,
        request_id: Option<String>,
        detail: String,
    },
    /// Refused before anything was sent.
    InvalidArgument(String),
}

/// The kinds of failure a caller must tell apart: whether to retry, fix the input or the
/// configuration. No SQLSTATEs here (no pgrx): `error.rs` maps each class to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Stripe refused the request as sent (a declined card, a bad parameter): repeating it
    /// fails the same way.
    Refused,
    /// The same Idempotency-Key was sent with other parameters.
    IdempotencyConflict,
    /// The key was not accepted.
    Authentication,
    /// A restricted key lacks a permission.
    Permission,
    /// Too many requests: retry later.
    RateLimited,
    /// Stripe failed, or could not be reached in time, or answered something else: retry.
    Unavailable,
    /// The caller cancelled the call.
    Interrupted,
    /// Refused before sending: an argument the client checks itself.
    InvalidArgument,
}

impl StripeError {
    /// Builds the error for a non-2xx answer from its body.
    pub fn from_response(http_status: u16, request_id: Option<String>, body: &str) -> Self {
        #[derive(Deserialize)]
        struct Envelope {
            error: Body,
        }
        #[derive(Deserialize)]
        struct Body {
            #[serde(rename = "type")]
            error_type: Option<String>,
            code: Option<String>,
            decline_code: Option<String>,
            param: Option<String>,
            message: Option<String>,
        }
        match serde_json::from_str::<Envelope>(body) {
            Ok(Envelope { error }) => StripeError::Api(Box::new(ApiError {
                http_status,
                error_type: error
                    .error_type
                    .unwrap_or_else(|| default_type(http_status).to_string()),
                code: error.code.filter(|c| !c.is_empty()),
                decline_code: error.decline_code.filter(|c| !c.is_empty()),
                // Stripe sends "param": "" when no parameter is at fault.
                param: error.param.filter(|p| !p.is_empty()),
                message: scrub_secrets(
                    error.message.as_deref().unwrap_or("Stripe gave no message"),
                ),
                request_id,
            })),
            Err(_) => StripeError::BadResponse {
                http_status,
                request_id,
                detail: format!("HTTP {http_status} without a Stripe error object"),
            },
        }
    }

    pub fn network(message: &str, retryable: bool) -> Self {
        StripeError::Network {
            message: scrub_secrets(message),
            retryable,
        }
    }

    /// What kind of failure this is; `error.rs` maps each class to its SQLSTATE.
    pub fn class(&self) -> ErrorClass {
        match self {
            StripeError::Api(api) => match api.error_type.as_str() {
                "card_error" | "invalid_request_error" => ErrorClass::Refused,
                "idempotency_error" => ErrorClass::IdempotencyConflict,
                "authentication_error" => ErrorClass::Authentication,
                "permission_error" => ErrorClass::Permission,
                "rate_limit_error" => ErrorClass::RateLimited,
                "api_error" => ErrorClass::Unavailable,
                _ if api.http_status == 429 => ErrorClass::RateLimited,
                _ if api.http_status >= 500 => ErrorClass::Unavailable,
                _ => ErrorClass::Refused,
            },
            StripeError::Network { .. }
            | StripeError::Timeout { .. }
            | StripeError::BadResponse { .. } => ErrorClass::Unavailable,
            StripeError::Interrupted => ErrorClass::Interrupted,
            StripeError::InvalidArgument(_) => ErrorClass::InvalidArgument,
        }
    }

    /// Stripe's request id (`req_…`), for the user to quote to Stripe support.
    pub fn request_id(&self) -> Option<&str> {
        match self {
            StripeError::Api(api) => api.request_id.as_deref(),
            StripeError::BadResponse { request_id, .. } => request_id.as_deref(),
            _ => None,
        }
    }

    /// What to do next, for the error report's HINT.
    pub fn hint(&self) -> String {
        let again = "Run the same call again: it sends the same Idempotency-Key, so what Stripe \
                     already did is returned instead of done twice, and an error Stripe saved \
                     under that key moves the call on to the next key of its sequence.";
        match self {
            StripeError::Api(api) => match api.error_type.as_str() {
                "card_error" => "The card was declined or is invalid: ask the customer for \
                                 another payment method."
                    .to_string(),
                "invalid_request_error" => "Stripe refused the request as sent; repeating \
                                            it fails the same way. Check the named parameter \
                                            and the object ids."
                    .to_string(),
                "idempotency_error" => "An earlier call with the same meaning used other \
                                        parameters (did the price change after a rolled-back \
                                        attempt?). Make the order match, or wait 24 hours \
                                        for Stripe to forget the key."
                    .to_string(),
                "authentication_error" => "Stripe did not accept the secret key: set a \
                                           valid one with payment.configure()."
                    .to_string(),
                "permission_error" => "The restricted key lacks a permission this call \
                                       needs: grant it in the Stripe dashboard or use a \
                                       secret key."
                    .to_string(),
                _ => format!("Stripe could not complete the request now. {again}"),
            },
            StripeError::Network { .. } | StripeError::Timeout { .. } => format!(
                "Stripe could not be reached in time (check pg_payment.stripe_api_base, the \
                 network, pg_payment.http_timeout_ms). {again}"
            ),
            StripeError::Interrupted => {
                format!("The call was cancelled while Stripe may already have acted on it. {again}")
            }
            StripeError::BadResponse { .. } => format!(
                "The answer did not come from Stripe's API as expected (check \
                 pg_payment.stripe_api_base and any proxy). {again}"
            ),
            StripeError::InvalidArgument(_) => {
                "Nothing was sent to Stripe; fix the argument and call again.".to_string()
            }
        }
    }
}

fn default_type(http_status: u16) -> &'static str {
    match http_status {
        401 => "authentication_error",
        402 => "card_error",
        403 => "permission_error",
        429 => "rate_limit_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

impl fmt::Display for StripeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = match self {
            StripeError::Api(api) => {
                let ApiError {
                    http_status,
                    error_type,
                    code,
                    decline_code,
                    param,
                    message,
                    request_id,
                } = api.as_ref();
                let mut s = format!("Stripe {error_type}");
                let mut details = Vec::new();
                if let Some(code) = code {
                    details.push(format!("code {code}"));
                }
                if let Some(decline) = decline_code {
                    details.push(format!("decline code {decline}"));
                }
                if let Some(param) = param {
                    details.push(format!("parameter {param}"));
                }
                if !details.is_empty() {
                    s.push_str(&format!(" ({})", details.join(", ")));
                }
                s.push_str(&format!(": {message} [HTTP {http_status}"));
                if let Some(id) = request_id {
                    s.push_str(&format!(", request {id}"));
                }
                s.push(']');
                s
            }
            StripeError::Network { message, .. } => {
                format!("could not reach Stripe: {message}")
            }
            StripeError::Timeout { after_ms } => {
                format!("Stripe did not answer within {after_ms} ms")
            }
            StripeError::Interrupted => {
                "the call to Stripe was interrupted (query cancel or statement_timeout)".to_string()
            }
            StripeError::BadResponse {
                http_status,
                request_id,
                detail,
            } => match request_id {
                Some(id) => format!(
                    "unexpected answer from Stripe: {detail} [HTTP {http_status}, request {id}]"
                ),
                None => format!("unexpected answer from Stripe: {detail} [HTTP {http_status}]"),
            },
            StripeError::InvalidArgument(message) => message.clone(),
        };
        f.write_str(&scrub_secrets(&text))
    }
}

impl std::error::Error for StripeError {}

/// Replaces anything that looks like a Stripe secret (`sk_…`, `rk_…`,
/// `whsec_…`) with its prefix and `[redacted]`. A prefix counts only at the
/// start of a word, so `disk_usage` or `work_item` are left alone.
pub fn scrub_secrets(text: &str) -> String {
    const PREFIXES: [&str; 3] = ["sk_", "rk_", "whsec_"];
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let at_word_start = i == 0 || !bytes[i - 1].is_ascii_alphanumeric();
        let prefix = if at_word_start {
            PREFIXES.iter().find(|p| text[i..].starts_with(**p))
        } else {
            None
        };
        if let Some(prefix) = prefix {
            let mut end = i + prefix.len();
            // Stripe masks keys with '*' in its messages; take those too.
            while end < bytes.len()
                && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_' || bytes[end] == b'*')
            {
                end += 1;
            }
            out.push_str(prefix);
            out.push_str("[redacted]");
            i = end;
        } else {
            // Copy one whole UTF-8 character.
            let ch = text[i..].chars().next().unwrap_or('\u{fffd}');
            out.push(ch);
            i += ch.len_utf8().max(1);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECLINE: &str = r#"{
      "error": {
        "charge": "ch_3MqBXr2eZvKYlo2C0hDZ5kMX",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
        "doc_url": "https://stripe.com/docs/error-codes/card-declined",
        "message": "Your card has insufficient funds.",
        "param": "",
        "payment_intent": {"id": "pi_3MqBXr2eZvKYlo2C0bdsEw2w", "object": "payment_intent"},
        "request_log_url": "https://dashboard.stripe.com/test/logs/req_8Gr1gX8ZlpXWNp?t=1680000000",
        "type": "card_error"
      }
    }"#;

    #[test]
    fn card_decline_is_parsed_with_every_field() {
        let err = StripeError::from_response(402, Some("req_8Gr1gX8ZlpXWNp".into()), DECLINE);
        assert_eq!(
            err,
            StripeError::Api(Box::new(ApiError {
                http_status: 402,
                error_type: "card_error".into(),
                code: Some("card_declined".into()),
                decline_code: Some("insufficient_funds".into()),
                param: None,
                message: "Your card has insufficient funds.".into(),
                request_id: Some("req_8Gr1gX8ZlpXWNp".into()),
            }))
        );
        assert_eq!(err.class(), ErrorClass::Refused);
        assert_eq!(
            err.to_string(),
            "Stripe card_error (code card_declined, decline code insufficient_funds): Your \
             card has insufficient funds. [HTTP 402, request req_8Gr1gX8ZlpXWNp]"
        );
        assert!(err.hint().contains("another payment method"));
    }

    #[test]
    fn invalid_request_names_the_parameter() {
        let body = r#"{"error":{"type":"invalid_request_error","code":"parameter_unknown",
            "param":"automatic_payment_methods","message":"Received unknown parameter: automatic_payment_methods"}}"#;
        let err = StripeError::from_response(400, None, body);
        assert!(err
            .to_string()
            .contains("parameter automatic_payment_methods"));
        assert_eq!(err.class(), ErrorClass::Refused);
    }

    #[test]
    fn classes_follow_the_error_type_then_the_status() {
        let api = |status, t: &str| {
            StripeError::from_response(
                status,
                None,
                &format!(r#"{{"error":{{"type":"{t}","message":"m"}}}}"#),
            )
        };
        assert_eq!(
            api(401, "authentication_error").class(),
            ErrorClass::Authentication
        );
        assert_eq!(api(403, "permission_error").class(), ErrorClass::Permission);
        assert_eq!(
            api(429, "rate_limit_error").class(),
            ErrorClass::RateLimited
        );
        assert_eq!(
            api(400, "idempotency_error").class(),
            ErrorClass::IdempotencyConflict
        );
        assert_eq!(api(500, "api_error").class(), ErrorClass::Unavailable);
        assert_eq!(api(503, "something_new").class(), ErrorClass::Unavailable);
        assert_eq!(api(429, "something_new").class(), ErrorClass::RateLimited);
        assert_eq!(api(418, "something_new").class(), ErrorClass::Refused);
        assert_eq!(StripeError::Interrupted.class(), ErrorClass::Interrupted);
        assert_eq!(
            StripeError::Timeout { after_ms: 1 }.class(),
            ErrorClass::Unavailable
        );
        assert_eq!(
            StripeError::network("reset", true).class(),
            ErrorClass::Unavailable
        );
    }

    #[test]
    fn missing_type_is_inferred_from_the_status() {
        let err = StripeError::from_response(401, None, r#"{"error":{"message":"No key"}}"#);
        assert_eq!(err.class(), ErrorClass::Authentication);
    }

    #[test]
    fn non_json_error_bodies_are_bad_responses() {
        let err = StripeError::from_response(502, Some("req_1".into()), "<html>Bad gateway</html>");
        assert!(matches!(
            err,
            StripeError::BadResponse {
                http_status: 502,
                ..
            }
        ));
        assert_eq!(err.request_id(), Some("req_1"));
        assert!(!err.to_string().contains("<html>"));
    }

    #[test]
    fn secret_keys_never_reach_a_message() {
        let body = r#"{"error":{"type":"invalid_request_error",
            "message":"Invalid API Key provided: sk_live_DUMMY_key_00 (also rk_test_Zz9 and whsec_abc)"}}"#;
        let err = StripeError::from_response(401, None, body);
        let shown = format!("{err} {err:?} {}", err.hint());
        for secret in [
            "sk_live_DUMMY_key_00",
            "DUMMY_key",
            "rk_test_Zz9",
            "whsec_abc",
        ] {
            assert!(!shown.contains(secret), "{shown}");
        }
        assert!(shown.contains("sk_[redacted]"), "{shown}");
        // Built by hand without scrubbing, Display still scrubs.
        let raw = StripeError::InvalidArgument("bad key sk_test_123".into());
        assert_eq!(raw.to_string(), "bad key sk_[redacted]");
        let net = StripeError::network("Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc refused", true);
        assert!(!format!("{net:?}").contains("4eC39"));
    }

    #[test]
    fn scrubbing_leaves_ordinary_words_alone() {
        assert_eq!(
            scrub_secrets("disk_usage work_item pk_test_1"),
            "disk_usage work_item pk_test_1"
        );
        assert_eq!(scrub_secrets("sk_test_****1234."), "sk_[redacted].");
        assert_eq!(scrub_secrets("key=sk_live_x, ok"), "key=sk_[redacted], ok");
        assert_eq!(scrub_secrets("é sk_a é"), "é sk_[redacted] é");
        assert_eq!(scrub_secrets(""), "");
    }
}
