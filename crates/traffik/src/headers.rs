//! Rate-limit response headers.
//!
//! A [`Header`] has a value (a static string or a resolver over the request and the decision)
//! and a condition ([`When`]). [`Headers`] is an ordered collection, merged with `|`.
//!
//! | builder | header | value |
//! |---|---|---|
//! | [`Header::limit`] | `X-RateLimit-Limit` | the rate's limit |
//! | [`Header::remaining`] | `X-RateLimit-Remaining` | unit-cost hits left (an integer) |
//! | [`Header::reset_seconds`] | `Retry-After` | wait in whole seconds, rounded up (throttled responses only) |
//! | [`Header::reset_milliseconds`] | `X-RateLimit-Reset-Ms` | wait in milliseconds, rounded up |
//!
//! Presets are constructors: [`Headers::x_ratelimit`] (the three headers above, the limit pair
//! on every response or on 429s only) and [`Headers::ietf_draft10`], which emits the
//! `RateLimit` and `RateLimit-Policy` structured fields of
//! draft-ietf-httpapi-ratelimit-headers-10. A header whose value is unknown for a decision (for
//! example `Retry-After` when the cost can never fit) is omitted rather than invented.

use std::fmt;
use std::ops::BitOr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::decision::{Decision, Outcome, ceil_secs};
use crate::identity::RequestView;

type Resolver = Arc<dyn Fn(&RequestView<'_>, &Decision) -> Option<HeaderValue> + Send + Sync>;
type Condition = Arc<dyn Fn(&RequestView<'_>, &Decision) -> bool + Send + Sync>;

/// When a header is sent.
#[derive(Clone)]
pub enum When {
    /// On every response of a request the throttle decided.
    Always,
    /// Only on throttled (429) responses: not on a refusal that shadow mode lets through.
    Throttled,
    /// When the predicate holds.
    If(Condition),
}

impl When {
    /// A custom condition.
    pub fn predicate(f: impl Fn(&RequestView<'_>, &Decision) -> bool + Send + Sync + 'static) -> Self {
        When::If(Arc::new(f))
    }

    fn holds(&self, req: &RequestView<'_>, d: &Decision) -> bool {
        match self {
            When::Always => true,
            When::Throttled => d.is_refused(),
            When::If(f) => f(req, d),
        }
    }
}

impl fmt::Debug for When {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            When::Always => f.write_str("Always"),
            When::Throttled => f.write_str("Throttled"),
            When::If(_) => f.write_str("If(..)"),
        }
    }
}

#[derive(Clone)]
enum Value {
    Static(HeaderValue),
    Resolve(Resolver),
}

/// One response header: a value and when to send it.
#[derive(Clone)]
pub struct Header {
    value: Value,
    when: When,
    /// Whether the value may read the request (a resolver given by the application).
    reads_request: bool,
}

/// Header values of the integers below this are made once and shared.
const SMALL_INTS: u64 = 1024;

/// `"0"` to `"1023"` as header values, made once: most limits, remaining counts and waits in
/// seconds are small, and a shared value costs no allocation per response.
static SMALL: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
    // One string holds every number; it lives as long as the process, like the table.
    let mut digits = String::new();
    let mut ends = Vec::with_capacity(SMALL_INTS as usize);
    for n in 0..SMALL_INTS {
        digits.push_str(&n.to_string());
        ends.push(digits.len());
    }
    let digits: &'static str = Box::leak(digits.into_boxed_str());
    let mut start = 0;
    ends.into_iter()
        .map(|end| {
            let value = HeaderValue::from_static(&digits[start..end]);
            start = end;
            value
        })
        .collect()
});

fn int(v: u64) -> Option<HeaderValue> {
    Some(int_value(v))
}

/// `v` as a header value, shared for small values.
pub(crate) fn int_value(v: u64) -> HeaderValue {
    match usize::try_from(v).ok().and_then(|i| SMALL.get(i)) {
        Some(value) => value.clone(),
        None => HeaderValue::from(v),
    }
}

fn ceil_millis(d: Duration) -> u64 {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    ms + u64::from(!d.subsec_nanos().is_multiple_of(1_000_000))
}

impl Header {
    /// A static value.
    pub fn fixed(value: HeaderValue, when: When) -> Self {
        let reads_request = matches!(when, When::If(_));
        Header { value: Value::Static(value), when, reads_request }
    }

