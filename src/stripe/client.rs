//! The request loop: one call to Stripe, retried where Stripe's libraries
//! retry, every attempt reported, interruptible throughout.

use super::error::{Interrupted, StripeError};
use super::form::Form;
use super::idempotency::{replay_key, MAX_REPLAYED_ERRORS};
use super::retry::{backoff_delay, jitter_permille, should_retry, Attempt};
use super::transport::{self, RawResponse, SendError};
use super::Config;
use serde::de::DeserializeOwned;
use std::time::{Duration, Instant};

/// How often the interrupt hook is called while waiting.
pub const POLL_INTERVAL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Delete => "DELETE",
        }
    }
}

/// One attempt, for the `api_requests` table. Holds no secret and no card
/// data: no headers, no body, no message text; only ids, codes and timings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestLog {
    pub method: &'static str,
    pub path: String,
    pub idempotency_key: Option<String>,
    pub http_status: Option<u16>,
    /// Stripe's `Request-Id` header (`req_…`).
    pub stripe_request_id: Option<String>,
    pub duration_ms: u64,
    /// Stripe's error type, or `network_error`, `timeout`, `interrupted`,
    /// `bad_response` for failures without a Stripe error object.
    pub error_type: Option<String>,
    pub error_code: Option<String>,
}

/// What the caller lends to one call. Both are called on the calling thread
/// only, so they may touch Postgres.
pub struct Hooks<'a> {
    /// Called at least every 100 ms while a request is in flight or a retry
    /// is waiting; an `Err` ends the call with `StripeError::Interrupted`.
    pub check_interrupts: &'a dyn Fn() -> Result<(), Interrupted>,
    /// Called once per attempt, retries included, after it ends.
    pub on_attempt: &'a mut dyn FnMut(&RequestLog),
}

