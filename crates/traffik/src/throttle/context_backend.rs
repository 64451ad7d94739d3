//! The task-local backend of throttles built with `backend_from_context` (multi-tenant apps
//! set it per request in a middleware).

use std::future::Future;
use std::sync::Arc;

use crate::backend::SharedBackend;

tokio::task_local! {
    static CONTEXT_BACKEND: SharedBackend;
}

/// Runs `fut` with `backend` as the backend of every throttle built with
/// [`backend_from_context`](crate::ThrottleBuilder::backend_from_context) (multi-tenant apps set it in
/// a middleware).
pub async fn with_backend<F: Future>(backend: SharedBackend, fut: F) -> F::Output {
    CONTEXT_BACKEND.scope(backend, fut).await
}

/// The backend set by [`with_backend`] for the current task, if any.
pub fn context_backend() -> Option<SharedBackend> {
    CONTEXT_BACKEND.try_with(Arc::clone).ok()
}
