//! The permit a concurrency limit's hoop holds while the rest of the chain runs.

use std::fmt;
use std::sync::{Arc, Mutex};

use salvo::Depot;
use traffik::lease::Permit;

/// The permit a concurrency limit's hoop (a throttle with the
/// [`Concurrency`](traffik::strategy::Concurrency) strategy) holds for a request, in the
/// [`Depot`] until the rest of the chain has answered; see [`take_permit`].
#[derive(Clone)]
pub struct HeldPermit(Arc<Mutex<Option<Permit>>>);

impl fmt::Debug for HeldPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HeldPermit")
    }
}

impl HeldPermit {
    pub(crate) fn new(permit: Permit) -> Self {
        HeldPermit(Arc::new(Mutex::new(Some(permit))))
    }

    pub(crate) fn take(&self) -> Option<Permit> {
        self.0.lock().ok().and_then(|mut p| p.take())
    }
}

/// Takes the permit the innermost concurrency-limit hoop holds for the request, so that it
/// lives as long as the value it is moved into rather than until the handlers have answered:
/// move it into a WebSocket's upgrade callback and the slot is held until the socket closes.
///
/// ```
/// use salvo::prelude::*;
/// use salvo::websocket::WebSocketUpgrade;
///
/// #[handler]
/// async fn feed(req: &mut Request, depot: &mut Depot, res: &mut Response) -> Result<(), StatusError> {
///     let permit = traffik_salvo::take_permit(depot);
///     WebSocketUpgrade::new()
///         .upgrade(req, res, move |ws| async move {
///             let _held = permit; // released when the socket's task ends
///             let _ = ws;
///         })
///         .await
/// }
/// ```
pub fn take_permit(depot: &Depot) -> Option<Permit> {
    depot.get_typed::<HeldPermit>().ok().and_then(HeldPermit::take)
}