/// Looks at Stripe for what an earlier key of a call made (see
/// `request_past_saved_errors_unless_made`).
pub type MadeAlready<'f, T> = &'f dyn Fn(&Client, Hooks<'_>) -> Result<Option<T>, StripeError>;

/// What a POST does when Stripe replays an error it saved under the call's key.
enum SavedErrors<'f, T> {
    /// Return it.
    Stop,
    /// Go on with the next key of the sequence.
    Walk,
    /// Look for what the earlier key made first; go on with the next key if nothing.
    WalkUnlessMade(MadeAlready<'f, T>),
}

/// One client per backend: the agent inside keeps connections to Stripe open
/// between calls, and building it loads the TLS roots, so build it once.
pub struct Client {
    pub(super) config: Config,
    pub(super) agent: ureq::Agent,
}

impl Client {
    pub fn new(config: Config) -> Client {
        let agent = transport::new_agent(&config);
        Client { config, agent }
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Changes the per-session limits without rebuilding the agent, so
    /// `SET pg_payment.http_timeout_ms` keeps the open connections.
    pub fn set_limits(&mut self, timeout_ms: u64, max_network_retries: u32) {
        self.config.timeout_ms = timeout_ms;
        self.config.max_network_retries = max_network_retries;
    }

    /// Sends one request and decodes a 2xx answer as `T`. `path` starts with
    /// `/v1/`. A POST needs its Idempotency-Key; GET and DELETE send none
    /// (Stripe ignores it there). An error Stripe saved under the key is returned.
    pub fn request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        form: &Form,
        idempotency_key: Option<&str>,
        hooks: Hooks<'_>,
    ) -> Result<T, StripeError> {
        self.send_request(
            method,
            path,
            form,
            idempotency_key,
            hooks,
            SavedErrors::Stop,
        )
    }

    /// `request` for a POST whose duplicate would be harmless (an unpaid PaymentIntent, a
    /// customer, a cancellation): an error Stripe saved under the key and replays moves the
    /// call on to the next key of its sequence (`replay_key`), so one failure does not lock
    /// the call out for Stripe's 24 hours. Not for money movements, where a saved 500 may
    /// hide an object Stripe did make: see `request_past_saved_errors_unless_made`.
    pub fn request_past_saved_errors<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        form: &Form,
        idempotency_key: Option<&str>,
        hooks: Hooks<'_>,
    ) -> Result<T, StripeError> {
        self.send_request(
            method,
            path,
            form,
            idempotency_key,
            hooks,
            SavedErrors::Walk,
        )
    }

    /// `request_past_saved_errors` for a POST that moves money (a refund): before a new key
    /// goes out, `made_already` looks for what an earlier key may have made at Stripe despite
    /// its error (by the metadata the call sends), and that is returned instead.
    pub fn request_past_saved_errors_unless_made<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        form: &Form,
        idempotency_key: Option<&str>,
        hooks: Hooks<'_>,
        made_already: MadeAlready<'_, T>,
    ) -> Result<T, StripeError> {
        let walk = SavedErrors::WalkUnlessMade(made_already);
        self.send_request(method, path, form, idempotency_key, hooks, walk)
    }

    fn send_request<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        form: &Form,
        idempotency_key: Option<&str>,
        hooks: Hooks<'_>,
        saved_errors: SavedErrors<'_, T>,
    ) -> Result<T, StripeError> {
        let Hooks {
            check_interrupts,
            on_attempt,
        } = hooks;
        let key = match method {
            Method::Post => Some(check_idempotency_key(idempotency_key)?),
            Method::Get | Method::Delete => None,
        };
        let mut retries_done = 0;
        // The key this attempt sends: the call's own, or the next of its sequence once
        // Stripe replayed an error saved under the previous one.
        let base_key = key;
        let mut replays = 0;
        let mut current_key = key.map(str::to_string);
        loop {
            check_interrupts().map_err(|_| StripeError::Interrupted)?;
            let started = Instant::now();
            let key = current_key.as_deref();
            let sent = transport::send(self, method, path, form, key, check_interrupts);
            let mut log = RequestLog {
                method: method.as_str(),
                path: path.to_string(),
                idempotency_key: key.map(str::to_string),
                http_status: None,
                stripe_request_id: None,
                duration_ms: started.elapsed().as_millis() as u64,
                error_type: None,
                error_code: None,
            };
            let (error, answer) = match sent {
                Ok(raw) if (200..300).contains(&raw.status) => {
                    log.http_status = Some(raw.status);
                    log.stripe_request_id = raw.request_id.clone();
                    let decoded = decode::<T>(&raw);
                    if decoded.is_err() {
                        log.error_type = Some("bad_response".into());
                    }
                    on_attempt(&log);
                    // Not retried: Stripe acted, and a replay returns the same.
                    return decoded;
                }
                Ok(raw) => {
                    let error =
                        StripeError::from_response(raw.status, raw.request_id.clone(), &raw.body);
                    log.http_status = Some(raw.status);
                    log.stripe_request_id = raw.request_id.clone();
                    match &error {
                        StripeError::Api(api) => {
                            log.error_type = Some(api.error_type.clone());
                            log.error_code = api.code.clone();
                        }
                        _ => log.error_type = Some("bad_response".into()),
                    }
                    let walks = !matches!(saved_errors, SavedErrors::Stop);
                    if let (true, true, Some(base)) = (walks, raw.replayed, base_key) {
                        if replays < MAX_REPLAYED_ERRORS {
                            on_attempt(&log);
                            if let SavedErrors::WalkUnlessMade(made_already) = &saved_errors {
                                let hooks = Hooks {
                                    check_interrupts,
                                    on_attempt: &mut *on_attempt,
                                };
                                if let Some(made) = made_already(self, hooks)? {
                                    return Ok(made);
                                }
                            }
                            replays += 1;
                            current_key = Some(replay_key(base, replays));
                            continue;
                        }
                    }
                    (error, Some(raw))
                }
                Err(SendError::Interrupted) => {
                    log.error_type = Some("interrupted".into());
                    on_attempt(&log);
                    return Err(StripeError::Interrupted);
                }
                Err(SendError::Timeout) => {
                    log.error_type = Some("timeout".into());
                    let after_ms = self.config.timeout_ms;
                    (StripeError::Timeout { after_ms }, None)
                }
                Err(SendError::Network { message, retryable }) => {
                    log.error_type = Some("network_error".into());
                    (StripeError::network(&message, retryable), None)
                }
            };
            on_attempt(&log);

            let decision = match &answer {
                Some(raw) => Attempt::Response {
                    status: raw.status,
                    should_retry_header: raw.should_retry.as_deref(),
                },
                None => Attempt::NetworkError {
                    retryable: matches!(
                        error,
                        StripeError::Timeout { .. }
                            | StripeError::Network {
                                retryable: true,
                                ..
                            }
                    ),
                },
            };
            if !should_retry(decision, retries_done, self.config.max_network_retries) {
                return Err(error);
            }
            retries_done += 1;
            let retry_after_header = answer.as_ref().and_then(|r| r.retry_after.as_deref());
            let delay = backoff_delay(retries_done, retry_after_header, jitter_permille());
            wait(delay, check_interrupts).map_err(|_| StripeError::Interrupted)?;
        }
    }
}

