//! The Stripe calls behind the SQL payment actions. Each sends only the
//! parameters it needs: localstripe answers 400 to any parameter it does not
//! know (`automatic_payment_methods`, a refund's `reason`…), and Stripe's
//! defaults are what we want for the rest.

use super::client::{Client, Hooks, Method};
use super::error::StripeError;
use super::form::{Form, Param};
use crate::objects::{Customer, HasId, List, PaymentIntent, Price, Refund, Subscription};
use serde::de::DeserializeOwned;
use std::collections::HashMap;

/// From this API version on, an invoice no longer has `payment_intent`; the
/// first payment's client secret is `confirmation_secret.client_secret`.
const CONFIRMATION_SECRET_SINCE: &str = "2025-03-31";

impl Client {
    /// `POST /v1/payment_intents` with `amount` in minor units (check it with
    /// `money::check_charge_matches_order` first), a lower-case `currency`
    /// and the metadata that ties it to this installation and order.
    pub fn create_payment_intent(
        &self,
        amount: i64,
        currency: &str,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
        hooks: Hooks<'_>,
    ) -> Result<PaymentIntent, StripeError> {
        check_amount(amount)?;
        let currency = check_currency(currency)?;
        let form = Form::new()
            .push("amount", amount)
            .push("currency", currency)
            .push("metadata", Param::map(metadata));
        self.request_past_saved_errors(
            Method::Post,
            "/v1/payment_intents",
            &form,
            Some(idempotency_key),
            hooks,
        )
    }