    /// A value computed per response; `None` omits the header.
    pub fn resolver(
        f: impl Fn(&RequestView<'_>, &Decision) -> Option<HeaderValue> + Send + Sync + 'static,
        when: When,
    ) -> Self {
        Header { value: Value::Resolve(Arc::new(f)), when, reads_request: true }
    }

    /// A value computed per response by this crate, from the decision alone.
    fn builtin(f: impl Fn(&Decision) -> Option<HeaderValue> + Send + Sync + 'static, when: When) -> Self {
        let reads_request = matches!(when, When::If(_));
        Header { value: Value::Resolve(Arc::new(move |_, d| f(d))), when, reads_request }
    }

    /// The rate's limit.
    pub fn limit(when: When) -> Self {
        Header::builtin(|d| d.rate.and_then(|r| int(r.limit())), when)
    }

    /// Unit-cost hits left, as an integer.
    pub fn remaining(when: When) -> Self {
        Header::builtin(|d| d.remaining.and_then(int), when)
    }

    /// Seconds until a retry passes, rounded up, on throttled responses only: a request that
    /// was let through (allowed, delayed and then served, or refused in shadow mode) has
    /// nothing to retry, so its response never carries `Retry-After`. Omitted too when the
    /// cost can never fit.
    pub fn reset_seconds(when: When) -> Self {
        Header::builtin(
            |d| match d.outcome {
                Outcome::Throttled if !d.shadow => int(d.retry_after_secs().unwrap_or(1)),
                _ => None,
            },
            when,
        )
    }

    /// Milliseconds until a retry passes, rounded up; omitted when the cost can never fit.
    pub fn reset_milliseconds(when: When) -> Self {
        Header::builtin(
            |d| match d.outcome {
                Outcome::Never => None,
                _ => int(ceil_millis(d.wait)),
            },
            when,
        )
    }

    fn resolve(&self, req: &RequestView<'_>, d: &Decision) -> Option<HeaderValue> {
        if !self.when.holds(req, d) {
            return None;
        }
        match &self.value {
            Value::Static(v) => Some(v.clone()),
            Value::Resolve(f) => f(req, d),
        }
    }
}

impl fmt::Debug for Header {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = match &self.value {
            Value::Static(v) => format!("{v:?}"),
            Value::Resolve(_) => "<resolver>".into(),
        };
        f.debug_struct("Header").field("value", &value).field("when", &self.when).finish()
    }
}

/// An ordered set of headers; a later entry with the same name replaces an earlier one.
#[derive(Clone, Debug, Default)]
pub struct Headers {
    entries: Arc<Vec<(HeaderName, Header)>>,
}

/// Per-call header overrides: replace a header, or disable it for this response.
#[derive(Clone, Debug, Default)]
pub struct HeaderOverrides {
    entries: Vec<(HeaderName, Option<Header>)>,
}

impl HeaderOverrides {
    /// No overrides.
    pub fn new() -> Self {
        HeaderOverrides::default()
    }

    /// Suppresses `name` for this call (the seed's `Header.DISABLE`).
    #[must_use]
    pub fn disable(mut self, name: HeaderName) -> Self {
        self.entries.push((name, None));
        self
    }

    /// Replaces or adds `name` for this call.
    #[must_use]
    pub fn set(mut self, name: HeaderName, header: Header) -> Self {
        self.entries.push((name, Some(header)));
        self
    }
}

impl Headers {
    /// No headers.
    pub fn new() -> Self {
        Headers::default()
    }

    /// `X-RateLimit-Limit` and `X-RateLimit-Remaining` when `when` holds (`When::Always`: on
    /// every response; `When::Throttled`: on 429s only), and `Retry-After` on throttled
    /// responses (never on a request that was let through).
    pub fn x_ratelimit(when: When) -> Self {
        Headers::new()
            .with(HeaderName::from_static("x-ratelimit-limit"), Header::limit(when.clone()))
            .with(HeaderName::from_static("x-ratelimit-remaining"), Header::remaining(when.clone()))
            .with(http::header::RETRY_AFTER, Header::reset_seconds(when))
    }

    /// `RateLimit-Policy: "<policy>";q=<limit>;w=<window s>` and
    /// `RateLimit: "<policy>";r=<remaining>;t=<seconds to reset>` (draft-ietf-httpapi-ratelimit-headers-10)
    /// on every response, plus `Retry-After` when throttled. `policy` must be a token of
    /// letters, digits, `_`, `-` or `.`; other characters are dropped.
    pub fn ietf_draft10(policy: &str) -> Self {
        let name: Arc<str> =
            policy.chars().filter(|c| c.is_ascii_alphanumeric() || "_-.".contains(*c)).collect::<String>().into();
        let p1 = Arc::clone(&name);
        let policy_header = Header::builtin(
            move |d| {
                let r = d.rate?;
                let w = r.period().as_secs().max(1);
                HeaderValue::from_str(&format!("\"{p1}\";q={};w={w}", r.limit())).ok()
            },
            When::Always,
        );
        let p2 = Arc::clone(&name);
        let state_header = Header::builtin(
            move |d| {
                let r = d.remaining?;
                let t = if d.is_throttled() { d.retry_after_secs().unwrap_or(0) } else { ceil_secs(d.reset) };
                HeaderValue::from_str(&format!("\"{p2}\";r={r};t={t}")).ok()
            },
            When::Always,
        );
        Headers::new()
            .with(HeaderName::from_static("ratelimit-policy"), policy_header)
            .with(HeaderName::from_static("ratelimit"), state_header)
            .with(http::header::RETRY_AFTER, Header::reset_seconds(When::Throttled))
    }

