//! One HTTP exchange with Stripe, run on a short-lived worker thread so the
//! calling thread can keep asking the interrupt hook.
//!
//! Why a thread: a blocking read (or DNS lookup, or TLS handshake) does not
//! see Postgres's cancel or statement_timeout, which only set flags; the
//! backend must call CHECK_FOR_INTERRUPTS to act on them. So the request runs
//! on a worker and the calling thread waits on a channel in 100 ms slices,
//! calling the hook between them. On an interrupt or our deadline the worker
//! is abandoned: it holds only owned data and a clone of the agent, touches
//! nothing of Postgres, and ends by itself when ureq's own timeout (the same
//! `timeout_ms`) fires.
//!
//! The worker is started with every signal blocked, so the kernel keeps
//! delivering Postgres's signals (SIGINT, SIGALRM, SIGTERM, SIGUSR1, SIGURG…)
//! to the backend's own thread, where its handlers expect to run.

use super::client::{Client, Method, POLL_INTERVAL};
use super::form::Form;
use super::Config;
use std::io;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// Stripe answers are small; a larger one is not from Stripe.
const MAX_BODY_BYTES: u64 = 4 * 1024 * 1024;

/// The worker's own timeout normally fires first; this margin keeps the
/// calling thread's deadline a hard bound without racing it.
const DEADLINE_MARGIN: Duration = Duration::from_millis(250);

const USER_AGENT: &str = concat!("pg_payment/", env!("CARGO_PKG_VERSION"));

/// An HTTP answer, whatever its status.
#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub request_id: Option<String>,
    pub should_retry: Option<String>,
    pub retry_after: Option<String>,
    /// `Idempotent-Replayed: true`: Stripe answered with what it saved for the key.
    pub replayed: bool,
    pub body: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SendError {
    Interrupted,
    Timeout,
    Network { message: String, retryable: bool },
}

pub fn new_agent(config: &Config) -> ureq::Agent {
    ureq::Agent::config_builder()
        // 4xx and 5xx carry Stripe's error object: we want the answer.
        .http_status_as_error(false)
        // Stripe's API never redirects; following one would carry the call
        // (and, on some clients, the key) somewhere else.
        .max_redirects(0)
        .user_agent(USER_AGENT)
        .timeout_global(Some(Duration::from_millis(config.timeout_ms.max(1))))
        .build()
        .into()
}

/// Everything the worker needs, owned.
struct Job {
    agent: ureq::Agent,
    method: Method,
    url: String,
    authorization: String,
    api_version: String,
    idempotency_key: Option<String>,
    body: String,
    timeout: Duration,
}

pub fn send(
    client: &Client,
    method: Method,
    path: &str,
    form: &Form,
    idempotency_key: Option<&str>,
    check_interrupts: &dyn Fn() -> Result<(), super::Interrupted>,
) -> Result<RawResponse, SendError> {
    let config = &client.config;
    let mut url = format!("{}{}", config.api_base.trim_end_matches('/'), path);
    let mut body = form.encode();
    if method != Method::Post && !body.is_empty() {
        url.push('?');
        url.push_str(&std::mem::take(&mut body));
    }
    let timeout = Duration::from_millis(config.timeout_ms.max(1));
    let job = Job {
        agent: client.agent.clone(),
        method,
        url,
        authorization: format!("Bearer {}", config.secret_key),
        api_version: config.api_version.clone(),
        idempotency_key: idempotency_key.map(str::to_string),
        body,
        timeout,
    };

    // One slot: the worker posts its answer and ends without waiting for
    // us, since we may have stopped listening.
    let (tx, rx) = mpsc::sync_channel(1);
    spawn_with_signals_blocked(move || {
        let _ = tx.send(perform(job));
    })
    .map_err(|e| SendError::Network {
        message: format!("could not start the request thread: {e}"),
        retryable: false,
    })?;

    let deadline = Instant::now() + timeout + DEADLINE_MARGIN;
    loop {
        match rx.recv_timeout(POLL_INTERVAL) {
            Ok(result) => return result,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if check_interrupts().is_err() {
                    return Err(SendError::Interrupted);
                }
                if Instant::now() >= deadline {
                    return Err(SendError::Timeout);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(SendError::Network {
                    message: "the request thread ended without an answer".into(),
                    retryable: false,
                })
            }
        }
    }
}