fn decode<T: DeserializeOwned>(raw: &RawResponse) -> Result<T, StripeError> {
    serde_json::from_str(&raw.body).map_err(|e| StripeError::BadResponse {
        http_status: raw.status,
        request_id: raw.request_id.clone(),
        // Position only: serde's text can quote the body, and the body can
        // hold a client_secret.
        detail: format!(
            "the answer is not the expected object ({:?} at line {} column {})",
            e.classify(),
            e.line(),
            e.column()
        ),
    })
}

/// Stripe accepts keys of up to 255 characters; we also keep them printable
/// ASCII so they can go in a header and a log line as they are.
fn check_idempotency_key(key: Option<&str>) -> Result<&str, StripeError> {
    match key {
        Some(k)
            if !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x21..0x7f).contains(&b)) =>
        {
            Ok(k)
        }
        _ => Err(StripeError::InvalidArgument(
            "every POST to Stripe needs an Idempotency-Key of 1 to 255 printable ASCII \
             characters; derive it with stripe::idempotency_key()"
                .into(),
        )),
    }
}

/// Sleeps for `duration` in slices, asking the hook between them.
pub fn wait(
    duration: Duration,
    check_interrupts: &dyn Fn() -> Result<(), Interrupted>,
) -> Result<(), Interrupted> {
    let end = Instant::now() + duration;
    loop {
        check_interrupts()?;
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        std::thread::sleep((end - now).min(POLL_INTERVAL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::ErrorClass;
    use std::cell::Cell;

    #[test]
    fn wait_polls_the_hook_and_stops_on_interrupt() {
        let calls = Cell::new(0);
        let hook = || {
            calls.set(calls.get() + 1);
            if calls.get() >= 3 {
                Err(Interrupted)
            } else {
                Ok(())
            }
        };
        let started = Instant::now();
        assert_eq!(wait(Duration::from_secs(10), &hook), Err(Interrupted));
        assert!(started.elapsed() < Duration::from_millis(500));
        assert_eq!(calls.get(), 3);
    }

    #[test]
    fn wait_ends_on_time() {
        let started = Instant::now();
        assert_eq!(wait(Duration::from_millis(250), &|| Ok(())), Ok(()));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250) && took < Duration::from_millis(600));
    }

    #[test]
    fn idempotency_keys_are_checked_before_sending() {
        assert!(check_idempotency_key(Some("pgpay-payment-abc")).is_ok());
        for bad in [None, Some(""), Some("has space"), Some("é")] {
            let err = check_idempotency_key(bad).unwrap_err();
            assert_eq!(err.class(), ErrorClass::InvalidArgument);
        }
        assert!(check_idempotency_key(Some(&"k".repeat(256))).is_err());
    }
}
