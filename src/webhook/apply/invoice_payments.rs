//! API 2025-03-31+: an invoice names no PaymentIntent; its InvoicePayments say what paid it.
//! The invoice event lists the invoice's payments from Stripe (unless they are stored
//! already) and `invoice_payment.paid` records one for an invoice already known: they fill
//! `payment.invoice_payments` and link the invoice's payment row to its PaymentIntent and
//! charge, so it can be refunded and its dashboard refunds are counted. Either order gives
//! the same rows.

use super::{object, required};
use crate::error::{PaymentError, Result};
use crate::objects::{InvoicePayment, List};
use crate::store::Statement;
use crate::store::{self, payments, refunds, INT8, TEXT};
use crate::webhook::event::Envelope;
use crate::webhook::{Outcome, StripeReads};
use pgrx::prelude::*;
use pgrx::spi::SpiClient;

static UPSERT: Statement = Statement::new("\
    INSERT INTO payment.invoice_payments (stripe_invoice_payment_id, stripe_invoice_id, stripe_payment_intent_id, \
                                          stripe_charge_id, amount_paid, currency, status, payment_type) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
    ON CONFLICT (stripe_invoice_payment_id) DO UPDATE \
       SET stripe_payment_intent_id = COALESCE(EXCLUDED.stripe_payment_intent_id, invoice_payments.stripe_payment_intent_id), \
           stripe_charge_id = COALESCE(EXCLUDED.stripe_charge_id, invoice_payments.stripe_charge_id), \
           amount_paid = COALESCE(EXCLUDED.amount_paid, invoice_payments.amount_paid), \
           status = EXCLUDED.status, payment_type = EXCLUDED.payment_type, updated_at = pg_catalog.now()",
    &[TEXT, TEXT, TEXT, TEXT, INT8, TEXT, TEXT, TEXT],
);

/// Link the invoice's paid Stripe-money payments to its payment row (newest first).
static LINK: Statement = Statement::new("\
    WITH paid AS ( \
        SELECT stripe_payment_intent_id, stripe_charge_id FROM payment.invoice_payments \
         WHERE stripe_invoice_id = $2 AND status = 'paid' AND payment_type IN ('payment_intent', 'charge') \
         ORDER BY id DESC LIMIT 1), \
    linked AS ( \
        UPDATE payment.invoice_payments SET payment_id = $1, updated_at = pg_catalog.now() \
         WHERE stripe_invoice_id = $2 AND payment_id IS DISTINCT FROM $1) \
    UPDATE payment.payments p \
       SET stripe_payment_intent_id = COALESCE(p.stripe_payment_intent_id, paid.stripe_payment_intent_id), \
           stripe_charge_id = COALESCE(p.stripe_charge_id, paid.stripe_charge_id), updated_at = pg_catalog.now() \
      FROM paid WHERE p.id = $1 \
    RETURNING p.stripe_charge_id",
    &[INT8, TEXT],
);

/// What the stored payments of an invoice say: paid with Stripe money, paid by a record of
/// money paid elsewhere, and the newest PaymentIntent that paid it.
static SOURCES: Statement = Statement::new("\
    SELECT COALESCE(pg_catalog.bool_or(status = 'paid' AND payment_type = 'payment_record'), false), \
           COALESCE(pg_catalog.bool_or(status = 'paid' AND payment_type IN ('payment_intent', 'charge')), false), \
           (pg_catalog.array_agg(stripe_payment_intent_id ORDER BY id DESC) \
              FILTER (WHERE status = 'paid' AND payment_type IN ('payment_intent', 'charge')))[1] \
      FROM payment.invoice_payments WHERE stripe_invoice_id = $1",
    &[TEXT],
);

/// Recorded only for an invoice this database has a payment of: an invoice it does not know
/// (yet) is another installation's, or its invoice event has not arrived, and that event
/// lists the invoice's payments from Stripe itself.
pub fn apply_invoice_payment_paid(envelope: &Envelope<'_>) -> Result<Outcome> {
    let paid: InvoicePayment = object(envelope)?;
    Spi::connect_mut(|client| {
        let known = payments::by_invoice(client, paid.invoice.id())?.is_some();
        if !known {
            return Ok(Outcome::Ignored);
        }
        record(client, &paid)?;
        Ok(Outcome::Applied)
    })
}

