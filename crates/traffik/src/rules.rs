//! Rules that decide whether a throttle applies to a request.
//!
//! A [`Rule`] matches on path (a glob or a regex), methods and an async predicate, all ANDed.
//! A gating rule ([`Rule::gate`]) must match for the throttle to fire; a bypass rule
//! ([`Rule::bypass`]) skips the throttle when it matches. Within a rule the cheap checks run
//! first (method, then path, then predicate), and rules without predicates run before rules
//! with them.
//!
//! Globs are anchored to the whole path: `*` is exactly one segment (or part of one, as in
//! `*.pdf`), `**` is any number of segments, everything else is literal.
//!
//! ```
//! use traffik::Rule;
//! let r = Rule::gate().path("/api/*/users")?;
//! assert!(r.matches_path("/api/v1/users"));
//! assert!(!r.matches_path("/api/v1/users/9"));
//! let all = Rule::gate().path("/static/**")?;
//! assert!(all.matches_path("/static/css/site.css") && all.matches_path("/static"));
//! # Ok::<(), traffik::Error>(())
//! ```

use std::fmt;
use std::future::Future;
use std::sync::Arc;

use http::Method;
use regex::Regex;

use crate::context::Context;
use crate::error::{ConfigError, Error};
use crate::identity::RequestView;
use futures_core::future::BoxFuture;

/// An async condition over a request.
pub trait Predicate: Send + Sync + 'static {
    /// Whether the request matches.
    fn test<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, bool>;
    /// The answer without awaiting, when possible.
    fn test_now(&self, _req: &RequestView<'_>, _ctx: &Context) -> Option<bool> {
        None
    }
}

impl<F> Predicate for F
where
    F: Fn(&RequestView<'_>, &Context) -> bool + Send + Sync + 'static,
{
    fn test<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, bool> {
        let v = self(req, ctx);
        Box::pin(async move { v })
    }
    fn test_now(&self, req: &RequestView<'_>, ctx: &Context) -> Option<bool> {
        Some(self(req, ctx))
    }
}

/// Adapts an async predicate `Fn(&RequestView, &Context) -> impl Future<Output = bool>`.
pub struct AsyncPredicate<F>(pub F);

impl<F, Fut> Predicate for AsyncPredicate<F>
where
    F: Fn(&RequestView<'_>, &Context) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    fn test<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, bool> {
        Box::pin((self.0)(req, ctx))
    }
}

/// A path matcher: a compiled glob or regex.
#[derive(Clone)]
pub struct PathPattern {
    source: Arc<str>,
    regex: Regex,
}

impl PathPattern {
    /// Compiles a glob (see the [module docs](self)).
    pub fn glob(glob: &str) -> Result<Self, Error> {
        let regex = Regex::new(&glob_to_regex(glob))
            .map_err(|e| ConfigError::PathPattern { pattern: glob.to_owned(), reason: e.to_string() })?;
        Ok(PathPattern { source: glob.into(), regex })
    }

    /// Compiles a regex (matched anywhere unless it anchors itself with `^`/`$`).
    pub fn regex(pattern: &str) -> Result<Self, Error> {
        let regex = Regex::new(pattern)
            .map_err(|e| ConfigError::PathPattern { pattern: pattern.to_owned(), reason: e.to_string() })?;
        Ok(PathPattern { source: pattern.into(), regex })
    }

    /// Whether `path` matches.
    pub fn matches(&self, path: &str) -> bool {
        self.regex.is_match(path)
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }
}

impl fmt::Debug for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PathPattern({:?})", self.source)
    }
}

fn glob_to_regex(glob: &str) -> String {
    let glob = if glob.starts_with('/') { glob.to_owned() } else { format!("/{glob}") };
    let mut out = String::from("^");
    for segment in glob.split('/').skip(1) {
        if segment == "**" {
            out.push_str("(?:/[^/]*)*");
            continue;
        }
        out.push('/');
        if segment == "*" {
            out.push_str("[^/]+");
            continue;
        }
        let mut parts = segment.split('*');
        if let Some(first) = parts.next() {
            out.push_str(&regex::escape(first));
        }
        for part in parts {
            out.push_str("[^/]*");
            out.push_str(&regex::escape(part));
        }
    }
    if out == "^" {
        out.push('/');
    }
    out.push('$');
    out
}

/// A gating or bypass rule. See the [module docs](self).
#[derive(Clone)]
pub struct Rule {
    bypass: bool,
    path: Option<PathPattern>,
    methods: Option<Arc<[Method]>>,
    predicate: Option<Arc<dyn Predicate>>,
}

impl Rule {
    /// A gating rule: the throttle fires only if every gating rule matches.
    pub fn gate() -> Self {
        Rule { bypass: false, path: None, methods: None, predicate: None }
    }

    /// A bypass rule: the throttle is skipped when it matches.
    pub fn bypass() -> Self {
        Rule { bypass: true, ..Rule::gate() }
    }

    /// Matches paths against a glob.
    pub fn path(mut self, glob: &str) -> Result<Self, Error> {
        self.path = Some(PathPattern::glob(glob)?);
        Ok(self)
    }

    /// Matches paths against a regex.
    pub fn path_regex(mut self, pattern: &str) -> Result<Self, Error> {
        self.path = Some(PathPattern::regex(pattern)?);
        Ok(self)
    }

