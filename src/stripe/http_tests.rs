//! The client against a tiny scripted HTTP server on 127.0.0.1: retries with
//! the same key, no retry where Stripe's libraries would not, interrupts and
//! timeouts that end a call in flight. Every server stops by itself.

use super::*;
use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

const SERVER_LIFETIME: Duration = Duration::from_secs(10);

#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: String,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

enum Reply {
    Respond {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: &'static str,
    },
    /// Read the request, then say nothing for this long.
    Hang(Duration),
}

fn respond(status: u16, body: &'static str) -> Reply {
    Reply::Respond {
        status,
        headers: vec![("Request-Id", "req_test")],
        body,
    }
}

/// Serves one connection per reply, in order, then returns what it saw.
fn serve(replies: Vec<Reply>) -> (String, JoinHandle<Vec<Seen>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let handle = thread::spawn(move || {
        let until = Instant::now() + SERVER_LIFETIME;
        let mut seen = Vec::new();
        for reply in replies {
            let stream = loop {
                match listener.accept() {
                    Ok((stream, _)) => break Some(stream),
                    Err(_) if Instant::now() < until => thread::sleep(Duration::from_millis(5)),
                    Err(_) => break None,
                }
            };
            let Some(mut stream) = stream else { break };
            stream.set_nonblocking(false).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            let Some(request) = read_request(&mut stream) else {
                continue;
            };
            seen.push(request);
            match reply {
                Reply::Respond {
                    status,
                    headers,
                    body,
                } => {
                    let mut text = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\n\
                         Content-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        text.push_str(&format!("{k}: {v}\r\n"));
                    }
                    text.push_str("\r\n");
                    text.push_str(body);
                    let _ = stream.write_all(text.as_bytes());
                }
                Reply::Hang(how_long) => thread::sleep(how_long),
            }
        }
        seen
    });
    (base, handle)
}

fn read_request(stream: &mut TcpStream) -> Option<Seen> {
    let mut data = Vec::new();
    let mut buf = [0_u8; 4096];
    let head_end = loop {
        if let Some(pos) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        data.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&data[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_string();
    let path = first.next()?.to_string();
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    while data.len() < head_end + length {
        let n = stream.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        data.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&data[head_end..]).to_string();
    Some(Seen {
        method,
        path,
        headers,
        body,
    })
}

fn client(base: &str, timeout_ms: u64, max_network_retries: u32) -> Client {
    Client::new(Config {
        api_base: base.to_string(),
        api_version: "2024-06-20".into(),
        secret_key: "sk_test_4eC39HqLyjWDarjtT1zdp7dc".into(),
        timeout_ms,
        max_network_retries,
    })
}

const PAYMENT_INTENT: &str = r#"{"id":"pi_123","object":"payment_intent","amount":9999,
    "currency":"usd","status":"requires_payment_method","client_secret":"pi_123_secret_abc"}"#;
const API_ERROR: &str = r#"{"error":{"type":"api_error","message":"An unknown error occurred"}}"#;

#[test]
fn server_errors_are_retried_with_the_same_idempotency_key() {
    let (base, server) = serve(vec![
        respond(500, API_ERROR),
        respond(503, API_ERROR),
        respond(200, PAYMENT_INTENT),
    ]);
    let logs = RefCell::new(Vec::new());
    let pi = client(&base, 5_000, 2)
        .create_payment_intent(
            9999,
            "USD",
            &[("order_id", "42")],
            "pgpay-payment-k1",
            Hooks {
                check_interrupts: &|| Ok(()),
                on_attempt: &mut |log| logs.borrow_mut().push(log.clone()),
            },
        )
        .unwrap();
    assert_eq!(pi.id, "pi_123");
    assert_eq!(pi.client_secret.as_deref(), Some("pi_123_secret_abc"));

    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 3);
    for request in &seen {
        assert_eq!(request.method, "POST");
        assert_eq!(request.path, "/v1/payment_intents");
        assert_eq!(request.header("Idempotency-Key"), Some("pgpay-payment-k1"));
        assert_eq!(
            request.header("Authorization"),
            Some("Bearer sk_test_4eC39HqLyjWDarjtT1zdp7dc")
        );
        assert_eq!(request.header("Stripe-Version"), Some("2024-06-20"));
        assert_eq!(
            request.header("Content-Type"),
            Some("application/x-www-form-urlencoded")
        );
        assert_eq!(
            request.body,
            "amount=9999&currency=usd&metadata[order_id]=42"
        );
    }
    let logs = logs.into_inner();
    let statuses: Vec<_> = logs.iter().map(|l| l.http_status).collect();
    assert_eq!(statuses, vec![Some(500), Some(503), Some(200)]);
    assert_eq!(logs[0].error_type.as_deref(), Some("api_error"));
    assert_eq!(logs[2].error_type, None);
    assert!(logs
        .iter()
        .all(|l| l.idempotency_key.as_deref() == Some("pgpay-payment-k1")
            && l.stripe_request_id.as_deref() == Some("req_test")));
}