    /// `POST /v1/refunds` for a PaymentIntent; `amount` None refunds what
    /// remains. No `reason`: localstripe refuses it. An error Stripe saved under the key
    /// moves the call on to the next key, but only once the PaymentIntent's refunds show
    /// none made by an earlier key: a refund carrying this call's metadata (which names
    /// the attempt) is returned instead of refunding twice.
    pub fn create_refund(
        &self,
        payment_intent: &str,
        amount: Option<i64>,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
        hooks: Hooks<'_>,
    ) -> Result<Refund, StripeError> {
        check_id("payment_intent", payment_intent)?;
        if let Some(amount) = amount {
            check_amount(amount)?;
        }
        let form = Form::new()
            .push("payment_intent", payment_intent)
            .push_opt("amount", amount)
            .push("metadata", Param::map(metadata));
        let made_already = |client: &Client, hooks: Hooks<'_>| {
            client.find_refund(payment_intent, amount, metadata, hooks)
        };
        self.request_past_saved_errors_unless_made(
            Method::Post,
            "/v1/refunds",
            &form,
            Some(idempotency_key),
            hooks,
            &made_already,
        )
    }

    /// The PaymentIntent's refund whose metadata holds every pair of `metadata` (and of
    /// `amount`, when given).
    fn find_refund(
        &self,
        payment_intent: &str,
        amount: Option<i64>,
        metadata: &[(&str, &str)],
        hooks: Hooks<'_>,
    ) -> Result<Option<Refund>, StripeError> {
        let filter = Form::new().push("payment_intent", payment_intent);
        self.find_listed("/v1/refunds", &filter, hooks, |refund: &Refund| {
            amount.is_none_or(|a| refund.amount == Some(a))
                && has_metadata(&refund.metadata, metadata)
        })
    }

    /// The first object of a list (`GET path?filter`, every page) that `wanted` accepts.
    fn find_listed<T: DeserializeOwned + Clone + HasId>(
        &self,
        path: &str,
        filter: &Form,
        hooks: Hooks<'_>,
        wanted: impl Fn(&T) -> bool,
    ) -> Result<Option<T>, StripeError> {
        let Hooks {
            check_interrupts,
            on_attempt,
        } = hooks;
        let mut starting_after: Option<String> = None;
        loop {
            let form = filter
                .clone()
                .push("limit", 100)
                .push_opt("starting_after", starting_after.as_deref());
            let hooks = Hooks {
                check_interrupts,
                on_attempt: &mut *on_attempt,
            };
            let page: List<T> = self.request(Method::Get, path, &form, None, hooks)?;
            if let Some(found) = page.data.iter().find(|item| wanted(item)) {
                return Ok(Some(found.clone()));
            }
            match (page.has_more, page.data.last()) {
                (true, Some(last)) => starting_after = Some(last.id().to_string()),
                _ => return Ok(None),
            }
        }
    }

    /// `POST /v1/customers`.
    pub fn create_customer(
        &self,
        email: Option<&str>,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
        hooks: Hooks<'_>,
    ) -> Result<Customer, StripeError> {
        let form = Form::new()
            .push_opt("email", email)
            .push("metadata", Param::map(metadata));
        self.request_past_saved_errors(
            Method::Post,
            "/v1/customers",
            &form,
            Some(idempotency_key),
            hooks,
        )
    }

    /// `POST /v1/subscriptions` for one price, with the first invoice
    /// expanded so the returned subscription carries the client secret
    /// Stripe.js confirms (`Subscription::first_payment_client_secret`).
    ///
    /// `payment_behavior=default_incomplete` is needed because the customer
    /// has no payment method yet: without it Stripe refuses the subscription.
    /// `save_default_payment_method=on_subscription` keeps the card that pays
    /// the first invoice for the renewals. (localstripe knows neither, nor
    /// prices; subscriptions are tested against the project's test server.)
    pub fn create_subscription(
        &self,
        customer: &str,
        price: &str,
        metadata: &[(&str, &str)],
        idempotency_key: &str,
        hooks: Hooks<'_>,
    ) -> Result<Subscription, StripeError> {
        check_id("customer", customer)?;
        check_id("price", price)?;
        let item = Param::Map(vec![("price".into(), price.into())]);
        let form = Form::new()
            .push("customer", customer)
            .push("items", Param::List(vec![item]))
            .push("metadata", Param::map(metadata))
            .push("payment_behavior", "default_incomplete")
            .push(
                "payment_settings",
                Param::map(&[("save_default_payment_method", "on_subscription")]),
            )
            .push(
                "expand",
                Param::List(vec![
                    first_invoice_expansion(&self.config.api_version).into()
                ]),
            );
        // A subscription charges its first invoice: like a refund, an error Stripe saved
        // under the key moves on to the next key only once the customer's subscriptions show
        // none made by an earlier key.
        let made_already = |client: &Client, hooks: Hooks<'_>| {
            client.find_subscription(customer, price, metadata, hooks)
        };
        self.request_past_saved_errors_unless_made(
            Method::Post,
            "/v1/subscriptions",
            &form,
            Some(idempotency_key),
            hooks,
            &made_already,
        )
    }

    /// The customer's subscription of `price` whose metadata holds every pair of `metadata`
    /// (attempts are counted per order and price), read again with the first invoice
    /// expanded (as `create_subscription` answers).
    fn find_subscription(
        &self,
        customer: &str,
        price: &str,
        metadata: &[(&str, &str)],
        hooks: Hooks<'_>,
    ) -> Result<Option<Subscription>, StripeError> {
        let Hooks {
            check_interrupts,
            on_attempt,
        } = hooks;
        let filter = Form::new().push("customer", customer);
        let listing = Hooks {
            check_interrupts,
            on_attempt: &mut *on_attempt,
        };
        let found =
            self.find_listed("/v1/subscriptions", &filter, listing, |s: &Subscription| {
                s.price_id() == Some(price) && has_metadata(&s.metadata, metadata)
            })?;
        let Some(found) = found else {
            return Ok(None);
        };
        let path = format!("/v1/subscriptions/{}", found.id);
        let expand = first_invoice_expansion(&self.config.api_version);
        let form = Form::new().push("expand", Param::List(vec![expand.into()]));
        let hooks = Hooks {
            check_interrupts,
            on_attempt: &mut *on_attempt,
        };
        self.request(Method::Get, &path, &form, None, hooks)
            .map(Some)
    }

    /// Cancels now (`DELETE /v1/subscriptions/{id}`, which takes no key) or
    /// at the end of the period (`POST … cancel_at_period_end=true`, with
    /// `idempotency_key`).
    pub fn cancel_subscription(
        &self,
        subscription: &str,
        at_period_end: bool,
        idempotency_key: &str,
        hooks: Hooks<'_>,
    ) -> Result<Subscription, StripeError> {
        check_id("subscription", subscription)?;
        let path = format!("/v1/subscriptions/{subscription}");
        if at_period_end {
            let form = Form::new().push("cancel_at_period_end", true);
            self.request(Method::Post, &path, &form, Some(idempotency_key), hooks)
        } else {
            self.request(Method::Delete, &path, &Form::new(), None, hooks)
        }
    }

    /// `POST /v1/payment_intents/{id}/cancel`: a PaymentIntent that will not be paid.
    pub fn cancel_payment_intent(
        &self,
        payment_intent: &str,
        idempotency_key: &str,
        hooks: Hooks<'_>,
    ) -> Result<PaymentIntent, StripeError> {
        check_id("payment_intent", payment_intent)?;
        let path = format!("/v1/payment_intents/{payment_intent}/cancel");
        self.request_past_saved_errors(
            Method::Post,
            &path,
            &Form::new(),
            Some(idempotency_key),
            hooks,
        )
    }

    /// `GET /v1/payment_intents/{id}`: typed, or as Stripe's JSON (`serde_json::Value`)
    /// for the webhook's apply path (refresh_payment).
    pub fn retrieve_payment_intent<T: DeserializeOwned>(
        &self,
        id: &str,
        hooks: Hooks<'_>,
    ) -> Result<T, StripeError> {
        check_id("payment_intent", id)?;
        let path = format!("/v1/payment_intents/{id}");
        self.request(Method::Get, &path, &Form::new(), None, hooks)
    }

    /// `GET /v1/prices/{id}`.
    pub fn retrieve_price(&self, id: &str, hooks: Hooks<'_>) -> Result<Price, StripeError> {
        check_id("price", id)?;
        let path = format!("/v1/prices/{id}");
        self.request(Method::Get, &path, &Form::new(), None, hooks)
    }

    /// `GET /v1/subscriptions/{id}`: typed, or as Stripe's JSON for the webhook's apply
    /// path (refresh_subscription).
    pub fn retrieve_subscription<T: DeserializeOwned>(
        &self,
        id: &str,
        hooks: Hooks<'_>,
    ) -> Result<T, StripeError> {
        check_id("subscription", id)?;
        let path = format!("/v1/subscriptions/{id}");
        self.request(Method::Get, &path, &Form::new(), None, hooks)
    }
}

