//! Money as Stripe counts it: currencies, their exponents and minor units.
//!
//! Stripe's API takes every `amount` as an integer in the currency's smallest
//! unit. Which unit that is comes from Stripe, not from ISO 4217, and the two
//! disagree for ISK and UGX. The table below is Stripe's ("Supported
//! currencies", docs.stripe.com/currencies): two decimals unless listed
//! otherwise; a zero-decimal list; five three-decimal currencies whose last
//! digit must be 0; and the special cases ISK and UGX, which "transitioned to a
//! zero-decimal currency, but backwards compatibility requires you to represent
//! it as a two-decimal value, where the decimal amount is always 00" (5 ISK is
//! `500`). UGX is also on Stripe's zero-decimal list; the special case is the
//! one that governs charges, so it wins here. HUF and TWD are special only for
//! payouts ("you can charge two-decimal amounts"), so they stay two-decimal.
//!
//! Amounts are `rust_decimal::Decimal`, never floats. No pgrx here.

use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use std::fmt;

/// How Stripe writes an amount of one currency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MinorUnitRule {
    /// 10.99 USD is `1099`.
    TwoDecimal,
    /// 500 JPY is `500`.
    ZeroDecimal,
    /// 5.120 KWD is `5120`; the last digit must be 0 ("to ensure compatibility
    /// with Stripe's payments partners").
    ThreeDecimal,
    /// ISK and UGX: whole units written with two decimals that are always 00,
    /// so 5 ISK is `500` and the amount is a multiple of 100.
    WholeUnitsInHundredths,
}

impl MinorUnitRule {
    /// Decimal places in Stripe's representation.
    pub fn exponent(self) -> u32 {
        match self {
            MinorUnitRule::ZeroDecimal => 0,
            MinorUnitRule::TwoDecimal | MinorUnitRule::WholeUnitsInHundredths => 2,
            MinorUnitRule::ThreeDecimal => 3,
        }
    }

    /// The minor amount must be a multiple of this.
    pub fn step(self) -> i64 {
        match self {
            MinorUnitRule::TwoDecimal | MinorUnitRule::ZeroDecimal => 1,
            MinorUnitRule::ThreeDecimal => 10,
            MinorUnitRule::WholeUnitsInHundredths => 100,
        }
    }

    /// How amounts of `code` are written, for error messages; it makes the
    /// x100 mistake obvious.
    fn describe(self, code: &str) -> String {
        match self {
            MinorUnitRule::TwoDecimal => format!("{code} amounts are in hundredths"),
            MinorUnitRule::ZeroDecimal => format!("{code} amounts are in whole units"),
            MinorUnitRule::ThreeDecimal => format!(
                "{code} amounts are in thousandths and Stripe requires the last digit to be 0 \
                 (5.124 is charged as 5.120 or 5.130)"
            ),
            MinorUnitRule::WholeUnitsInHundredths => format!(
                "Stripe takes {code} in whole units written with two decimals that are always \
                 00, so 5 {} is 500",
                code.to_uppercase()
            ),
        }
    }
}

/// Stripe's zero-decimal list, less UGX (see the module comment).
const ZERO_DECIMAL: &[&str] = &[
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga", "pyg", "rwf", "vnd", "vuv", "xaf",
    "xof", "xpf",
];

const THREE_DECIMAL: &[&str] = &["bhd", "jod", "kwd", "omr", "tnd"];

const WHOLE_UNITS_IN_HUNDREDTHS: &[&str] = &["isk", "ugx"];

/// Stripe's presentment currencies, two-decimal unless listed above. An
/// unknown code is refused here rather than sent, so a typo ("us", "usd ")
/// fails before Stripe is called. `bgn` is kept while Stripe may still accept
/// it for existing accounts; Stripe refuses it itself if not.
const PRESENTMENT: &[&str] = &[
    "aed", "afn", "all", "amd", "ang", "aoa", "ars", "aud", "awg", "azn", "bam", "bbd", "bdt",
    "bgn", "bmd", "bnd", "bob", "brl", "bsd", "bwp", "byn", "bzd", "cad", "cdf", "chf", "cny",
    "cop", "crc", "cve", "czk", "dkk", "dop", "dzd", "egp", "etb", "eur", "fjd", "fkp", "gbp",
    "gel", "gip", "gmd", "gtq", "gyd", "hkd", "hnl", "htg", "huf", "idr", "ils", "inr", "jmd",
    "kes", "kgs", "khr", "kyd", "kzt", "lak", "lbp", "lkr", "lrd", "lsl", "mad", "mdl", "mkd",
    "mmk", "mnt", "mop", "mur", "mvr", "mwk", "mxn", "myr", "mzn", "nad", "ngn", "nio", "nok",
    "npr", "nzd", "pab", "pen", "pgk", "php", "pkr", "pln", "qar", "ron", "rsd", "rub", "sar",
    "sbd", "scr", "sek", "sgd", "shp", "sle", "srd", "szl", "thb", "tjs", "try", "ttd", "twd",
    "tzs", "uah", "usd", "uyu", "uzs", "wst", "xcd", "xcg", "yer", "zar", "zmw",
];