/// Store one InvoicePayment and, if its invoice has a payment row, link the two.
pub fn record(client: &mut SpiClient<'_>, paid: &InvoicePayment) -> Result<()> {
    let invoice = paid.invoice.id();
    let stmt = store::plan(client, &UPSERT)?;
    client.update(
        stmt,
        None,
        &[
            paid.id.as_str().into(),
            invoice.into(),
            paid.payment.payment_intent.as_ref().map(|p| p.id()).into(),
            paid.payment.charge.as_ref().map(|c| c.id()).into(),
            paid.amount_paid.into(),
            required(
                paid.currency.as_deref(),
                "invoice payment",
                &paid.id,
                "currency",
            )?
            .to_lowercase()
            .into(),
            required(
                paid.status.as_deref(),
                "invoice payment",
                &paid.id,
                "status",
            )?
            .into(),
            paid.payment.payment_type.as_str().into(),
        ],
    )?;
    if let Some(payment_id) = payments::by_invoice(client, invoice)? {
        link(client, payment_id, invoice)?;
    }
    Ok(())
}

/// Point the invoice's payment row at what paid it; the charge is remembered so that its
/// refunds find the payment.
pub fn link(client: &mut SpiClient<'_>, payment_id: i64, invoice: &str) -> Result<()> {
    let stmt = store::plan(client, &LINK)?;
    let charge = store::first_value::<String>(client.update(
        stmt,
        Some(1),
        &[payment_id.into(), invoice.into()],
    )?)?;
    if let Some(charge) = charge {
        refunds::remember_charge(client, &charge, payment_id)?;
    }
    Ok(())
}

/// How an invoice was paid, as its InvoicePayments say.
pub enum PaidWith {
    /// Money Stripe received, through this PaymentIntent (None for a bare charge).
    Stripe(Option<String>),
    /// Only records of money paid outside Stripe.
    OutOfBand,
    /// Nothing paid it (a zero amount).
    Nothing,
}

/// A bound on pages of one invoice's payments.
const MAX_PAGES: usize = 10;

/// What paid `invoice`: from the stored InvoicePayments, or, when none is stored yet (the
/// invoice event came first), from Stripe's list, which is then stored.
pub fn paid_with(
    client: &mut SpiClient<'_>,
    stripe: &dyn StripeReads,
    invoice: &str,
) -> Result<PaidWith> {
    let (by_record, by_stripe, _) = sources(client, invoice)?;
    if !by_record && !by_stripe {
        let mut seen: Vec<InvoicePayment> = Vec::new();
        for _ in 0..MAX_PAGES {
            let after = seen.last().map(|p| p.id.clone());
            let page = stripe.payments_of_invoice(invoice, after.as_deref())?;
            let page: List<InvoicePayment> = serde_json::from_value(page).map_err(|e| {
                PaymentError::Internal(format!(
                    "Stripe's list of invoice payments could not be read: {e}"
                ))
            })?;
            let more = page.has_more && !page.data.is_empty();
            seen.extend(page.data);
            if !more {
                break;
            }
        }
        for paid in &seen {
            record(client, paid)?;
        }
    }
    let (by_record, by_stripe, intent) = sources(client, invoice)?;
    Ok(match (by_stripe, by_record) {
        (true, _) => PaidWith::Stripe(intent),
        (false, true) => PaidWith::OutOfBand,
        (false, false) => PaidWith::Nothing,
    })
}

fn sources(client: &mut SpiClient<'_>, invoice: &str) -> Result<(bool, bool, Option<String>)> {
    let stmt = store::plan(client, &SOURCES)?;
    let mut rows = client.update(stmt, Some(1), &[invoice.into()])?;
    let Some(row) = rows.next() else {
        return Ok((false, false, None));
    };
    Ok((
        row.get::<bool>(1)?.unwrap_or(false),
        row.get::<bool>(2)?.unwrap_or(false),
        row.get::<String>(3)?,
    ))
}
