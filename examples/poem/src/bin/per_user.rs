//! Per-user identity with exemptions and tiers: the identifier names the caller from an API key
//! (an admin key is `Identity::Exempted`: never limited, no backend call), falls back to the
//! client IP for anonymous callers, and a rate function gives premium keys a larger allowance.
//!
//! Run: `cargo run -p traffik-poem-examples --bin per_user`, then try the printed curl lines
//! from another terminal.

use poem::listener::TcpListener;
use poem::web::Data;
use poem::{Endpoint, EndpointExt, Route, Server, get, handler};
use traffik::strategy::SlidingWindowCounter;
use traffik::{
    ClientIp, Clock, Context, Decision, Identity, InMemoryBackend, RequestView, SystemClock, Throttle, rate,
};
use traffik::{Headers, When};
use traffik_poem::ThrottleExt;

const ADDR: &str = "127.0.0.1:3000";

/// A stand-in for a user database: API key -> (user id, tier).
fn lookup(key: &str) -> Option<(&'static str, Tier)> {
    match key {
        "admin-key" => Some(("admin", Tier::Staff)),
        "alice-key" => Some(("alice", Tier::Premium)),
        "bob-key" => Some(("bob", Tier::Free)),
        _ => None,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    Staff,
    Premium,
    Free,
}

fn api_key<'a>(req: &RequestView<'a>) -> Option<&'a str> {
    req.headers().get("x-api-key").and_then(|v| v.to_str().ok())
}

/// Staff are exempted, known users are limited by name (on every device and IP), and anyone
/// else by IP address (the socket peer; forwarding headers are not believed).
fn identify(req: &RequestView<'_>) -> Identity {
    match api_key(req).and_then(lookup) {
        Some((_, Tier::Staff)) => Identity::Exempted,
        Some((user, _)) => Identity::named(user),
        None => ClientIp::new().identity(req),
    }
}

#[handler]
fn me(decision: Data<&Decision>) -> String {
    match (decision.remaining, decision.rate) {
        (Some(left), Some(rate)) => format!("{left} requests left of {rate}\n"),
        _ => "unlimited (exempted)\n".to_owned(),
    }
}

/// The app; `clock` is the system clock when serving and a manual one in tests.
fn app(clock: impl Clock) -> Result<impl Endpoint, traffik::Error> {
    let throttle = Throttle::builder()
        .uid("per-user-api")
        .rate_fn(|req: &RequestView<'_>, _: &Context| match api_key(req).and_then(lookup) {
            Some((_, Tier::Premium)) => rate!("100/min"),
            _ => rate!("5/min"),
        })
        .backend(InMemoryBackend::new())
        .strategy(SlidingWindowCounter)
        .identifier(identify)
        .clock(clock)
        .headers(Headers::x_ratelimit(When::Always))
        .build()?;
    Ok(Route::new().at("/me", get(me).with(throttle.middleware())))
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = app(SystemClock)?;
    println!("traffik + poem per-user limits on http://{ADDR}");
    println!("  curl -i -H 'x-api-key: bob-key' http://{ADDR}/me     # free: 5/min for bob, from any IP");
    println!("  curl -i -H 'x-api-key: alice-key' http://{ADDR}/me   # premium: 100/min");
    println!("  curl -i -H 'x-api-key: admin-key' http://{ADDR}/me   # exempted: never limited, no headers");
    println!("  curl -i http://{ADDR}/me                             # anonymous: 5/min per IP");
    Server::new(TcpListener::bind(ADDR)).run(app).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use poem::http::StatusCode;
    use poem::test::TestClient;

    #[tokio::test]
    async fn users_tiers_and_exemptions() {
        let cli = TestClient::new(app(traffik::ManualClock::new(0)).unwrap());
        for _ in 0..5 {
            cli.get("/me").header("x-api-key", "bob-key").send().await.assert_status_is_ok();
        }
        cli.get("/me").header("x-api-key", "bob-key").send().await.assert_status(StatusCode::TOO_MANY_REQUESTS);
        cli.get("/me").header("x-api-key", "alice-key").send().await.assert_text("99 requests left of 100/min\n").await;
        for _ in 0..10 {
            let resp = cli.get("/me").header("x-api-key", "admin-key").send().await;
            resp.assert_header_is_not_exist("x-ratelimit-limit");
            resp.assert_text("unlimited (exempted)\n").await;
        }
        cli.get("/me").send().await.assert_text("4 requests left of 5/min\n").await;
    }
}