/// What went wrong with an amount; every message says what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MoneyError {
    UnknownCurrency {
        currency: String,
    },
    /// The amount has more decimals than the currency allows.
    FractionalMinorUnits {
        amount: Decimal,
        currency: String,
        exponent: u32,
    },
    /// The amount has the right decimals but breaks the three-decimal or
    /// ISK/UGX rule.
    NotOnStep {
        amount: Decimal,
        minor: i64,
        currency: String,
        rule: MinorUnitRule,
    },
    Overflow {
        amount: Decimal,
        currency: String,
    },
    NonPositiveCharge {
        amount: i64,
        currency: String,
    },
    NonPositivePrice {
        price: Decimal,
        currency: String,
    },
    /// The charge is a valid amount, just not the order's price.
    ChargeMismatch {
        charge_minor: i64,
        charge_major: Decimal,
        currency: String,
        order_price: Decimal,
        order_minor: i64,
        rule: MinorUnitRule,
    },
}

impl MoneyError {
    fn currency(&self) -> &str {
        match self {
            MoneyError::UnknownCurrency { currency }
            | MoneyError::FractionalMinorUnits { currency, .. }
            | MoneyError::NotOnStep { currency, .. }
            | MoneyError::Overflow { currency, .. }
            | MoneyError::NonPositiveCharge { currency, .. }
            | MoneyError::NonPositivePrice { currency, .. }
            | MoneyError::ChargeMismatch { currency, .. } => currency,
        }
    }
}

impl fmt::Display for MoneyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = self.currency();
        let upper = code.to_uppercase();
        match self {
            MoneyError::UnknownCurrency { .. } => write!(
                f,
                "unknown currency {code:?}: use the three-letter ISO code of a currency Stripe \
                 supports, such as usd, eur or jpy"
            ),
            MoneyError::FractionalMinorUnits {
                amount, exponent, ..
            } => write!(
                f,
                "{amount} {upper} has more decimals than {code} allows ({exponent}): round the \
                 price to {exponent} decimal(s) before charging it"
            ),
            MoneyError::NotOnStep {
                amount,
                minor,
                rule,
                ..
            } => write!(
                f,
                "{amount} {upper} ({minor} in minor units) cannot be charged: {}; round the \
                 amount to a multiple of {} minor units",
                rule.describe(code),
                rule.step()
            ),
            MoneyError::Overflow { amount, .. } => {
                write!(
                    f,
                    "{amount} {upper} is too large to be an amount in minor units"
                )
            }
            MoneyError::NonPositiveCharge { amount, .. } => write!(
                f,
                "amount {amount} {code} must be positive: pass the order's price in the \
                 currency's smallest unit"
            ),
            MoneyError::NonPositivePrice { price, .. } => write!(
                f,
                "the order's price {price} {upper} is not positive, so there is nothing to \
                 charge: fix the order first"
            ),
            MoneyError::ChargeMismatch {
                charge_minor,
                charge_major,
                order_price,
                order_minor,
                rule,
                ..
            } => write!(
                f,
                "amount {charge_minor} {code} ({charge_major} {upper}) does not match the \
                 order's price {order_price} {upper}, which is {order_minor} in minor units: \
                 pass amount => {order_minor} ({})",
                rule.describe(code)
            ),
        }
    }
}

impl std::error::Error for MoneyError {}

