//! The lifecycle of payments, refunds and subscriptions: their statuses and the forward-only
//! rules that move them, pure so they can be tested without a database. Used by the webhook
//! code, the SQL actions and the storage layer alike.
//!
//! Stripe delivers events out of order and more than once. Each row remembers the
//! `created` time of the event that last moved it; an older event never moves it back.
//! Some states are final whatever the clock says, because Stripe itself never leaves them.

/// A payment's status, as `payment.payments.status` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaymentStatus {
    Pending,
    RequiresAction,
    Processing,
    Succeeded,
    Failed,
    Canceled,
    PartiallyRefunded,
    Refunded,
}

impl PaymentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            PaymentStatus::Pending => "pending",
            PaymentStatus::RequiresAction => "requires_action",
            PaymentStatus::Processing => "processing",
            PaymentStatus::Succeeded => "succeeded",
            PaymentStatus::Failed => "failed",
            PaymentStatus::Canceled => "canceled",
            PaymentStatus::PartiallyRefunded => "partially_refunded",
            PaymentStatus::Refunded => "refunded",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => PaymentStatus::Pending,
            "requires_action" => PaymentStatus::RequiresAction,
            "processing" => PaymentStatus::Processing,
            "succeeded" => PaymentStatus::Succeeded,
            "failed" => PaymentStatus::Failed,
            "canceled" => PaymentStatus::Canceled,
            "partially_refunded" => PaymentStatus::PartiallyRefunded,
            "refunded" => PaymentStatus::Refunded,
            _ => return None,
        })
    }

    /// Money has moved: only refunds change the status from here.
    pub fn is_paid(self) -> bool {
        matches!(
            self,
            PaymentStatus::Succeeded | PaymentStatus::PartiallyRefunded | PaymentStatus::Refunded
        )
    }

    /// Order of progress, used only to break ties between events of the same second.
    fn rank(self) -> u8 {
        match self {
            PaymentStatus::Pending => 0,
            PaymentStatus::Failed => 1,
            PaymentStatus::RequiresAction => 2,
            PaymentStatus::Processing => 3,
            _ => 4,
        }
    }
}

/// May a PaymentIntent event created at `event_created` move a payment from `current` to `target`?
///
/// `succeeded` and `canceled` are final on Stripe's side, so an event saying so wins whatever
/// its age; `failed` is not final (the customer may retry); and a paid payment is left only
/// through its refunds, never by a PaymentIntent event.
pub fn payment_may_move(
    current: PaymentStatus,
    last_event_at: Option<i64>,
    target: PaymentStatus,
    event_created: i64,
) -> bool {
    if current == target || current == PaymentStatus::Canceled || current.is_paid() {
        return false;
    }
    if matches!(target, PaymentStatus::Succeeded | PaymentStatus::Canceled) {
        return true;
    }
    is_newer(last_event_at, event_created, || {
        target.rank() > current.rank()
    })
}

/// The status a paid payment shows, given what was received and what live refunds total.
pub fn paid_status(amount_received: i64, amount_refunded: i64) -> PaymentStatus {
    if amount_refunded <= 0 {
        PaymentStatus::Succeeded
    } else if amount_refunded >= amount_received {
        PaymentStatus::Refunded
    } else {
        PaymentStatus::PartiallyRefunded
    }
}

