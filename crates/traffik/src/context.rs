//! Per-hit options and context passed to cost and rate functions.

use std::sync::Arc;

use http::Extensions;

/// Options for one hit: a cost override, scope parts added to the key, and typed values for
/// cost/rate functions, rules and handlers (the seed's `context` dict).
///
/// ```
/// use traffik::Context;
/// #[derive(Clone)]
/// struct Operation(&'static str);
/// let ctx = Context::new().cost(5).scope("room-42").with(Operation("export"));
/// assert_eq!(ctx.get::<Operation>().map(|o| o.0), Some("export"));
/// ```
#[derive(Clone, Debug, Default)]
pub struct Context {
    cost: Option<u64>,
    scope: Vec<Arc<str>>,
    values: Extensions,
    shadow: bool,
}

impl Context {
    /// An empty context.
    pub fn new() -> Self {
        Context::default()
    }

    /// Overrides the throttle's cost for this hit.
    #[must_use]
    pub fn cost(mut self, cost: u64) -> Self {
        self.cost = Some(cost);
        self
    }

    /// Adds a scope part to the key (e.g. a WebSocket room), so it gets its own quota.
    #[must_use]
    pub fn scope(mut self, part: impl Into<Arc<str>>) -> Self {
        self.scope.push(part.into());
        self
    }

    /// Decides this hit in shadow mode, as if the throttle (or group) were in it
    /// ([`Throttle::set_shadow`](crate::Throttle::set_shadow)): a refusal or delay is marked
    /// [`Decision::shadow`](crate::Decision::shadow), counted and logged, and integrations let
    /// the request through. `false` (the default) leaves the throttle's own setting in force;
    /// it cannot switch a throttle in shadow mode back to enforcing.
    #[must_use]
    pub fn shadow(mut self, yes: bool) -> Self {
        self.shadow = yes;
        self
    }

    /// Whether [`shadow`](Self::shadow) was set for this hit.
    pub fn is_shadow(&self) -> bool {
        self.shadow
    }

    /// Attaches a typed value.
    #[must_use]
    pub fn with<T: Clone + Send + Sync + 'static>(mut self, value: T) -> Self {
        self.values.insert(value);
        self
    }

    /// Reads a typed value.
    pub fn get<T: Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get::<T>()
    }

    /// The cost override.
    pub fn cost_override(&self) -> Option<u64> {
        self.cost
    }

    /// The scope parts.
    pub fn scope_parts(&self) -> &[Arc<str>] {
        &self.scope
    }
}