/// Stripe's rule for a currency (case-insensitive); unknown codes are refused.
pub fn currency_rule(currency: &str) -> Result<MinorUnitRule, MoneyError> {
    let code = currency.to_ascii_lowercase();
    let listed = |list: &[&str]| list.contains(&code.as_str());
    if listed(ZERO_DECIMAL) {
        Ok(MinorUnitRule::ZeroDecimal)
    } else if listed(THREE_DECIMAL) {
        Ok(MinorUnitRule::ThreeDecimal)
    } else if listed(WHOLE_UNITS_IN_HUNDREDTHS) {
        Ok(MinorUnitRule::WholeUnitsInHundredths)
    } else if listed(PRESENTMENT) {
        Ok(MinorUnitRule::TwoDecimal)
    } else {
        let currency = currency.to_string();
        Err(MoneyError::UnknownCurrency { currency })
    }
}

/// The lower-case code Stripe wants, if Stripe knows the currency.
pub fn normalize_currency(currency: &str) -> Result<String, MoneyError> {
    currency_rule(currency).map(|_| currency.to_ascii_lowercase())
}

fn pow10(exponent: u32) -> Decimal {
    Decimal::from(10_i64.pow(exponent))
}

/// A price in major units (`99.99`) as the integer Stripe charges (`9999`).
///
/// Refuses what Stripe could not charge exactly: more decimals than the
/// currency has, a three-decimal amount whose last digit is not 0, a fraction
/// of an ISK or UGX. Never rounds: a price that needs rounding is the app's
/// decision, not ours. Zero and negative amounts convert (this is arithmetic);
/// `check_charge_matches_order` is where non-positive charges are refused.
pub fn to_minor_units(amount: Decimal, currency: &str) -> Result<i64, MoneyError> {
    let rule = currency_rule(currency)?;
    let currency = currency.to_ascii_lowercase();
    let overflow = || MoneyError::Overflow {
        amount,
        currency: currency.clone(),
    };
    let scaled = amount
        .checked_mul(pow10(rule.exponent()))
        .ok_or_else(overflow)?;
    let minor = scaled.trunc().to_i64().ok_or_else(overflow)?;
    if !scaled.fract().is_zero() {
        let exponent = rule.exponent();
        return Err(MoneyError::FractionalMinorUnits {
            amount,
            currency,
            exponent,
        });
    }
    if minor % rule.step() != 0 {
        return Err(MoneyError::NotOnStep {
            amount,
            minor,
            currency,
            rule,
        });
    }
    Ok(minor)
}

/// Stripe's integer amount as major units with the currency's exponent as
/// scale (`9999` usd is `99.99`, `5120` kwd is `5.120`, `500` isk is `5.00`).
///
/// Exact for every i64, so only an unknown currency is refused: this reads
/// what Stripe reported, and refusing a figure Stripe sent would hide it.
pub fn from_minor_units(amount: i64, currency: &str) -> Result<Decimal, MoneyError> {
    let rule = currency_rule(currency)?;
    Ok(Decimal::new(amount, rule.exponent()))
}

/// Refuses an amount in minor units that Stripe cannot move in `currency`: the
/// three-decimal currencies (KWD, BHD...) move in tens, ISK and UGX in hundreds.
pub fn check_on_step(amount_minor: i64, currency: &str) -> Result<(), MoneyError> {
    let rule = currency_rule(currency)?;
    if amount_minor % rule.step() != 0 {
        return Err(MoneyError::NotOnStep {
            amount: Decimal::new(amount_minor, rule.exponent()),
            minor: amount_minor,
            currency: currency.to_ascii_lowercase(),
            rule,
        });
    }
    Ok(())
}