#[test]
fn card_errors_are_not_retried_and_keep_stripes_details() {
    let decline = r#"{"error":{"type":"card_error","code":"card_declined",
        "decline_code":"generic_decline","message":"Your card was declined.","param":""}}"#;
    let (base, server) = serve(vec![respond(402, decline)]);
    let logs = RefCell::new(Vec::new());
    let err = client(&base, 5_000, 3)
        .create_refund(
            "pi_123",
            Some(500),
            &[],
            "pgpay-refund-k",
            Hooks {
                check_interrupts: &|| Ok(()),
                on_attempt: &mut |log| logs.borrow_mut().push(log.clone()),
            },
        )
        .unwrap_err();
    assert_eq!(err.request_id(), Some("req_test"));
    assert_eq!(err.class(), ErrorClass::Refused);
    assert!(
        matches!(&err, StripeError::Api(api) if api.decline_code.as_deref() == Some("generic_decline"))
    );
    let logs = logs.into_inner();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].error_code.as_deref(), Some("card_declined"));
    assert_eq!(server.join().unwrap().len(), 1);
}

#[test]
fn stripe_should_retry_false_stops_a_retry_and_the_limit_holds() {
    let (base, server) = serve(vec![Reply::Respond {
        status: 500,
        headers: vec![("Stripe-Should-Retry", "false")],
        body: API_ERROR,
    }]);
    let err = client(&base, 5_000, 3)
        .create_customer(None, &[], "pgpay-customer-k", quiet())
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unavailable);
    assert_eq!(server.join().unwrap().len(), 1);

    let (base, server) = serve(vec![respond(409, API_ERROR), respond(409, API_ERROR)]);
    let err = client(&base, 5_000, 1)
        .create_customer(Some("a@b.com"), &[], "pgpay-customer-k", quiet())
        .unwrap_err();
    assert!(matches!(&err, StripeError::Api(api) if api.http_status == 409));
    let seen = server.join().unwrap();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].body, "email=a%40b.com");
}

#[test]
fn a_request_in_flight_ends_soon_after_an_interrupt() {
    let (base, server) = serve(vec![Reply::Hang(Duration::from_millis(1500))]);
    let started = Instant::now();
    let logs = RefCell::new(Vec::new());
    let err = client(&base, 30_000, 2)
        .create_payment_intent(
            100,
            "eur",
            &[],
            "pgpay-payment-k2",
            Hooks {
                check_interrupts: &|| {
                    if started.elapsed() > Duration::from_millis(300) {
                        Err(Interrupted)
                    } else {
                        Ok(())
                    }
                },
                on_attempt: &mut |log| logs.borrow_mut().push(log.clone()),
            },
        )
        .unwrap_err();
    let took = started.elapsed();
    assert_eq!(err, StripeError::Interrupted);
    assert_eq!(err.class(), ErrorClass::Interrupted);
    assert!(took < Duration::from_millis(1000), "took {took:?}");
    let logs = logs.into_inner();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].error_type.as_deref(), Some("interrupted"));
    assert_eq!(server.join().unwrap().len(), 1);
}

#[test]
fn a_retry_waiting_to_happen_ends_on_interrupt() {
    let (base, server) = serve(vec![Reply::Respond {
        status: 503,
        headers: vec![("Retry-After", "30")],
        body: API_ERROR,
    }]);
    let attempts = Cell::new(0);
    let started = Instant::now();
    let err = client(&base, 5_000, 2)
        .create_customer(
            None,
            &[],
            "pgpay-customer-k3",
            Hooks {
                check_interrupts: &|| {
                    if attempts.get() > 0 {
                        Err(Interrupted)
                    } else {
                        Ok(())
                    }
                },
                on_attempt: &mut |_| attempts.set(attempts.get() + 1),
            },
        )
        .unwrap_err();
    assert_eq!(err, StripeError::Interrupted);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(server.join().unwrap().len(), 1);
}

#[test]
fn a_silent_server_times_out_and_is_retried() {
    let (base, server) = serve(vec![
        Reply::Hang(Duration::from_millis(800)),
        Reply::Hang(Duration::from_millis(800)),
    ]);
    let logs = RefCell::new(Vec::new());
    let started = Instant::now();
    let err = client(&base, 300, 1)
        .create_customer(
            None,
            &[],
            "pgpay-customer-k4",
            Hooks {
                check_interrupts: &|| Ok(()),
                on_attempt: &mut |log| logs.borrow_mut().push(log.clone()),
            },
        )
        .unwrap_err();
    assert_eq!(err, StripeError::Timeout { after_ms: 300 });
    assert!(started.elapsed() < Duration::from_secs(3));
    let logs = logs.into_inner();
    assert_eq!(logs.len(), 2);
    assert!(logs
        .iter()
        .all(|l| l.error_type.as_deref() == Some("timeout")));
    assert_eq!(server.join().unwrap().len(), 2);
}