/// The `expand` that puts the first payment's client secret in the answer.
/// An empty version means the account's default, which for any account made
/// since 2025 is the new shape.
pub fn first_invoice_expansion(api_version: &str) -> &'static str {
    if !api_version.is_empty() && api_version < CONFIRMATION_SECRET_SINCE {
        "latest_invoice.payment_intent"
    } else {
        "latest_invoice.confirmation_secret"
    }
}

/// Whether an object's metadata holds every pair of `wanted`.
fn has_metadata(held: &HashMap<String, String>, wanted: &[(&str, &str)]) -> bool {
    wanted
        .iter()
        .all(|(k, v)| held.get(*k).map(String::as_str) == Some(*v))
}

fn check_amount(amount: i64) -> Result<(), StripeError> {
    if amount > 0 {
        Ok(())
    } else {
        Err(StripeError::InvalidArgument(format!(
            "amount {amount} must be a positive number of minor units"
        )))
    }
}

fn check_currency(currency: &str) -> Result<String, StripeError> {
    if currency.len() == 3 && currency.bytes().all(|b| b.is_ascii_alphabetic()) {
        Ok(currency.to_ascii_lowercase())
    } else {
        Err(StripeError::InvalidArgument(format!(
            "currency {currency:?} is not a three-letter ISO code"
        )))
    }
}

/// Stripe ids are letters, digits and `_`. Checking keeps an id from
/// changing the request path (`../`, `?`) when it goes into a URL.
/// Stripe ids go into URLs and forms: letters, digits and `_` only.
pub fn check_id(what: &str, id: &str) -> Result<(), StripeError> {
    let ok = !id.is_empty()
        && id.len() <= 255
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(StripeError::InvalidArgument(format!(
            "{what} {id:?} is not a Stripe id (letters, digits and _ only)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stripe::ErrorClass;

    #[test]
    fn expansion_follows_the_pinned_api_version() {
        assert_eq!(
            first_invoice_expansion("2024-06-20"),
            "latest_invoice.payment_intent"
        );
        assert_eq!(
            first_invoice_expansion("2025-02-24.acacia"),
            "latest_invoice.payment_intent"
        );
        assert_eq!(
            first_invoice_expansion("2025-03-31.basil"),
            "latest_invoice.confirmation_secret"
        );
        assert_eq!(
            first_invoice_expansion(""),
            "latest_invoice.confirmation_secret"
        );
    }

    #[test]
    fn arguments_are_checked_before_anything_is_sent() {
        assert!(check_amount(1).is_ok());
        assert!(check_amount(0).is_err());
        assert_eq!(check_currency("USD").unwrap(), "usd");
        assert!(check_currency("usd ").is_err());
        assert!(check_id("subscription", "sub_1Abc").is_ok());
        for bad in ["", "../v1/charges", "sub_1?x=1", "sub 1"] {
            let err = check_id("subscription", bad).unwrap_err();
            assert_eq!(err.class(), ErrorClass::InvalidArgument);
        }
    }
}