/// Checks, before Stripe is called, that `charge_minor` is exactly the order's
/// price in Stripe's minor units. Catches the classic x100 mistake (99 for a
/// 99.99 USD order) with both figures in the message.
pub fn check_charge_matches_order(
    order_price: Decimal,
    currency: &str,
    charge_minor: i64,
) -> Result<(), MoneyError> {
    let rule = currency_rule(currency)?;
    let code = currency.to_ascii_lowercase();
    if charge_minor <= 0 {
        return Err(MoneyError::NonPositiveCharge {
            amount: charge_minor,
            currency: code,
        });
    }
    if order_price <= Decimal::ZERO {
        return Err(MoneyError::NonPositivePrice {
            price: order_price,
            currency: code,
        });
    }
    let charge_major = Decimal::new(charge_minor, rule.exponent());
    if charge_minor % rule.step() != 0 {
        return Err(MoneyError::NotOnStep {
            amount: charge_major,
            minor: charge_minor,
            currency: code,
            rule,
        });
    }
    let order_minor = to_minor_units(order_price, &code)?;
    if order_minor != charge_minor {
        return Err(MoneyError::ChargeMismatch {
            charge_minor,
            charge_major,
            currency: code,
            order_price,
            order_minor,
            rule,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    fn d(s: &str) -> Decimal {
        Decimal::from_str(s).unwrap()
    }

    #[test]
    fn two_decimal_currencies_count_hundredths() {
        assert_eq!(to_minor_units(d("99.99"), "usd"), Ok(9999));
        assert_eq!(to_minor_units(d("10"), "EUR"), Ok(1000));
        assert_eq!(to_minor_units(d("99.990"), "usd"), Ok(9999));
        assert_eq!(from_minor_units(9999, "USD").unwrap().to_string(), "99.99");
        // HUF and TWD are zero-decimal for payouts only.
        assert_eq!(to_minor_units(d("10.45"), "huf"), Ok(1045));
        assert_eq!(to_minor_units(d("800.45"), "twd"), Ok(80045));
    }

    #[test]
    fn every_zero_decimal_currency_counts_whole_units() {
        for code in ZERO_DECIMAL {
            assert_eq!(
                currency_rule(code),
                Ok(MinorUnitRule::ZeroDecimal),
                "{code}"
            );
            assert_eq!(to_minor_units(d("500"), code), Ok(500), "{code}");
            assert_eq!(from_minor_units(500, code), Ok(d("500")), "{code}");
            let err = to_minor_units(d("1.5"), code).unwrap_err();
            assert!(matches!(
                err,
                MoneyError::FractionalMinorUnits { exponent: 0, .. }
            ));
        }
    }

    #[test]
    fn three_decimal_currencies_end_in_zero() {
        for code in THREE_DECIMAL {
            assert_eq!(
                currency_rule(code),
                Ok(MinorUnitRule::ThreeDecimal),
                "{code}"
            );
            assert_eq!(to_minor_units(d("5.12"), code), Ok(5120), "{code}");
            assert_eq!(from_minor_units(5120, code).unwrap().to_string(), "5.120");
        }
        let err = to_minor_units(d("5.124"), "kwd").unwrap_err();
        assert!(matches!(err, MoneyError::NotOnStep { minor: 5124, .. }));
        let msg = err.to_string();
        assert!(
            msg.contains("5.124 KWD") && msg.contains("last digit to be 0"),
            "{msg}"
        );
        let err = to_minor_units(d("5.1245"), "kwd").unwrap_err();
        assert!(matches!(
            err,
            MoneyError::FractionalMinorUnits { exponent: 3, .. }
        ));
    }

    #[test]
    fn isk_and_ugx_are_whole_units_written_with_two_decimals() {
        for code in ["isk", "ugx", "ISK", "Ugx"] {
            assert_eq!(
                currency_rule(code),
                Ok(MinorUnitRule::WholeUnitsInHundredths)
            );
            assert_eq!(to_minor_units(d("5"), code), Ok(500), "{code}");
            assert_eq!(to_minor_units(d("5.00"), code), Ok(500), "{code}");
            assert_eq!(from_minor_units(500, code), Ok(d("5")), "{code}");
            let err = to_minor_units(d("5.5"), code).unwrap_err();
            assert!(matches!(err, MoneyError::NotOnStep { minor: 550, .. }));
            assert!(err.to_string().contains("always 00"), "{err}");
        }
    }

    #[test]
    fn unknown_codes_are_refused_and_known_ones_round_trip() {
        assert_eq!(normalize_currency("USD"), Ok("usd".to_string()));
        for bad in ["", "us", "usdd", "xyz", "usd ", "iqd", "€"] {
            let err = to_minor_units(d("1"), bad).unwrap_err();
            assert!(matches!(err, MoneyError::UnknownCurrency { .. }), "{bad}");
            assert!(err.to_string().contains("such as usd"), "{err}");
            assert!(from_minor_units(1, bad).is_err());
        }
        let all = PRESENTMENT.iter().chain(ZERO_DECIMAL).chain(THREE_DECIMAL);
        for code in all.chain(WHOLE_UNITS_IN_HUNDREDTHS) {
            let major = from_minor_units(123_400, code).unwrap();
            assert_eq!(to_minor_units(major, code), Ok(123_400), "{code}");
        }
    }

    #[test]
    fn conversion_refuses_fractions_and_overflow_but_not_signs() {
        let err = to_minor_units(d("99.999"), "usd").unwrap_err();
        assert!(matches!(err, MoneyError::FractionalMinorUnits { .. }));
        assert!(err.to_string().contains("round the price to 2"), "{err}");
        let max = d("92233720368547758.07");
        assert_eq!(to_minor_units(max, "usd"), Ok(i64::MAX));
        let over = to_minor_units(d("92233720368547758.08"), "usd");
        assert!(matches!(over, Err(MoneyError::Overflow { .. })));
        let over = to_minor_units(Decimal::MAX, "kwd");
        assert!(matches!(over, Err(MoneyError::Overflow { .. })));
        assert_eq!(to_minor_units(d("-1.50"), "usd"), Ok(-150));
        assert_eq!(to_minor_units(Decimal::ZERO, "jpy"), Ok(0));
        assert_eq!(from_minor_units(-150, "usd"), Ok(d("-1.50")));
    }

    #[test]
    fn matching_charge_passes_for_every_class() {
        assert_eq!(check_charge_matches_order(d("99.99"), "usd", 9999), Ok(()));
        assert_eq!(check_charge_matches_order(d("500"), "JPY", 500), Ok(()));
        assert_eq!(check_charge_matches_order(d("5.12"), "kwd", 5120), Ok(()));
        assert_eq!(check_charge_matches_order(d("5"), "isk", 500), Ok(()));
        assert_eq!(check_charge_matches_order(d("5"), "ugx", 500), Ok(()));
    }

    #[test]
    fn charge_in_major_units_names_both_figures() {
        let err = check_charge_matches_order(d("99.99"), "usd", 99).unwrap_err();
        assert_eq!(
            err.to_string(),
            "amount 99 usd (0.99 USD) does not match the order's price 99.99 USD, which is \
             9999 in minor units: pass amount => 9999 (usd amounts are in hundredths)"
        );
        // ISK without its two zeros, and yen multiplied by 100.
        let msg = check_charge_matches_order(d("500"), "isk", 500)
            .unwrap_err()
            .to_string();
        assert!(msg.contains("amount 500 isk (5.00 ISK)"), "{msg}");
        assert!(msg.contains("which is 50000 in minor units"), "{msg}");
        assert!(msg.contains("5 ISK is 500"), "{msg}");
        let err = check_charge_matches_order(d("500"), "jpy", 50000).unwrap_err();
        assert!(matches!(
            err,
            MoneyError::ChargeMismatch {
                order_minor: 500,
                ..
            }
        ));
        assert!(err.to_string().contains("(50000 JPY)"), "{err}");
    }

    #[test]
    fn charges_and_prices_breaking_stripes_rules_are_explained() {
        let err = check_charge_matches_order(d("5.125"), "kwd", 5125).unwrap_err();
        assert!(matches!(err, MoneyError::NotOnStep { .. }));
        assert!(err.to_string().contains("multiple of 10 "), "{err}");
        let err = check_charge_matches_order(d("5.5"), "ugx", 550).unwrap_err();
        assert!(err.to_string().contains("multiple of 100 "), "{err}");
        let err = check_charge_matches_order(d("5.124"), "kwd", 5120).unwrap_err();
        assert!(matches!(err, MoneyError::NotOnStep { minor: 5124, .. }));
        let err = check_charge_matches_order(d("9.999"), "usd", 1000).unwrap_err();
        assert!(matches!(err, MoneyError::FractionalMinorUnits { .. }));
    }

    #[test]
    fn non_positive_amounts_and_unknown_currencies_are_refused() {
        let check = |price, code, charge| check_charge_matches_order(d(price), code, charge);
        assert!(matches!(
            check("10", "usd", 0),
            Err(MoneyError::NonPositiveCharge { .. })
        ));
        assert!(matches!(
            check("10", "usd", -1000),
            Err(MoneyError::NonPositiveCharge { .. })
        ));
        assert!(matches!(
            check("0", "usd", 100),
            Err(MoneyError::NonPositivePrice { .. })
        ));
        assert!(matches!(
            check("10", "nope", 1000),
            Err(MoneyError::UnknownCurrency { .. })
        ));
    }

    #[test]
    fn refund_amounts_follow_the_currencys_step() {
        assert!(check_on_step(1230, "kwd").is_ok());
        assert!(check_on_step(1235, "kwd").is_err());
        assert!(check_on_step(500, "isk").is_ok());
        assert!(check_on_step(550, "isk").is_err());
        assert!(check_on_step(1, "usd").is_ok());
        assert!(check_on_step(7, "jpy").is_ok());
    }
}
