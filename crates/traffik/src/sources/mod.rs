//! Rate sources beyond one fixed rate: a rate per tier (a user's plan, an API key's class) and
//! rates by local time of day, and a limit that follows the service's load.
//!
//! A source decides the [`Rate`](crate::Rate) of each hit; the strategy and its state stay the same, so a
//! client whose tier changes keeps its usage under the strategy's rate-change rule (README,
//! "When the rate changes"): moving from `100/min` to `1000/min` within a minute keeps the hits
//! already made.

mod adaptive;
mod schedule;
mod tiers;

pub use adaptive::{Adaptive, AdaptiveBuilder, Load, Observation};
pub use schedule::{Schedule, ScheduleBuilder};
pub(crate) use tiers::Resolver;
pub use tiers::{Tiers, TiersBuilder};
