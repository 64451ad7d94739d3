//! At most 2 uploads in flight per user, whatever their size or speed, stacked with 30 uploads
//! per hour: a concurrency limit (`Concurrency`, rate `2/60s`: 2 slots, each a lease of 60 s
//! renewed every 20 s while the upload runs) outside a rate limit, so a refused upload is not
//! charged to the hourly quota. A third upload while two run gets `503 Service Unavailable`
//! with a `Retry-After` of the earliest lease expiry; a finished (or aborted) upload frees its
//! slot at once. (A `ThrottleGroup` of the two decides them as one, with a 429.)
//!
//! An upload that fails on the server's side (the store fails: `500`) is refunded from the
//! hourly quota once the response is ready (`settle(Settle::refund_server_errors())`): users
//! are not charged for the service's failures. Its slot is freed like any other.
//!
//! Run: `cargo run -p traffik-poem-examples --bin concurrent_uploads`, then try the printed curl
//! lines from other terminals.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use poem::http::StatusCode;
use poem::listener::TcpListener;
use poem::web::Data;
use poem::{Body, Endpoint, EndpointExt, Route, Server, handler, post};
use tokio::sync::{Semaphore, mpsc};
use traffik::strategy::{Concurrency, FixedWindow};
use traffik::{Clock, Identity, InMemoryBackend, RequestView, Settle, SystemClock, Throttle, rate};
use traffik_poem::PoemThrottle;

const ADDR: &str = "127.0.0.1:3000";

/// The user, from a header (a stand-in for real authentication); anonymous uploads are refused
/// by the handler, so they are not limited here.
fn user(req: &RequestView<'_>) -> Identity {
    match req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
        Some(name) if !name.is_empty() => Identity::named(name),
        _ => Identity::Exempted,
    }
}

/// Where uploads are "stored": slowly, so that uploads overlap when tried by hand; in tests, an
/// upload says it has started and waits for the test to let it finish, or the store fails
/// while it is down.
#[derive(Clone)]
enum Store {
    Slow(Duration),
    /// The tests' store.
    #[cfg_attr(not(test), allow(dead_code))]
    Gated(mpsc::UnboundedSender<()>, Arc<Semaphore>),
    /// The tests' store that fails while the flag is set.
    #[cfg_attr(not(test), allow(dead_code))]
    Failing(Arc<AtomicBool>),
}

#[handler]
async fn upload(body: Body, store: Data<&Store>) -> poem::Result<String> {
    let bytes = body.into_bytes().await?;
    match *store {
        Store::Slow(pace) => tokio::time::sleep(*pace).await,
        Store::Gated(started, go) => {
            let _ = started.send(());
            if let Ok(permit) = go.acquire().await {
                permit.forget();
            }
        }
        Store::Failing(down) => {
            if down.load(Ordering::SeqCst) {
                return Err(poem::Error::from_string("the store failed", StatusCode::INTERNAL_SERVER_ERROR));
            }
        }
    }
    Ok(format!("stored {} bytes\n", bytes.len()))
}

/// The app; `clock` is the system clock when serving and a manual one in tests.
fn app(clock: impl Clock + Clone, store: Store) -> Result<impl Endpoint, traffik::Error> {
    let in_flight = Throttle::builder()
        .uid("uploads-in-flight")
        .rate(rate!("2/60s"))
        .backend(InMemoryBackend::new())
        .strategy(Concurrency)
        .identifier(user)
        .clock(clock.clone())
        .build()?;
    let hourly = Throttle::builder()
        .uid("uploads-per-hour")
        .rate(rate!("30/h"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .identifier(user)
        .clock(clock)
        .build()?;
    // The outermost middleware runs first: the slot, then the hourly quota, which gives a
    // failed upload's charge back once the response is ready.
    let uploads = post(upload)
        .with(PoemThrottle::new(hourly).settle(Settle::refund_server_errors()))
        .with(PoemThrottle::new(in_flight).refusal_status(StatusCode::SERVICE_UNAVAILABLE))
        .data(store);
    Ok(Route::new().at("/upload", uploads))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = app(SystemClock, Store::Slow(Duration::from_secs(10)))?;
    println!("traffik + poem: 2 concurrent uploads per user on http://{ADDR}");
    println!("  curl -i -H 'x-user: alice' --data-binary @/etc/hostname http://{ADDR}/upload   # run three at once:");
    println!("  (each takes 10 s; the third gets a 503 with Retry-After until one of the first two finishes)");
    Server::new(TcpListener::bind(ADDR)).run(app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::test::TestClient;

    #[tokio::test]
    async fn two_uploads_per_user_run_at_once_and_a_third_waits_for_one_of_them() {
        let (started_tx, mut started) = mpsc::unbounded_channel();
        let go = Arc::new(Semaphore::new(0));
        let store = Store::Gated(started_tx, Arc::clone(&go));
        let cli = TestClient::new(app(traffik::ManualClock::new(1_700_000_000_000_000), store).unwrap());
        let send = |user: &'static str| cli.post("/upload").header("x-user", user).body("data").send();
        // Two uploads start and hold both of alice's slots.
        let mut both = Box::pin(async { tokio::join!(send("alice"), send("alice")) });
        for _ in 0..2 {
            tokio::select! {
                _ = &mut both => panic!("the uploads cannot finish yet"),
                _ = started.recv() => {}
            }
        }
        let third = send("alice").await;
        third.assert_status(StatusCode::SERVICE_UNAVAILABLE);
        third.assert_header("retry-after", "60");
        go.add_permits(2);
        let (a, b) = both.await;
        a.assert_status_is_ok();
        b.assert_status_is_ok();
        // Their slots are free again; bob has slots of his own.
        go.add_permits(2);
        send("alice").await.assert_text("stored 4 bytes\n").await;
        send("bob").await.assert_status_is_ok();
    }

    #[tokio::test]
    async fn a_failed_upload_does_not_consume_the_hourly_quota() {
        let down = Arc::new(AtomicBool::new(true));
        let store = Store::Failing(Arc::clone(&down));
        // Time stands still: the hour never ends during the test.
        let cli = TestClient::new(app(traffik::ManualClock::new(1_700_000_000_000_000), store).unwrap());
        let send = || cli.post("/upload").header("x-user", "alice").body("data").send();
        // More failures than the hour allows uploads: each is refunded, none is refused.
        for _ in 0..40 {
            send().await.assert_status(StatusCode::INTERNAL_SERVER_ERROR);
        }
        // The store is back: the whole hourly quota is still there, and then it is spent.
        down.store(false, Ordering::SeqCst);
        for _ in 0..30 {
            send().await.assert_status_is_ok();
        }
        send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
        // Failures after the quota is spent are refused before they reach the store.
        down.store(true, Ordering::SeqCst);
        send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
    }
}