fn perform(job: Job) -> Result<RawResponse, SendError> {
    let Job {
        agent,
        method,
        url,
        authorization,
        api_version,
        idempotency_key,
        body,
        timeout,
    } = job;
    let result = match method {
        Method::Post => {
            let mut request = agent
                .post(&url)
                .config()
                .timeout_global(Some(timeout))
                .build()
                .header("Authorization", &authorization)
                .header("Accept", "application/json");
            if !api_version.is_empty() {
                request = request.header("Stripe-Version", &api_version);
            }
            if let Some(key) = &idempotency_key {
                request = request.header("Idempotency-Key", key);
            }
            request
                .content_type("application/x-www-form-urlencoded")
                .send(body.as_bytes())
        }
        Method::Get | Method::Delete => {
            let request = if method == Method::Get {
                agent.get(&url)
            } else {
                agent.delete(&url)
            };
            let mut request = request
                .config()
                .timeout_global(Some(timeout))
                .build()
                .header("Authorization", &authorization)
                .header("Accept", "application/json");
            if !api_version.is_empty() {
                request = request.header("Stripe-Version", &api_version);
            }
            request.call()
        }
    };
    let mut response = result.map_err(classify)?;
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let status = response.status().as_u16();
    let request_id = header("request-id");
    let should_retry = header("stripe-should-retry");
    let retry_after = header("retry-after");
    let replayed = header("idempotent-replayed").is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let body = response
        .body_mut()
        .with_config()
        .limit(MAX_BODY_BYTES)
        .read_to_string()
        .map_err(classify)?;
    Ok(RawResponse {
        status,
        request_id,
        should_retry,
        retry_after,
        replayed,
        body,
    })
}

/// Sorts ureq's errors the way stripe-python sorts requests' exceptions:
/// connect, read and timeout errors are retried; TLS failures (a certificate
/// that does not verify will not start verifying) and malformed exchanges
/// are not. rustls reports a failed handshake as an `io::Error` of kind
/// `InvalidData`, so that kind is not retried either.
fn classify(error: ureq::Error) -> SendError {
    let retryable = match &error {
        ureq::Error::Timeout(_) => return SendError::Timeout,
        ureq::Error::Io(e) => match e.kind() {
            io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock => return SendError::Timeout,
            io::ErrorKind::InvalidData
            | io::ErrorKind::InvalidInput
            | io::ErrorKind::PermissionDenied
            | io::ErrorKind::Unsupported => false,
            _ => true,
        },
        ureq::Error::HostNotFound | ureq::Error::ConnectionFailed => true,
        _ => false,
    };
    SendError::Network {
        message: error.to_string(),
        retryable,
    }
}

/// Starts a thread that inherits a mask blocking every signal. The mask is
/// set on the calling thread around the spawn (a new thread inherits it) so
/// there is no moment when the worker could take a signal; signals arriving
/// meanwhile stay pending and are delivered when the old mask is restored.
#[cfg(unix)]
fn spawn_with_signals_blocked<F: FnOnce() + Send + 'static>(f: F) -> io::Result<()> {
    // SAFETY: sigfillset and pthread_sigmask only read and write the sigset_t
    // values we own here; the old mask is restored before returning.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut old: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        let blocked = libc::pthread_sigmask(libc::SIG_BLOCK, &all, &mut old) == 0;
        let spawned = thread::Builder::new()
            .name("pg_payment-stripe".into())
            .spawn(f);
        if blocked {
            libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut());
        }
        spawned.map(|_| ())
    }
}

#[cfg(not(unix))]
fn spawn_with_signals_blocked<F: FnOnce() + Send + 'static>(f: F) -> io::Result<()> {
    thread::Builder::new()
        .name("pg_payment-stripe".into())
        .spawn(f)
        .map(|_| ())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    fn blocked_here(signal: libc::c_int) -> bool {
        // SAFETY: reads this thread's mask into a sigset_t we own.
        unsafe {
            let mut current: libc::sigset_t = std::mem::zeroed();
            libc::pthread_sigmask(libc::SIG_BLOCK, std::ptr::null(), &mut current);
            libc::sigismember(&current, signal) == 1
        }
    }

    #[test]
    fn the_worker_blocks_postgres_signals_and_the_caller_keeps_its_mask() {
        let signals = [
            libc::SIGINT,
            libc::SIGALRM,
            libc::SIGTERM,
            libc::SIGUSR1,
            libc::SIGURG,
        ];
        let before: Vec<bool> = signals.iter().map(|&s| blocked_here(s)).collect();
        let (tx, rx) = mpsc::channel();
        spawn_with_signals_blocked(move || {
            let _ = tx.send(signals.iter().all(|&s| blocked_here(s)));
        })
        .unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)), Ok(true));
        let after: Vec<bool> = signals.iter().map(|&s| blocked_here(s)).collect();
        assert_eq!(before, after);
    }

    #[test]
    fn network_failures_are_sorted_like_stripe_python() {
        let timed_out = io::Error::new(io::ErrorKind::TimedOut, "slow");
        assert_eq!(classify(ureq::Error::Io(timed_out)), SendError::Timeout);
        let reset = io::Error::new(io::ErrorKind::ConnectionReset, "reset");
        assert!(matches!(
            classify(ureq::Error::Io(reset)),
            SendError::Network {
                retryable: true,
                ..
            }
        ));
        assert!(matches!(
            classify(ureq::Error::HostNotFound),
            SendError::Network {
                retryable: true,
                ..
            }
        ));
        assert!(matches!(
            classify(ureq::Error::Tls("certificate not valid")),
            SendError::Network {
                retryable: false,
                ..
            }
        ));
        assert!(matches!(
            classify(ureq::Error::BadUri("nope".into())),
            SendError::Network {
                retryable: false,
                ..
            }
        ));
    }
}
