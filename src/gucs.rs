//! Every `pg_payment.*` setting, registered once in `_PG_init`.
//!
//! Where Stripe sends the secret key and how strictly webhooks are checked are
//! superuser-only (PGC_SUSET): an application that could repoint the API base would
//! send the secret key elsewhere. Timeouts and retries are the caller's to tune.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use pgrx::pg_sys;
use std::ffi::{CStr, CString};

pub static STRIPE_API_BASE: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"https://api.stripe.com"));
/// The API version every request is pinned to; event payloads may still come in any version.
pub static STRIPE_API_VERSION: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"2025-03-31.basil"));
pub static WEBHOOK_TOLERANCE_S: GucSetting<i32> = GucSetting::<i32>::new(300);
pub static NOTIFY_CHANNEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"pg_payment"));
pub static HTTP_TIMEOUT_MS: GucSetting<i32> = GucSetting::<i32>::new(30_000);
pub static MAX_NETWORK_RETRIES: GucSetting<i32> = GucSetting::<i32>::new(2);

pub fn init() {
    GucRegistry::define_string_guc(
        c"pg_payment.stripe_api_base",
        c"Base URL of the Stripe API.",
        c"Superuser only: the secret key is sent there. Tests point it at a local server.",
        &STRIPE_API_BASE,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"pg_payment.stripe_api_version",
        c"Stripe-Version sent with every API request.",
        c"Pinned so that Stripe's answers keep the shape pg_payment reads.",
        &STRIPE_API_VERSION,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"pg_payment.webhook_tolerance_s",
        c"Oldest webhook signature timestamp accepted, in seconds (0 turns the check off).",
        c"Stripe's libraries default to 300 seconds; replayed deliveries older than this are refused.",
        &WEBHOOK_TOLERANCE_S,
        0,
        86_400,
        GucContext::Suset,
        GucFlags::UNIT_S,
    );
    define_notify_channel();
    GucRegistry::define_int_guc(
        c"pg_payment.http_timeout_ms",
        c"Timeout of one Stripe API request, in milliseconds.",
        c"",
        &HTTP_TIMEOUT_MS,
        100,
        600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_int_guc(
        c"pg_payment.max_network_retries",
        c"How many times a Stripe request is retried after a network error, 409 or 5xx.",
        c"Retries reuse the request's Idempotency-Key, so they can never charge twice.",
        &MAX_NETWORK_RETRIES,
        0,
        10,
        GucContext::Userset,
        GucFlags::default(),
    );
    unsafe { pg_sys::MarkGUCPrefixReserved(c"pg_payment".as_ptr()) };
}

/// The channel must be something `pg_notify` accepts, or every status change would fail.
fn define_notify_channel() {
    unsafe {
        pg_sys::DefineCustomStringVariable(
            c"pg_payment.notify_channel".as_ptr(),
            c"Channel on which status changes of payments, refunds and subscriptions are NOTIFYed."
                .as_ptr(),
            c"".as_ptr(),
            NOTIFY_CHANNEL.as_ptr(),
            c"pg_payment".as_ptr(),
            pg_sys::GucContext::PGC_SUSET,
            0,
            Some(check_notify_channel),
            None,
            None,
        );
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_notify_channel(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    let value = if newval.is_null() || (*newval).is_null() {
        ""
    } else {
        CStr::from_ptr(*newval).to_str().unwrap_or("")
    };
    if valid_channel_name(value) {
        true
    } else {
        pg_sys::GUC_check_errmsg_string =
            pg_sys::pstrdup(c"pg_payment.notify_channel must be 1 to 63 bytes of text".as_ptr());
        false
    }
}

/// Postgres channel names are identifiers: non-empty and shorter than NAMEDATALEN.
pub fn valid_channel_name(name: &str) -> bool {
    !name.is_empty() && name.len() < pg_sys::NAMEDATALEN as usize
}

pub fn string_setting(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().and_then(|s| s.into_string().ok())
}