    /// Adds (or replaces) a header.
    #[must_use]
    pub fn with(mut self, name: HeaderName, header: Header) -> Self {
        let entries = Arc::make_mut(&mut self.entries);
        entries.retain(|(n, _)| n != name);
        entries.push((name, header));
        self
    }

    /// Whether there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Header names in order.
    pub fn names(&self) -> impl Iterator<Item = &HeaderName> {
        self.entries.iter().map(|(n, _)| n)
    }

    /// Resolves every header for a response into `out` (replacing existing values).
    /// Requests the throttle skipped (exempted, disabled, ...) get no headers.
    pub fn apply(
        &self,
        req: &RequestView<'_>,
        decision: &Decision,
        overrides: Option<&HeaderOverrides>,
        out: &mut HeaderMap,
    ) {
        if matches!(decision.outcome, Outcome::Skipped(_)) {
            return;
        }
        for (name, header) in self.entries.iter() {
            if overrides.is_some_and(|o| o.entries.iter().any(|(n, _)| n == name)) {
                continue;
            }
            if let Some(v) = header.resolve(req, decision) {
                out.insert(name.clone(), v);
            }
        }
        if let Some(o) = overrides {
            for (name, header) in &o.entries {
                if let Some(v) = header.as_ref().and_then(|h| h.resolve(req, decision)) {
                    out.insert(name.clone(), v);
                }
            }
        }
    }

    /// Whether any header's value or condition reads the request (a [`Header::resolver`] or a
    /// [`When::If`] of the application's). When none does, the headers can be resolved after
    /// the request is gone (with [`RequestView::empty`]), which is what the integrations do.
    pub fn reads_request(&self) -> bool {
        self.entries.iter().any(|(_, h)| h.reads_request)
    }

    /// Adds every header that applies to `decision` and that `out` does not have yet: a
    /// header the application or an inner layer set is never replaced. Requests the throttle
    /// skipped get no headers.
    pub fn apply_missing(&self, req: &RequestView<'_>, decision: &Decision, out: &mut HeaderMap) {
        if matches!(decision.outcome, Outcome::Skipped(_)) {
            return;
        }
        for (name, header) in self.entries.iter() {
            if !out.contains_key(name)
                && let Some(v) = header.resolve(req, decision)
            {
                out.insert(name.clone(), v);
            }
        }
    }

    /// Resolves every header into a new map.
    pub fn resolve(&self, req: &RequestView<'_>, decision: &Decision) -> HeaderMap {
        let mut out = HeaderMap::new();
        self.apply(req, decision, None, &mut out);
        out
    }
}

impl BitOr for Headers {
    type Output = Headers;
    /// Merges; headers on the right replace same-named ones on the left.
    fn bitor(self, rhs: Headers) -> Headers {
        rhs.entries.iter().fold(self, |acc, (n, h)| acc.with(n.clone(), h.clone()))
    }
}

