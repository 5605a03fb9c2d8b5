//! Stripe's v1 form encoding: nested parameters in bracket notation
//! (`metadata[order_id]=42`, `items[0][price]=price_1`), percent-encoded the
//! way Stripe's own libraries do it.
//!
//! stripe-python builds the body with `urllib.parse.urlencode` (so
//! `quote_plus`: only `A-Z a-z 0-9 _ . - ~` stay as they are, a space becomes
//! `+`, everything else is `%XX` of its UTF-8 bytes) and then turns `%5B`/`%5D`
//! back into `[`/`]` "to make these parameter strings easier to read". We do
//! the same, byte for byte, so a request logged here reads like one from the
//! official libraries and the fake servers parse it the same way.

/// One parameter value: a scalar, a list (`key[0]`, `key[1]`) or a map
/// (`key[sub]`). Maps keep insertion order, as Stripe's libraries do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Param {
    Value(String),
    List(Vec<Param>),
    Map(Vec<(String, Param)>),
}

impl Param {
    /// A map from string pairs, e.g. metadata.
    pub fn map<K: AsRef<str>, V: AsRef<str>>(pairs: &[(K, V)]) -> Param {
        Param::Map(
            pairs
                .iter()
                .map(|(k, v)| (k.as_ref().to_string(), Param::from(v.as_ref())))
                .collect(),
        )
    }
}

impl From<&str> for Param {
    fn from(v: &str) -> Self {
        Param::Value(v.to_string())
    }
}

impl From<String> for Param {
    fn from(v: String) -> Self {
        Param::Value(v)
    }
}

impl From<i64> for Param {
    fn from(v: i64) -> Self {
        Param::Value(v.to_string())
    }
}

impl From<bool> for Param {
    // Stripe's libraries send booleans as lower-case words.
    fn from(v: bool) -> Self {
        Param::Value(if v { "true" } else { "false" }.to_string())
    }
}

/// An ordered list of top-level parameters, built with `push`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Form {
    params: Vec<(String, Param)>,
}

impl Form {
    pub fn new() -> Self {
        Form::default()
    }

    pub fn push(mut self, key: &str, value: impl Into<Param>) -> Self {
        self.params.push((key.to_string(), value.into()));
        self
    }

    /// Adds `key` only when there is a value; Stripe and localstripe treat an
    /// absent parameter differently from an empty one.
    pub fn push_opt(self, key: &str, value: Option<impl Into<Param>>) -> Self {
        match value {
            Some(v) => self.push(key, v),
            None => self,
        }
    }

    /// The `(key, value)` pairs after flattening, before percent-encoding.
    pub fn pairs(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, value) in &self.params {
            flatten(key.clone(), value, &mut out);
        }
        out
    }

    /// The `application/x-www-form-urlencoded` body.
    pub fn encode(&self) -> String {
        let joined = self
            .pairs()
            .iter()
            .map(|(k, v)| format!("{}={}", quote_plus(k), quote_plus(v)))
            .collect::<Vec<_>>()
            .join("&");
        joined.replace("%5B", "[").replace("%5D", "]")
    }
}

fn flatten(key: String, value: &Param, out: &mut Vec<(String, String)>) {
    match value {
        Param::Value(v) => out.push((key, v.clone())),
        Param::List(items) => {
            for (i, item) in items.iter().enumerate() {
                flatten(format!("{key}[{i}]"), item, out);
            }
        }
        Param::Map(entries) => {
            for (sub, item) in entries {
                flatten(format!("{key}[{sub}]"), item, out);
            }
        }
    }
}

/// Python's `urllib.parse.quote_plus(s, safe='')`.
pub fn quote_plus(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scalars_and_metadata_use_bracket_notation() {
        let form = Form::new()
            .push("amount", 9999_i64)
            .push("currency", "usd")
            .push(
                "metadata",
                Param::map(&[("order_id", "42"), ("pgpay_payment_id", "7")]),
            );
        assert_eq!(
            form.encode(),
            "amount=9999&currency=usd&metadata[order_id]=42&metadata[pgpay_payment_id]=7"
        );
    }

    #[test]
    fn lists_are_indexed_and_nest() {
        let item = Param::Map(vec![
            ("price".into(), "price_1".into()),
            ("quantity".into(), 2_i64.into()),
        ]);
        let form = Form::new().push("items", Param::List(vec![item])).push(
            "expand",
            Param::List(vec!["latest_invoice.payment_intent".into()]),
        );
        assert_eq!(
            form.encode(),
            "items[0][price]=price_1&items[0][quantity]=2&expand[0]=latest_invoice.payment_intent"
        );
    }

    #[test]
    fn deep_nesting_flattens_in_order() {
        let form = Form::new().push(
            "a",
            Param::Map(vec![(
                "b".into(),
                Param::List(vec![Param::Map(vec![("c".into(), "d".into())])]),
            )]),
        );
        assert_eq!(form.pairs(), vec![("a[b][0][c]".into(), "d".into())]);
        assert_eq!(form.encode(), "a[b][0][c]=d");
    }

    #[test]
    fn percent_encoding_matches_python_quote_plus() {
        // Expected strings are what urllib.parse.quote_plus(s, safe='') gives.
        assert_eq!(quote_plus("a b&c=d/e?f"), "a+b%26c%3Dd%2Fe%3Ff");
        assert_eq!(quote_plus("A-z_0.9~"), "A-z_0.9~");
        assert_eq!(quote_plus("100%+"), "100%25%2B");
        assert_eq!(quote_plus("é€"), "%C3%A9%E2%82%AC");
        assert_eq!(quote_plus("*'()!"), "%2A%27%28%29%21");
        assert_eq!(quote_plus("a@b.com"), "a%40b.com");
    }

    #[test]
    fn brackets_are_restored_in_keys_and_values_like_stripe_python() {
        let form = Form::new().push("metadata", Param::map(&[("note", "x[1] y")]));
        assert_eq!(form.encode(), "metadata[note]=x[1]+y");
    }

    #[test]
    fn booleans_and_empty_values() {
        let form = Form::new()
            .push("cancel_at_period_end", true)
            .push("description", "");
        assert_eq!(form.encode(), "cancel_at_period_end=true&description=");
        assert_eq!(Form::new().push_opt("email", None::<&str>).encode(), "");
        assert_eq!(Form::new().encode(), "");
    }
}
