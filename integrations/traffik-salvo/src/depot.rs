//! What throttles leave in the [`Depot`] for downstream handlers.

use std::sync::Arc;

use salvo::Depot;
use traffik::{Decision, Stat};

/// One throttle's verdict on the current request.
#[derive(Clone, Debug, PartialEq)]
pub struct ThrottleRecord {
    /// The throttle's uid.
    pub uid: Arc<str>,
    /// What it decided.
    pub decision: Decision,
    /// A quota snapshot taken right after the hit, when the hoop was configured with
    /// [`with_stat`](crate::SalvoThrottle::with_stat) (one extra backend round trip) and the
    /// request was actually limited.
    pub stat: Option<Stat>,
}

/// Every throttle decision taken on the current request, in the order the throttles ran.
///
/// Stored in the [`Depot`] by type; read it with [`DepotExt`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ThrottleRecords {
    records: Vec<ThrottleRecord>,
}

impl ThrottleRecords {
    /// All records, oldest first.
    pub fn all(&self) -> &[ThrottleRecord] {
        &self.records
    }

    /// The most recent record.
    pub fn last(&self) -> Option<&ThrottleRecord> {
        self.records.last()
    }

    /// The most recent record of the throttle with this uid.
    pub fn get(&self, uid: &str) -> Option<&ThrottleRecord> {
        self.records.iter().rev().find(|r| &*r.uid == uid)
    }
}

/// Reads throttle results from a [`Depot`].
///
/// ```
/// use salvo::prelude::*;
/// use traffik_salvo::DepotExt;
///
/// #[handler]
/// async fn hello(depot: &mut Depot) -> String {
///     match depot.throttle_decision() {
///         Some(d) => format!("{} requests left", d.remaining.unwrap_or(0)),
///         None => "not throttled".to_owned(),
///     }
/// }
/// ```
pub trait DepotExt {
    /// All decisions taken on this request.
    fn throttle_records(&self) -> Option<&ThrottleRecords>;

    /// The decision of the throttle that ran last.
    fn throttle_decision(&self) -> Option<&Decision> {
        self.throttle_records()?.last().map(|r| &r.decision)
    }

    /// The decision of the throttle with this uid.
    fn throttle_decision_for(&self, uid: &str) -> Option<&Decision> {
        self.throttle_records()?.get(uid).map(|r| &r.decision)
    }

    /// The quota snapshot of the throttle that ran last, when it was configured to take one.
    fn throttle_stat(&self) -> Option<&Stat> {
        self.throttle_records()?.last()?.stat.as_ref()
    }
}

impl DepotExt for Depot {
    fn throttle_records(&self) -> Option<&ThrottleRecords> {
        self.get_typed::<ThrottleRecords>().ok()
    }
}

pub(crate) fn record(depot: &mut Depot, record: ThrottleRecord) {
    if let Ok(records) = depot.get_typed_mut::<ThrottleRecords>() {
        records.records.push(record);
        return;
    }
    depot.insert_typed(ThrottleRecords { records: vec![record] });
}