impl BitOr for &Headers {
    type Output = Headers;
    fn bitor(self, rhs: &Headers) -> Headers {
        self.clone() | rhs.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::{Skip, Source};
    use crate::key::Key;
    use crate::rate;

    fn decision(outcome: Outcome, remaining: u64, wait_ms: u64) -> Decision {
        Decision {
            outcome,
            key: Some(Key::builder("t").build()),
            rate: Some(rate!("100/min")),
            cost: 1,
            remaining: Some(remaining),
            wait: Duration::from_micros(wait_ms * 1000 + 1),
            reset: Duration::from_secs(30),
            source: Source::Backend,
            shadow: false,
            charged_at_us: 0,
        }
    }

    #[test]
    fn integers_render_alike_from_the_shared_table_and_beyond_it() {
        for v in [0, 1, 9, 10, 99, 100, 999, 1000, 1023, 1024, 65_535, u64::MAX] {
            assert_eq!(int(v), Some(HeaderValue::from(v)), "{v}");
        }
    }

    #[test]
    fn missing_headers_are_added_and_present_ones_kept() {
        let headers = Headers::x_ratelimit(When::Always);
        assert!(!headers.reads_request());
        let mut out = HeaderMap::new();
        out.insert("x-ratelimit-limit", HeaderValue::from_static("7"));
        headers.apply_missing(&RequestView::empty(), &decision(Outcome::Allowed, 42, 0), &mut out);
        assert_eq!(out.get("x-ratelimit-limit").unwrap(), "7", "the application's own value stays");
        assert_eq!(out.get("x-ratelimit-remaining").unwrap(), "42");
        assert!(out.get("retry-after").is_none(), "never on an admitted request");
        let mut skipped = HeaderMap::new();
        headers.apply_missing(&RequestView::empty(), &Decision::skipped(Skip::Exempted), &mut skipped);
        assert!(skipped.is_empty());
        let custom = headers
            .with(HeaderName::from_static("x-path"), Header::resolver(|r, _| r.path().parse().ok(), When::Always));
        assert!(custom.reads_request());
        let conditional = Headers::new().with(
            HeaderName::from_static("x-if"),
            Header::fixed(HeaderValue::from_static("1"), When::predicate(|_, _| true)),
        );
        assert!(conditional.reads_request());
        assert!(!Headers::ietf_draft10("p").reads_request());
    }

    #[test]
    fn defaults_render_integers_and_round_up() {
        let req = RequestView::empty();
        let h = Headers::x_ratelimit(When::Always).resolve(&req, &decision(Outcome::Throttled, 0, 1500));
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["retry-after"], "2");
        let ok = Headers::x_ratelimit(When::Throttled).resolve(&req, &decision(Outcome::Allowed, 4, 0));
        assert!(ok.is_empty());
        for outcome in [Outcome::Allowed, Outcome::Delayed] {
            let ok = Headers::x_ratelimit(When::Always).resolve(&req, &decision(outcome, 4, 0));
            assert!(!ok.contains_key("retry-after"), "Retry-After on a request let through: {ok:?}");
            assert_eq!(ok["x-ratelimit-remaining"], "4");
        }
        let never = Headers::x_ratelimit(When::Always).resolve(&req, &decision(Outcome::Never, 0, 0));
        assert!(!never.contains_key("retry-after"));
        let skipped = Headers::x_ratelimit(When::Always).resolve(&req, &Decision::skipped(Skip::Exempted));
        assert!(skipped.is_empty());
    }

    #[test]
    fn a_refusal_let_through_by_shadow_mode_gets_the_headers_of_an_allowed_request() {
        let req = RequestView::empty();
        let shadowed = Decision { shadow: true, ..decision(Outcome::Throttled, 0, 1500) };
        let h = Headers::x_ratelimit(When::Always).resolve(&req, &shadowed);
        assert_eq!(h["x-ratelimit-limit"], "100");
        assert_eq!(h["x-ratelimit-remaining"], "0", "the true count");
        assert!(!h.contains_key("retry-after"), "no Retry-After on a request let through: {h:?}");
        assert!(Headers::x_ratelimit(When::Throttled).resolve(&req, &shadowed).is_empty(), "no 429, no 429 headers");
        let draft = Headers::ietf_draft10("p").resolve(&req, &shadowed);
        assert!(!draft.contains_key("retry-after"));
        assert_eq!(draft["ratelimit"], "\"p\";r=0;t=2", "t is the true wait");
    }

    #[test]
    fn merge_override_and_ietf() {
        let req = RequestView::empty();
        let d = decision(Outcome::Allowed, 7, 0);
        let custom = Headers::new().with(
            HeaderName::from_static("x-ratelimit-limit"),
            Header::fixed(HeaderValue::from_static("lots"), When::Always),
        );
        let merged = &Headers::x_ratelimit(When::Always) | &custom;
        assert_eq!(merged.resolve(&req, &d)["x-ratelimit-limit"], "lots");
        let mut out = HeaderMap::new();
        let o = HeaderOverrides::new().disable(HeaderName::from_static("x-ratelimit-remaining"));
        Headers::x_ratelimit(When::Always).apply(&req, &d, Some(&o), &mut out);
        assert!(!out.contains_key("x-ratelimit-remaining") && out.contains_key("x-ratelimit-limit"));
        let ietf = Headers::ietf_draft10("default").resolve(&req, &d);
        assert_eq!(ietf["ratelimit-policy"], "\"default\";q=100;w=60");
        assert_eq!(ietf["ratelimit"], "\"default\";r=7;t=30");
    }
}
