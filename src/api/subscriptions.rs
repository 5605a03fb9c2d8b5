//! `start_subscription` and `cancel_subscription`.

use super::entry;
use super::stripe_call::{self, idempotency_key, metadata};
use crate::callbacks::{while_writing, Writer};
use crate::error::{PaymentError, Result};
use crate::lifecycle::SubscriptionStatus;
use crate::metadata as meta;
use crate::money;
use crate::objects::{Price, Subscription};
use crate::store::recurring::{self, NewRecurring};
use crate::store::Statement;
use crate::store::{self, first_value, orders, BOOL, TEXT};
use pgrx::prelude::*;
use rust_decimal::Decimal;
use std::str::FromStr;

static CUSTOMER_OF_USER: Statement = Statement::new(
    "SELECT stripe_customer_id FROM payment.customers WHERE user_key = $1 AND livemode = $2",
    &[TEXT, BOOL],
);
static SAVE_CUSTOMER: Statement = Statement::new(
    "\
    INSERT INTO payment.customers (user_key, stripe_customer_id, livemode) VALUES ($1, $2, $3) \
    ON CONFLICT (user_key, livemode) DO NOTHING",
    &[TEXT, TEXT, BOOL],
);
fn status_of(subscription: &Subscription) -> Result<SubscriptionStatus> {
    let status = subscription.status.as_deref().unwrap_or("incomplete");
    SubscriptionStatus::parse(status).ok_or_else(|| {
        PaymentError::Internal(format!(
            "Stripe answered with an unknown subscription status {status}"
        ))
    })
}

/// DESIGN.md: the Price must be recurring, in the order's currency (a link without a
/// currency takes the Price's), and its unit amount the order's price in minor units.
fn check_price_fits_order(price: &Price, order: &orders::Order, order_id: i64) -> Result<()> {
    let refuse = |why: String| {
        Err(PaymentError::invalid_with_hint(
            format!("price {} does not fit order {order_id}: {why}", price.id),
            "Start the subscription with the recurring Price whose amount and currency are the order's.",
        ))
    };
    if !price.is_recurring() {
        return refuse("it is a one-time price, not a recurring one".into());
    }
    let currency = money::normalize_currency(&price.currency)?;
    if let Some(order_currency) = &order.currency {
        if !order_currency.trim().eq_ignore_ascii_case(&currency) {
            return refuse(format!(
                "it is in {currency}, the order in {}",
                order_currency.trim().to_lowercase()
            ));
        }
    }
    let order_price = Decimal::from_str(&order.price).map_err(|_| {
        PaymentError::invalid(format!("order {order_id} has a price that is not a number"))
    })?;
    let wanted = money::to_minor_units(order_price, &currency)?;
    match price.unit_amount {
        Some(amount) if amount == wanted => Ok(()),
        Some(amount) => refuse(format!(
            "its unit amount is {amount} {currency}, the order's price {} is {wanted}",
            order.price
        )),
        None => refuse("it has no unit amount (tiered or customer-chosen)".into()),
    }
}

/// What the order's own rows say before Stripe is called.
enum Prepared {
    /// The order's incomplete subscription for this price: returned as it is.
    Existing(i64),
    New {
        order: orders::Order,
        user: String,
        attempt: i64,
        customer: Option<String>,
    },
}