    /// Matches paths against a compiled pattern.
    #[must_use]
    pub fn path_pattern(mut self, pattern: PathPattern) -> Self {
        self.path = Some(pattern);
        self
    }

    /// Matches these methods only.
    #[must_use]
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.methods = Some(methods.into_iter().collect());
        self
    }

    /// Matches when the predicate holds (a sync closure or [`AsyncPredicate`]).
    #[must_use]
    pub fn predicate(mut self, predicate: impl Predicate) -> Self {
        self.predicate = Some(Arc::new(predicate));
        self
    }

    /// Whether this is a bypass rule.
    pub fn is_bypass(&self) -> bool {
        self.bypass
    }

    /// Whether the path condition (if any) matches.
    pub fn matches_path(&self, path: &str) -> bool {
        self.path.as_ref().is_none_or(|p| p.matches(path))
    }

    /// Whether the method condition (if any) matches.
    pub fn matches_method(&self, method: &Method) -> bool {
        self.methods.as_ref().is_none_or(|m| m.contains(method))
    }

    /// Whether every condition matches.
    pub async fn matches(&self, req: &RequestView<'_>, ctx: &Context) -> bool {
        if !self.matches_method(req.method()) || !self.matches_path(req.path()) {
            return false;
        }
        match &self.predicate {
            None => true,
            Some(p) => match p.test_now(req, ctx) {
                Some(v) => v,
                None => p.test(req, ctx).await,
            },
        }
    }
}

impl fmt::Debug for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rule")
            .field("bypass", &self.bypass)
            .field("path", &self.path)
            .field("methods", &self.methods)
            .field("predicate", &self.predicate.is_some())
            .finish()
    }
}

/// A throttle's rules, kept cheapest first.
#[derive(Clone, Debug, Default)]
pub(crate) struct RuleSet {
    rules: Vec<Rule>,
}

impl RuleSet {
    pub(crate) fn new(rules: Vec<Rule>) -> Self {
        RuleSet::default().with(rules)
    }

    pub(crate) fn with(&self, more: impl IntoIterator<Item = Rule>) -> Self {
        let mut rules = self.rules.clone();
        rules.extend(more);
        // Stable: predicate-free rules first, in the order they were given.
        rules.sort_by_key(|r| r.predicate.is_some());
        RuleSet { rules }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    pub(crate) fn to_vec(&self) -> Vec<Rule> {
        self.rules.clone()
    }

    /// [`RuleSet::allows`] without awaiting, if no predicate needs to.
    pub(crate) fn allows_now(&self, req: &RequestView<'_>, ctx: &Context) -> Option<bool> {
        for rule in &self.rules {
            let hit = rule.matches_method(req.method())
                && rule.matches_path(req.path())
                && match &rule.predicate {
                    None => true,
                    Some(p) => p.test_now(req, ctx)?,
                };
            if hit == rule.bypass {
                return Some(false);
            }
        }
        Some(true)
    }

    /// Whether the throttle applies: every gate matches and no bypass matches.
    pub(crate) async fn allows(&self, req: &RequestView<'_>, ctx: &Context) -> bool {
        for rule in &self.rules {
            let hit = rule.matches(req, ctx).await;
            if hit == rule.bypass {
                return false;
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn glob(g: &str) -> PathPattern {
        PathPattern::glob(g).unwrap()
    }

    #[test]
    fn single_star_is_exactly_one_segment() {
        let p = glob("/api/*/users");
        assert!(p.matches("/api/v1/users"));
        assert!(!p.matches("/api/v1/users/9"));
        assert!(!p.matches("/api//users"));
        assert!(!p.matches("/api/a/b/users"));
        assert!(!p.matches("/x/api/v1/users"));
    }

    #[test]
    fn double_star_is_any_number_of_segments() {
        let p = glob("/api/**/users");
        assert!(p.matches("/api/users"));
        assert!(p.matches("/api/a/b/c/users"));
        assert!(!p.matches("/api/a/users/x"));
        assert!(glob("/**").matches("/anything/at/all"));
        assert!(glob("**").matches("/"));
    }

    #[test]
    fn literals_are_escaped_and_partial_stars_stay_in_segment() {
        let p = glob("/files/*.pdf");
        assert!(p.matches("/files/report.pdf"));
        assert!(!p.matches("/files/reportXpdf"));
        assert!(!p.matches("/files/a/b.pdf"));
        assert!(glob("/a+b/(c)").matches("/a+b/(c)"));
        assert!(!glob("/a+b").matches("/aab"));
    }

    #[tokio::test]
    async fn gates_and_bypasses_combine() {
        let set = RuleSet::new(vec![
            Rule::gate().path("/api/**").unwrap().methods([Method::POST]),
            Rule::bypass().predicate(|r: &RequestView<'_>, _: &Context| r.headers().contains_key("x-admin")),
        ]);
        let uri: http::Uri = "/api/items".parse().unwrap();
        let headers = http::HeaderMap::new();
        let post = RequestView::new(&Method::POST, &uri, &headers);
        assert!(set.allows(&post, &Context::new()).await);
        let get = RequestView::new(&Method::GET, &uri, &headers);
        assert!(!set.allows(&get, &Context::new()).await);
        let mut admin = http::HeaderMap::new();
        admin.insert("x-admin", http::HeaderValue::from_static("1"));
        let post_admin = RequestView::new(&Method::POST, &uri, &admin);
        assert!(!set.allows(&post_admin, &Context::new()).await);
    }
}
