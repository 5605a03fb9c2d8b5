//! The one error type of the extension, and the one place it becomes a Postgres error.
//!
//! Every variant knows its SQLSTATE: a webhook relay maps class 22/28 to HTTP 400
//! and anything else to 500, so the class is part of the contract.

use pgrx::pg_sys::panic::ErrorReport;
use pgrx::{PgLogLevel, PgSqlErrorCode};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaymentError {
    /// A required argument was NULL.
    NullArgument(&'static str),
    /// Input that is well-formed but not acceptable (bad key prefix, bad column type...).
    InvalidParameter {
        message: String,
        hint: Option<String>,
    },
    /// The webhook body is not a Stripe event (broken JSON, wrong shape, too large).
    InvalidPayload(String),
    /// The Stripe-Signature header is missing parts, wrong, or too old.
    SignatureRejected(String),
    /// An event of the other mode (live or test) than the configured secret key.
    ModeMismatch(String),
    /// Something must be set up first (configure, link_order_table...).
    NotConfigured { message: String, hint: String },
    /// The caller may not do this.
    PermissionDenied {
        message: String,
        hint: Option<String>,
    },
    /// The session is in a state we refuse (isolation level).
    WrongIsolation(String),
    /// A change that would break the order link or lose payment history.
    LinkViolation { message: String, hint: String },
    /// The payment's (or order's) state does not allow the action: paid, processing...
    PaymentStateForbids { message: String, hint: String },
    /// Deleting or re-keying an order that has payments.
    OrderHasPayments(String),
    /// An object that does not exist (payment id, handler...).
    NotFound(String),
    /// A fault of the extension or the server, not of the input (a relay answers 500).
    Internal(String),
    /// Stripe (or the way to it) refused or failed; the SQLSTATE says whether to retry.
    Stripe {
        class: crate::stripe::ErrorClass,
        message: String,
        detail: Option<String>,
        hint: String,
    },
}

pub type Result<T, E = PaymentError> = std::result::Result<T, E>;

impl PaymentError {
    pub fn invalid(message: impl Into<String>) -> Self {
        PaymentError::InvalidParameter {
            message: message.into(),
            hint: None,
        }
    }

    pub fn invalid_with_hint(message: impl Into<String>, hint: impl Into<String>) -> Self {
        PaymentError::InvalidParameter {
            message: message.into(),
            hint: Some(hint.into()),
        }
    }

    /// A call to Stripe ended by a query cancel or statement timeout.
    pub fn is_cancel(&self) -> bool {
        matches!(
            self,
            PaymentError::Stripe {
                class: crate::stripe::ErrorClass::Interrupted,
                ..
            }
        )
    }

    pub fn sqlstate(&self) -> PgSqlErrorCode {
        use PgSqlErrorCode::*;
        match self {
            PaymentError::NullArgument(_) => ERRCODE_NULL_VALUE_NOT_ALLOWED,
            PaymentError::InvalidParameter { .. } => ERRCODE_INVALID_PARAMETER_VALUE,
            PaymentError::InvalidPayload(_) => ERRCODE_INVALID_TEXT_REPRESENTATION,
            PaymentError::SignatureRejected(_) | PaymentError::ModeMismatch(_) => {
                ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION
            }
            PaymentError::NotConfigured { .. } | PaymentError::PaymentStateForbids { .. } => {
                ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE
            }
            PaymentError::PermissionDenied { .. } => ERRCODE_INSUFFICIENT_PRIVILEGE,
            PaymentError::WrongIsolation(_) => ERRCODE_ACTIVE_SQL_TRANSACTION,
            PaymentError::LinkViolation { .. } => ERRCODE_DEPENDENT_OBJECTS_STILL_EXIST,
            PaymentError::OrderHasPayments(_) => ERRCODE_FOREIGN_KEY_VIOLATION,
            PaymentError::NotFound(_) => ERRCODE_NO_DATA_FOUND,
            PaymentError::Internal(_) => ERRCODE_INTERNAL_ERROR,
            PaymentError::Stripe { class, .. } => stripe_sqlstate(*class),
        }
    }

    pub fn message(&self) -> String {
        match self {
            PaymentError::NullArgument(arg) => format!("pg_payment: {arg} must not be NULL"),
            PaymentError::InvalidParameter { message, .. }
            | PaymentError::InvalidPayload(message)
            | PaymentError::SignatureRejected(message)
            | PaymentError::ModeMismatch(message)
            | PaymentError::NotConfigured { message, .. }
            | PaymentError::PaymentStateForbids { message, .. }
            | PaymentError::PermissionDenied { message, .. }
            | PaymentError::WrongIsolation(message)
            | PaymentError::LinkViolation { message, .. }
            | PaymentError::OrderHasPayments(message)
            | PaymentError::NotFound(message)
            | PaymentError::Internal(message) => format!("pg_payment: {message}"),
            PaymentError::Stripe { message, .. } => format!("pg_payment: Stripe: {message}"),
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            PaymentError::InvalidParameter { hint, .. }
            | PaymentError::PermissionDenied { hint, .. } => hint.clone(),
            PaymentError::NotConfigured { hint, .. }
            | PaymentError::PaymentStateForbids { hint, .. }
            | PaymentError::LinkViolation { hint, .. }
            | PaymentError::Stripe { hint, .. } => Some(hint.clone()),
            PaymentError::SignatureRejected(_) => Some(
                "Pass the raw request body and the Stripe-Signature header unchanged, and check \
                 that the endpoint's signing secret was added with payment.add_webhook_secret()."
                    .into(),
            ),
            PaymentError::OrderHasPayments(_) => {
                Some("Keep orders that have payments; mark them with a status instead.".into())
            }
            PaymentError::ModeMismatch(_) => Some(
                "Each Stripe mode has its own endpoint and signing secret: send live-mode events to \
                 a database configured with live keys, test-mode events to one with test keys."
                    .into(),
            ),
            PaymentError::InvalidPayload(_) => {
                Some("Pass the raw body of Stripe's webhook request, byte for byte.".into())
            }
            PaymentError::WrongIsolation(_) => {
                Some("Run it in a READ COMMITTED transaction (the default).".into())
            }
            _ => None,
        }
    }

    /// Raise this error in Postgres. Never returns.
    pub fn raise(self) -> ! {
        let mut report = ErrorReport::new(self.sqlstate(), self.message(), "pg_payment");
        if let PaymentError::Stripe {
            detail: Some(detail),
            ..
        } = &self
        {
            report = report.set_detail(detail.clone());
        }
        if let Some(hint) = self.hint() {
            report = report.set_hint(hint);
        }
        report.report(PgLogLevel::ERROR);
        unreachable!("ERROR does not return")
    }
}

/// The SQLSTATE of each kind of Stripe failure: the class says whether to retry (53000,
/// 58000), fix the input (22023) or the configuration (28000, 42501).
fn stripe_sqlstate(class: crate::stripe::ErrorClass) -> PgSqlErrorCode {
    use crate::stripe::ErrorClass::*;
    use PgSqlErrorCode::*;
    match class {
        Refused | InvalidArgument => ERRCODE_INVALID_PARAMETER_VALUE,
        IdempotencyConflict => ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
        Authentication => ERRCODE_INVALID_AUTHORIZATION_SPECIFICATION,
        Permission => ERRCODE_INSUFFICIENT_PRIVILEGE,
        RateLimited => ERRCODE_INSUFFICIENT_RESOURCES,
        Unavailable => ERRCODE_SYSTEM_ERROR,
        Interrupted => ERRCODE_QUERY_CANCELED,
    }
}

impl From<crate::stripe::StripeError> for PaymentError {
    fn from(e: crate::stripe::StripeError) -> Self {
        use crate::stripe::StripeError;
        let (message, detail) = match &e {
            StripeError::Api(api) => {
                let mut parts = vec![format!("type: {}", api.error_type)];
                let fields = [
                    ("code", &api.code),
                    ("decline_code", &api.decline_code),
                    ("param", &api.param),
                    ("request_id", &api.request_id),
                ];
                for (name, value) in fields {
                    if let Some(value) = value {
                        parts.push(format!("{name}: {value}"));
                    }
                }
                parts.push(format!("http_status: {}", api.http_status));
                (
                    crate::stripe::scrub_secrets(&api.message),
                    Some(parts.join(", ")),
                )
            }
            other => (
                other.to_string(),
                other.request_id().map(|id| format!("request_id: {id}")),
            ),
        };
        PaymentError::Stripe {
            class: e.class(),
            message,
            detail,
            hint: e.hint(),
        }
    }
}

impl From<crate::money::MoneyError> for PaymentError {
    fn from(e: crate::money::MoneyError) -> Self {
        PaymentError::invalid(e.to_string())
    }
}

impl std::fmt::Display for PaymentError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message())
    }
}

impl std::error::Error for PaymentError {}

/// SPI failures are bugs or catalog races, not user errors; they keep Postgres's own report.
impl From<pgrx::spi::SpiError> for PaymentError {
    fn from(e: pgrx::spi::SpiError) -> Self {
        PaymentError::Internal(format!("internal query failed: {e}"))
    }
}

/// Unwrap a domain result at the SQL boundary.
pub trait OrRaise<T> {
    fn or_raise(self) -> T;
}

impl<T> OrRaise<T> for Result<T> {
    fn or_raise(self) -> T {
        match self {
            Ok(v) => v,
            Err(e) => e.raise(),
        }
    }
}