fn start(order_id: i64, price_id: &str) -> Result<i64> {
    if !price_id.starts_with("price_") && !price_id.starts_with("plan_") {
        return Err(PaymentError::invalid_with_hint(
            format!("\"{price_id}\" is not a Stripe price id"),
            "Pass the id of a recurring Price (price_...).",
        ));
    }
    let installation = store::installation_id()?;
    let keys = stripe_call::keys()?;
    let prepared = Spi::connect_mut(|client| -> Result<Prepared> {
        let link = orders::require_link(client)?;
        let order = orders::lock_order(client, &link, order_id)?;
        // One live subscription per order (DESIGN.md): a second call while the first is
        // incomplete (the customer has not paid yet) gets it back.
        // `update`, not `select`: a fresh snapshot, taken after the order lock was granted.
        if let Some(live) = recurring::live_of_order(client, order_id)? {
            let (id, status, price) = (live.id, live.status, live.price_id);
            return match (status, price.as_deref() == Some(price_id)) {
                (SubscriptionStatus::Incomplete, true) => Ok(Prepared::Existing(id)),
                (SubscriptionStatus::Incomplete, false) => Err(PaymentError::PaymentStateForbids {
                    message: format!(
                        "order {order_id} has an incomplete subscription with price {}",
                        price.as_deref().unwrap_or("unknown")
                    ),
                    hint: "An admin cancels it with payment.cancel_subscription() before another \
                           price is started."
                        .into(),
                }),
                (status, _) => Err(PaymentError::PaymentStateForbids {
                    message: format!(
                        "order {order_id} already has a subscription, which is {}",
                        status.as_str()
                    ),
                    hint: "One order, one subscription: cancel it first, or start the new one \
                           for a new order."
                        .into(),
                }),
            };
        }
        let user = order.user.clone().ok_or_else(|| {
            PaymentError::invalid(format!(
                "order {order_id} has no user: subscriptions need a customer"
            ))
        })?;
        let stmt = store::plan(client, &CUSTOMER_OF_USER)?;
        let customer = first_value::<String>(client.update(
            stmt,
            Some(1),
            &[user.as_str().into(), keys.livemode.into()],
        )?)?;
        let attempt = recurring::attempts(client, order_id, price_id)?;
        Ok(Prepared::New {
            order,
            user,
            attempt,
            customer,
        })
    })?;
    let (order, user, attempt, customer) = match prepared {
        Prepared::Existing(id) => return Ok(id),
        Prepared::New {
            order,
            user,
            attempt,
            customer,
        } => (order, user, attempt, customer),
    };
    // The client chooses the price id: a cheap Price must not pay for a dear order.
    let price = stripe_call::call(|client, hooks| client.retrieve_price(price_id, hooks))?;
    check_price_fits_order(&price, &order, order_id)?;
    // From here on, the order's user is what identifies the customer.
    let order = user;

    // One Stripe customer per order user, created once and reused.
    let customer = match customer {
        Some(customer) => customer,
        None => {
            let key = idempotency_key(&installation, "customer", &[&order], 0);
            let meta = metadata(&installation, &[(meta::USER, &order)]);
            let created = stripe_call::call(|client, hooks| {
                client.create_customer(None, &meta, &key, hooks)
            })?;
            Spi::connect_mut(|client| -> Result<()> {
                let stmt = store::plan(client, &SAVE_CUSTOMER)?;
                client.update(
                    stmt,
                    None,
                    &[
                        order.as_str().into(),
                        created.id.as_str().into(),
                        keys.livemode.into(),
                    ],
                )?;
                Ok(())
            })?;
            created.id
        }
    };

    let order_text = order_id.to_string();
    let key = idempotency_key(
        &installation,
        "subscription",
        &[&order_text, price_id, &customer],
        attempt,
    );
    let attempt_text = attempt.to_string();
    let meta = metadata(
        &installation,
        &[
            (meta::ORDER_ID, &order_text),
            // Which attempt: what tells a subscription an earlier key made (after an error
            // Stripe saved) from a new one for the same order.
            (meta::SUBSCRIPTION_ATTEMPT, &attempt_text),
        ],
    );
    let subscription = stripe_call::call(|client, hooks| {
        client.create_subscription(&customer, price_id, &meta, &key, hooks)
    })?;
    let status = status_of(&subscription)?;
    let (start, end) = subscription.current_period();
    while_writing(Writer::default(), || {
        Spi::connect_mut(|client| -> Result<i64> {
            recurring::insert(
                client,
                &NewRecurring {
                    order_id,
                    price_id,
                    stripe_customer_id: &customer,
                    stripe_subscription_id: &subscription.id,
                    status,
                    cancel_at_period_end: subscription.cancel_at_period_end.unwrap_or(false),
                    current_period_start: start,
                    current_period_end: end,
                    client_secret: subscription.first_payment_client_secret(),
                    livemode: keys.livemode,
                },
            )
        })
    })
}

fn cancel(recurring_payment_id: i64, at_period_end: bool) -> Result<i64> {
    let installation = store::installation_id()?;
    let locked = Spi::connect_mut(|client| recurring::lock(client, recurring_payment_id))?
        .ok_or_else(|| {
            PaymentError::NotFound(format!(
                "recurring payment {recurring_payment_id} does not exist"
            ))
        })?;
    let (subscription_id, status, version) =
        (locked.stripe_subscription_id, locked.status, locked.version);
    // Canceling twice is harmless: the row already says so.
    if status.is_final() {
        return Ok(recurring_payment_id);
    }
    let subscription_id = subscription_id.ok_or_else(|| {
        PaymentError::invalid(format!(
            "recurring payment {recurring_payment_id} has no Stripe subscription"
        ))
    })?;
    // The row's last change stands for "earlier attempts": a call that rolled back left it
    // as it was and replays; after any committed change (a cancellation undone in the
    // dashboard, say) the same request is a new one.
    let when = if at_period_end {
        "at_period_end"
    } else {
        "now"
    };
    let key = idempotency_key(
        &installation,
        "cancel",
        &[&subscription_id, when, &version],
        0,
    );
    let subscription = stripe_call::call(|client, hooks| {
        client.cancel_subscription(&subscription_id, at_period_end, &key, hooks)
    })?;
    let new_status = status_of(&subscription)?;
    while_writing(Writer::default(), || {
        Spi::connect_mut(|client| -> Result<()> {
            recurring::set_canceled(
                client,
                recurring_payment_id,
                new_status,
                subscription.cancel_at_period_end.unwrap_or(at_period_end),
                subscription.canceled_at,
            )
        })
    })?;
    Ok(recurring_payment_id)
}

/// Internal: `payment.start_subscription` (sql/api.sql) returns the row.
#[pg_extern(
    schema = "payment",
    name = "start_subscription_id",
    volatile,
    parallel_unsafe
)]
fn start_subscription_id(order_id: Option<i64>, price_id: Option<&str>) -> i64 {
    entry(|| {
        start(
            order_id.ok_or(PaymentError::NullArgument("order_id"))?,
            price_id.ok_or(PaymentError::NullArgument("price_id"))?,
        )
    })
}

/// Internal: `payment.cancel_subscription` (sql/api.sql) returns the row.
#[pg_extern(
    schema = "payment",
    name = "cancel_subscription_id",
    volatile,
    parallel_unsafe
)]
fn cancel_subscription_id(recurring_payment_id: Option<i64>, at_period_end: Option<bool>) -> i64 {
    entry(|| {
        cancel(
            recurring_payment_id.ok_or(PaymentError::NullArgument("recurring_payment_id"))?,
            at_period_end.unwrap_or(false),
        )
    })
}