/// One PaymentIntent that paid several invoices has one payment row per invoice, and Stripe
/// refunds the PaymentIntent, not an invoice. `rows` are (received, own live refunds) per row,
/// newest first, where a row's own refunds are those refund_payment made of it or that
/// webhooks placed on it (the newest, when nothing names the invoice). Each row counts its
/// own refunds up to what it received; what exceeds that counts against the rows newest
/// first, each up to what it received. The shares come back in the same order.
pub fn refunds_of_shared_intent(rows: &[(i64, i64)]) -> Vec<i64> {
    let mut shares: Vec<i64> = rows
        .iter()
        .map(|&(received, own)| own.max(0).min(received.max(0)))
        .collect();
    let mut excess: i64 = rows
        .iter()
        .zip(&shares)
        .map(|(&(_, own), &share)| own.max(0) - share)
        .sum();
    for (share, &(received, _)) in shares.iter_mut().zip(rows) {
        let room = received.max(0) - *share;
        let more = excess.min(room);
        *share += more;
        excess -= more;
    }
    shares
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefundStatus {
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
    Canceled,
}

impl RefundStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RefundStatus::Pending => "pending",
            RefundStatus::RequiresAction => "requires_action",
            RefundStatus::Succeeded => "succeeded",
            RefundStatus::Failed => "failed",
            RefundStatus::Canceled => "canceled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "pending" => RefundStatus::Pending,
            "requires_action" => RefundStatus::RequiresAction,
            "succeeded" => RefundStatus::Succeeded,
            "failed" => RefundStatus::Failed,
            "canceled" => RefundStatus::Canceled,
            _ => return None,
        })
    }

    fn rank(self) -> u8 {
        match self {
            RefundStatus::Pending => 0,
            RefundStatus::RequiresAction => 1,
            RefundStatus::Succeeded => 2,
            RefundStatus::Failed | RefundStatus::Canceled => 3,
        }
    }
}

/// Refunds can fail after succeeding (a closed card), but failed and canceled are final.
pub fn refund_may_move(
    current: RefundStatus,
    last_event_at: Option<i64>,
    target: RefundStatus,
    event_created: i64,
) -> bool {
    if current == target || matches!(current, RefundStatus::Failed | RefundStatus::Canceled) {
        return false;
    }
    is_newer(last_event_at, event_created, || {
        target.rank() > current.rank()
    })
}

/// A subscription's status: Stripe's own, as `payment.recurring_payments.status` stores it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionStatus {
    Incomplete,
    IncompleteExpired,
    Trialing,
    Active,
    PastDue,
    Canceled,
    Unpaid,
    Paused,
}

impl SubscriptionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionStatus::Incomplete => "incomplete",
            SubscriptionStatus::IncompleteExpired => "incomplete_expired",
            SubscriptionStatus::Trialing => "trialing",
            SubscriptionStatus::Active => "active",
            SubscriptionStatus::PastDue => "past_due",
            SubscriptionStatus::Canceled => "canceled",
            SubscriptionStatus::Unpaid => "unpaid",
            SubscriptionStatus::Paused => "paused",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "incomplete" => SubscriptionStatus::Incomplete,
            "incomplete_expired" => SubscriptionStatus::IncompleteExpired,
            "trialing" => SubscriptionStatus::Trialing,
            "active" => SubscriptionStatus::Active,
            "past_due" => SubscriptionStatus::PastDue,
            "canceled" => SubscriptionStatus::Canceled,
            "unpaid" => SubscriptionStatus::Unpaid,
            "paused" => SubscriptionStatus::Paused,
            _ => return None,
        })
    }

    /// Stripe never leaves these: nothing moves the subscription any more.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            SubscriptionStatus::Canceled | SubscriptionStatus::IncompleteExpired
        )
    }
}

/// Subscriptions: the final states stay; otherwise the newest event wins, and of two in the
/// same second the one that is not `incomplete` (a subscription never becomes incomplete
/// again once it was anything else).
pub fn subscription_may_move(
    current: SubscriptionStatus,
    target: SubscriptionStatus,
    last_event_at: Option<i64>,
    event_created: i64,
) -> bool {
    if current.is_final() {
        return false;
    }
    is_newer(last_event_at, event_created, || {
        target != SubscriptionStatus::Incomplete || current == SubscriptionStatus::Incomplete
    })
}

