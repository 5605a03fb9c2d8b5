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
/// How long a payment may stay pending with no event before health() warns (an interval).
pub static PENDING_WARN_AFTER: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"1 hour"));

pub fn init() {
    define_api_base();
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
    GucRegistry::define_string_guc(
        c"pg_payment.pending_warn_after",
        c"How long a payment may stay pending with no event before health() warns.",
        c"An interval, such as '1 hour' or '30 minutes'.",
        &PENDING_WARN_AFTER,
        GucContext::Userset,
        GucFlags::default(),
    );
    unsafe { pg_sys::MarkGUCPrefixReserved(c"pg_payment".as_ptr()) };
}

/// A superuser-only string setting whose every new value `valid` must accept; a refused
/// value is an error (22023) with `refusal` as its message.
///
/// # Safety
/// `variable` must live as long as the backend (the statics above do).
unsafe fn define_checked_string(
    name: &'static CStr,
    short: &'static CStr,
    long: &'static CStr,
    variable: &'static GucSetting<Option<CString>>,
    default: &'static CStr,
    check: pg_sys::GucStringCheckHook,
) {
    pg_sys::DefineCustomStringVariable(
        name.as_ptr(),
        short.as_ptr(),
        long.as_ptr(),
        variable.as_ptr(),
        default.as_ptr(),
        pg_sys::GucContext::PGC_SUSET,
        0,
        check,
        None,
        None,
    );
}

/// The body of a string check hook: the new value, `valid`, and the message on refusal.
unsafe fn check_string(
    newval: *mut *mut std::ffi::c_char,
    valid: fn(&str) -> bool,
    refusal: &CStr,
) -> bool {
    let value = if newval.is_null() || (*newval).is_null() {
        ""
    } else {
        CStr::from_ptr(*newval).to_str().unwrap_or("")
    };
    if valid(value) {
        true
    } else {
        pg_sys::GUC_check_errmsg_string = pg_sys::pstrdup(refusal.as_ptr());
        false
    }
}

/// The secret key is sent to the API base: over TLS, or to this machine (tests).
fn define_api_base() {
    unsafe {
        define_checked_string(
            c"pg_payment.stripe_api_base",
            c"Base URL of the Stripe API.",
            c"Superuser only: the secret key is sent there. https://, or http:// to a loopback address (tests).",
            &STRIPE_API_BASE,
            c"https://api.stripe.com",
            Some(check_api_base),
        );
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_api_base(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    check_string(
        newval,
        api_base_allowed,
        c"pg_payment.stripe_api_base must be an https:// URL, or http:// to a loopback address",
    )
}

/// `https://host...`, or `http://` to 127.0.0.0/8, `localhost` or `[::1]`.
pub fn api_base_allowed(url: &str) -> bool {
    if let Some(rest) = url.strip_prefix("https://") {
        return !rest.is_empty() && !rest.starts_with('/');
    }
    let Some(rest) = url.strip_prefix("http://") else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    if authority.contains('@') {
        return false;
    }
    let host = if let Some(v6) = authority.strip_prefix('[') {
        match v6.split_once(']') {
            Some((host, port)) if port.is_empty() || port.starts_with(':') => host,
            _ => return false,
        }
    } else {
        authority.split(':').next().unwrap_or("")
    };
    if host == "localhost" || host == "::1" {
        return true;
    }
    match host.parse::<std::net::Ipv4Addr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => false,
    }
}

/// The channel must be something `pg_notify` accepts, or every status change would fail.
fn define_notify_channel() {
    unsafe {
        define_checked_string(
            c"pg_payment.notify_channel",
            c"Channel on which status changes of payments, refunds and subscriptions are NOTIFYed.",
            c"",
            &NOTIFY_CHANNEL,
            c"pg_payment",
            Some(check_notify_channel),
        );
    }
}

#[pgrx::pg_guard]
unsafe extern "C-unwind" fn check_notify_channel(
    newval: *mut *mut std::ffi::c_char,
    _extra: *mut *mut std::ffi::c_void,
    _source: pg_sys::GucSource::Type,
) -> bool {
    check_string(
        newval,
        valid_channel_name,
        c"pg_payment.notify_channel must be 1 to 63 bytes of text",
    )
}

/// Postgres channel names are identifiers: non-empty and shorter than NAMEDATALEN.
pub fn valid_channel_name(name: &str) -> bool {
    !name.is_empty() && name.len() < pg_sys::NAMEDATALEN as usize
}

pub fn string_setting(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting.get().and_then(|s| s.into_string().ok())
}

#[cfg(test)]
mod tests {
    use super::api_base_allowed;

    #[test]
    fn the_api_base_is_tls_or_this_machine() {
        for ok in [
            "https://api.stripe.com",
            "https://stripe.internal:8443/proxy",
            "http://127.0.0.1:12111",
            "http://127.8.9.1",
            "http://localhost:1/v",
            "http://[::1]:8080",
        ] {
            assert!(api_base_allowed(ok), "{ok}");
        }
        for bad in [
            "",
            "http://example.com",
            "http://10.0.0.1:80",
            "http://127.0.0.1.evil.example",
            "http://127.0.0.1@evil.example",
            "ftp://127.0.0.1",
            "https://",
            "http://[::2]:80",
        ] {
            assert!(!api_base_allowed(bad), "{bad}");
        }
    }
}
