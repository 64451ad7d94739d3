//! Registries of throttles by uid: lookup, rules and group enable/disable.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Weak};

use parking_lot::Mutex;

use serde::Serialize;

use crate::context::Context;
use crate::error::Error;
use crate::identity::RequestView;
use crate::rules::Rule;
use crate::stat::{Snapshot, Stat};
use crate::throttle::{Throttle, ThrottleInner};

/// The process-wide registry: a throttle joins it when built with
/// `.registry(&GLOBAL_REGISTRY)`. Throttles join no registry by default, so the same app can
/// be built twice in one process (tests, a second server) without a duplicate uid.
pub static GLOBAL_REGISTRY: LazyLock<ThrottleRegistry> = LazyLock::new(ThrottleRegistry::new);

/// Throttles by uid. Holds weak references: a dropped throttle disappears. Cheap to clone.
#[derive(Clone, Default)]
pub struct ThrottleRegistry {
    throttles: Arc<Mutex<HashMap<String, Weak<ThrottleInner>>>>,
}

impl ThrottleRegistry {
    /// An empty registry.
    pub fn new() -> Self {
        ThrottleRegistry::default()
    }

    /// Adds `throttle` under its uid; a dropped throttle's entry gives way. Entries of dropped
    /// throttles are cleared out here, so a registry never holds more than its live throttles
    /// and the dead ones since the last registration (a throttle needs no hook into it).
    pub(crate) fn register(&self, throttle: &Throttle) -> Result<(), Error> {
        let mut map = self.throttles.lock();
        map.retain(|_, w| w.strong_count() > 0);
        let uid = throttle.uid();
        if map.contains_key(uid) {
            return Err(Error::DuplicateUid(uid.to_owned()));
        }
        map.insert(uid.to_owned(), throttle.downgrade());
        Ok(())
    }

    /// The live throttle registered as `uid`.
    pub fn get(&self, uid: &str) -> Option<Throttle> {
        let inner = self.throttles.lock().get(uid)?.upgrade()?;
        Some(Throttle { inner })
    }

    /// Whether a live throttle is registered as `uid`.
    pub fn exists(&self, uid: &str) -> bool {
        self.get(uid).is_some()
    }

    /// Uids of live throttles.
    pub fn uids(&self) -> Vec<String> {
        let map = self.throttles.lock();
        let mut uids: Vec<String> = map.iter().filter(|(_, w)| w.strong_count() > 0).map(|(k, _)| k.clone()).collect();
        uids.sort();
        uids
    }

    /// Adds rules to the throttle `uid`.
    pub fn add_rules(&self, uid: &str, rules: impl IntoIterator<Item = Rule>) -> Result<(), Error> {
        let throttle = self.get(uid).ok_or_else(|| Error::UnknownUid(uid.to_owned()))?;
        throttle.add_rules(rules);
        Ok(())
    }

    /// The rules of throttle `uid` (empty if unknown).
    pub fn get_rules(&self, uid: &str) -> Vec<Rule> {
        self.get(uid).map(|t| t.rules()).unwrap_or_default()
    }

    /// Disables throttle `uid`; returns whether it was found.
    pub fn disable(&self, uid: &str) -> bool {
        self.get(uid).map(|t| t.disable()).is_some()
    }

    /// Enables throttle `uid`; returns whether it was found.
    pub fn enable(&self, uid: &str) -> bool {
        self.get(uid).map(|t| t.enable()).is_some()
    }

    fn live(&self) -> Vec<Throttle> {
        self.throttles.lock().values().filter_map(Weak::upgrade).map(|inner| Throttle { inner }).collect()
    }

    /// Disables every live throttle.
    pub fn disable_all(&self) {
        self.live().iter().for_each(Throttle::disable);
    }

    /// Enables every live throttle.
    pub fn enable_all(&self) {
        self.live().iter().for_each(Throttle::enable);
    }

    /// Forgets every throttle (they keep working; they are just no longer listed).
    pub fn clear(&self) {
        self.throttles.lock().clear();
    }

    /// "What are my quotas?": a snapshot of every live throttle here that limits `req` (one
    /// whose rules let it through, not disabled or exempting it), in uid order, without
    /// charging anything. A throttle whose backend fails is listed under
    /// [`Quotas::unavailable`] rather than hiding the others.
    pub async fn quotas(&self, req: &RequestView<'_>, ctx: &Context) -> Quotas {
        let mut throttles = self.live();
        throttles.sort_by(|a, b| a.uid().cmp(b.uid()));
        let mut quotas = Quotas::default();
        for throttle in throttles {
            match throttle.stat_with(req, ctx).await {
                Ok(Snapshot::Limited(stat)) => quotas.quotas.push(stat),
                Ok(Snapshot::Skipped { .. }) => {}
                Err(error) => {
                    #[cfg(feature = "tracing")]
                    tracing::debug!(throttle = throttle.uid(), %error, "quota snapshot failed");
                    #[cfg(not(feature = "tracing"))]
                    let _ = error;
                    quotas.unavailable.push(throttle.uid().to_owned());
                }
            }
        }
        quotas
    }
}

/// The quotas of one caller across a registry ([`ThrottleRegistry::quotas`]); serializes as
/// `{"quotas": [<Stat>, ..], "unavailable": [uid, ..]}` (each [`Stat`] names its throttle).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Quotas {
    /// A snapshot per throttle that limits the request, in uid order.
    pub quotas: Vec<Stat>,
    /// Throttles whose backend could not answer.
    pub unavailable: Vec<String>,
}

impl std::fmt::Debug for ThrottleRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThrottleRegistry").field("uids", &self.uids()).finish()
    }
}