#[test]
fn a_refused_connection_is_a_retryable_network_error() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let err = client(&format!("http://127.0.0.1:{port}"), 2_000, 0)
        .create_customer(None, &[], "pgpay-customer-k5", quiet())
        .unwrap_err();
    assert!(
        matches!(
            err,
            StripeError::Network {
                retryable: true,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("4eC39"));
}

#[test]
fn a_failed_tls_handshake_is_not_retried() {
    // Answers a TLS ClientHello with plain HTTP, as a misconfigured proxy or
    // api_base would; rustls refuses it. Serves at most three connections.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    listener.set_nonblocking(true).unwrap();
    let server = thread::spawn(move || {
        let until = Instant::now() + Duration::from_millis(1500);
        let mut connections = 0;
        while Instant::now() < until && connections < 3 {
            if let Ok((mut stream, _)) = listener.accept() {
                connections += 1;
                stream.set_nonblocking(false).unwrap();
                let _ = stream.read(&mut [0_u8; 1024]);
                let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n");
            } else {
                thread::sleep(Duration::from_millis(5));
            }
        }
        connections
    });
    let err = client(&base, 2_000, 2)
        .create_customer(None, &[], "pgpay-customer-k6", quiet())
        .unwrap_err();
    assert!(
        matches!(
            err,
            StripeError::Network {
                retryable: false,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(server.join().unwrap(), 1);
}

#[test]
fn cancel_now_is_a_delete_without_a_key_and_at_period_end_a_post() {
    let sub =
        r#"{"id":"sub_1","status":"canceled","customer":"cus_1","cancel_at_period_end":false}"#;
    let (base, server) = serve(vec![respond(200, sub), respond(200, sub)]);
    let c = client(&base, 5_000, 0);
    c.cancel_subscription("sub_1", false, "pgpay-cancel-k", quiet())
        .unwrap();
    c.cancel_subscription("sub_1", true, "pgpay-cancel-k", quiet())
        .unwrap();
    let seen = server.join().unwrap();
    assert_eq!(seen[0].method, "DELETE");
    assert_eq!(seen[0].path, "/v1/subscriptions/sub_1");
    assert_eq!(seen[0].header("Idempotency-Key"), None);
    assert_eq!(seen[1].method, "POST");
    assert_eq!(seen[1].body, "cancel_at_period_end=true");
    assert_eq!(seen[1].header("Idempotency-Key"), Some("pgpay-cancel-k"));
}

#[test]
fn subscriptions_ask_for_the_first_payments_secret() {
    let sub = r#"{"id":"sub_1","status":"incomplete","customer":"cus_1",
        "latest_invoice":{"id":"in_1","payment_intent":{"id":"pi_1","client_secret":"pi_1_secret_z"}}}"#;
    let (base, server) = serve(vec![respond(200, sub)]);
    let s = client(&base, 5_000, 0)
        .create_subscription(
            "cus_1",
            "price_1",
            &[("order_id", "7")],
            "pgpay-sub-k",
            quiet(),
        )
        .unwrap();
    assert_eq!(s.first_payment_client_secret(), Some("pi_1_secret_z"));
    let seen = server.join().unwrap();
    assert_eq!(
        seen[0].body,
        "customer=cus_1&items[0][price]=price_1&metadata[order_id]=7\
         &payment_behavior=default_incomplete\
         &payment_settings[save_default_payment_method]=on_subscription\
         &expand[0]=latest_invoice.payment_intent"
    );
}

#[test]
fn a_2xx_that_is_not_the_object_is_a_bad_response_without_the_body() {
    let (base, server) = serve(vec![respond(
        200,
        r#"{"id": 5, "client_secret": "pi_x_secret_y"}"#,
    )]);
    let err = client(&base, 5_000, 2)
        .retrieve_payment_intent::<crate::objects::PaymentIntent>("pi_x", quiet())
        .unwrap_err();
    assert!(
        matches!(
            err,
            StripeError::BadResponse {
                http_status: 200,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!err.to_string().contains("secret_y"));
    assert_eq!(server.join().unwrap()[0].method, "GET");
}

fn quiet() -> Hooks<'static> {
    Hooks {
        check_interrupts: &|| Ok(()),
        on_attempt: Box::leak(Box::new(|_: &RequestLog| {})),
    }
}