/// Stripe's `created` has one-second resolution: same-second events are ordered by `tie`.
fn is_newer(last_event_at: Option<i64>, event_created: i64, tie: impl FnOnce() -> bool) -> bool {
    match last_event_at {
        None => true,
        Some(last) if event_created > last => true,
        Some(last) if event_created == last => tie(),
        Some(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::PaymentStatus::*;
    use super::*;

    #[test]
    fn a_late_processing_never_overwrites_succeeded() {
        assert!(!payment_may_move(Succeeded, Some(200), Processing, 100));
        assert!(!payment_may_move(Succeeded, Some(100), Processing, 200));
    }

    #[test]
    fn failed_may_still_become_succeeded() {
        assert!(payment_may_move(Failed, Some(200), Succeeded, 100));
        assert!(payment_may_move(Failed, Some(100), Processing, 200));
        assert!(!payment_may_move(Failed, Some(200), Processing, 100));
    }

    #[test]
    fn canceled_is_final() {
        for target in [Succeeded, Processing, Failed, RequiresAction] {
            assert!(!payment_may_move(Canceled, Some(100), target, 500));
        }
    }

    #[test]
    fn same_second_events_move_forward_only() {
        assert!(payment_may_move(RequiresAction, Some(100), Processing, 100));
        assert!(!payment_may_move(
            Processing,
            Some(100),
            RequiresAction,
            100
        ));
        assert!(payment_may_move(Pending, None, RequiresAction, 1));
    }

    #[test]
    fn paid_status_follows_live_refunds() {
        assert_eq!(paid_status(1000, 0), Succeeded);
        assert_eq!(paid_status(1000, 400), PartiallyRefunded);
        assert_eq!(paid_status(1000, 1000), Refunded);
    }

    #[test]
    fn a_shared_intents_refunds_count_where_they_were_made_then_newest_first() {
        // Dashboard refunds are placed on the newest row: they fill it, then the older ones.
        assert_eq!(refunds_of_shared_intent(&[(1000, 0), (1000, 0)]), [0, 0]);
        assert_eq!(
            refunds_of_shared_intent(&[(1000, 700), (1000, 0)]),
            [700, 0]
        );
        assert_eq!(
            refunds_of_shared_intent(&[(1000, 1500), (1000, 0)]),
            [1000, 500]
        );
        assert_eq!(
            refunds_of_shared_intent(&[(1000, 2000), (1000, 0)]),
            [1000, 1000]
        );
        // A refund made of the older row counts there, not on the newest.
        assert_eq!(
            refunds_of_shared_intent(&[(1000, 0), (1000, 1000)]),
            [0, 1000]
        );
        assert_eq!(
            refunds_of_shared_intent(&[(1000, 300), (1000, 1200)]),
            [500, 1000]
        );
        // More than the rows received (the intent paid something else too): each is capped.
        assert_eq!(
            refunds_of_shared_intent(&[(1000, 2500), (1000, 0)]),
            [1000, 1000]
        );
    }

    #[test]
    fn refunds_may_fail_after_succeeding_but_failed_is_final() {
        assert!(refund_may_move(
            RefundStatus::Succeeded,
            Some(1),
            RefundStatus::Failed,
            2
        ));
        assert!(!refund_may_move(
            RefundStatus::Failed,
            Some(1),
            RefundStatus::Succeeded,
            2
        ));
        assert!(!refund_may_move(
            RefundStatus::Succeeded,
            Some(5),
            RefundStatus::Pending,
            4
        ));
        assert!(!refund_may_move(
            RefundStatus::Succeeded,
            Some(5),
            RefundStatus::Pending,
            5
        ));
    }

    #[test]
    fn subscriptions_take_the_newest_event_until_canceled() {
        use SubscriptionStatus as S;
        assert!(subscription_may_move(S::Active, S::PastDue, Some(10), 11));
        assert!(!subscription_may_move(S::Active, S::PastDue, Some(10), 9));
        assert!(!subscription_may_move(S::Canceled, S::Active, Some(10), 11));
        assert!(!subscription_may_move(
            S::IncompleteExpired,
            S::Active,
            Some(10),
            11
        ));
        assert!(subscription_may_move(S::Active, S::PastDue, Some(10), 10));
        assert!(!subscription_may_move(
            S::Active,
            S::Incomplete,
            Some(10),
            10
        ));
        assert!(subscription_may_move(
            S::Incomplete,
            S::Active,
            Some(10),
            10
        ));
        for s in [
            "incomplete",
            "incomplete_expired",
            "trialing",
            "active",
            "past_due",
            "canceled",
            "unpaid",
            "paused",
        ] {
            assert_eq!(S::parse(s).map(S::as_str), Some(s));
        }
        assert_eq!(S::parse("ended"), None);
    }
}
