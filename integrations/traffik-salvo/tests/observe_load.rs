//! `ObserveLoad`: the responses of the handlers after the hoop drive an adaptive limit.
//! Scripted on a manual clock (the handlers move it), so no result depends on how fast the
//! machine is. The same scenario as `traffik-poem`'s `tests/observe_load.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Waker};
use std::time::Duration;

use common::get;
use salvo::http::StatusCode;
use salvo::prelude::*;
use traffik::sources::Adaptive;
use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, ManualClock, RequestView, Throttle, rate};
use traffik_salvo::{ObserveLoad, SalvoThrottle};

const SECOND: u64 = 1_000_000;
const PEER: &str = "198.51.100.1:5000";

/// Answers after moving the clock by `took`, with `status`; or never, when `hang`.
struct Scripted {
    clock: ManualClock,
    took: Duration,
    status: StatusCode,
    hang: bool,
}

#[async_trait]
impl Handler for Scripted {
    async fn handle(&self, _: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
        if self.hang {
            std::future::pending::<()>().await;
        }
        self.clock.advance(self.took);
        res.status_code(self.status);
    }
}

fn route(path: &str, clock: &ManualClock, took: u64, status: StatusCode, hang: bool) -> Router {
    let clock = clock.clone();
    Router::with_path(path).get(Scripted { clock, took: Duration::from_millis(took), status, hang })
}

#[tokio::test]
async fn slow_failed_and_abandoned_responses_cut_the_limit_and_stat_shows_it() {
    let clock = ManualClock::new(0);
    let load = Adaptive::builder(rate!("100/min"))
        .clock(clock.clone())
        .latency_target(Duration::from_millis(100))
        .max_error_share(0.4)
        .unwrap()
        .build();
    let throttle = Throttle::builder()
        .uid("observed")
        .rate_source(load.clone().into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let router = Router::new()
        .hoop(SalvoThrottle::new(throttle.clone()))
        .hoop(ObserveLoad::new(load.clone()))
        .push(route("ok", &clock, 0, StatusCode::OK, false))
        .push(route("slow", &clock, 300, StatusCode::OK, false))
        .push(route("fail", &clock, 0, StatusCode::INTERNAL_SERVER_ERROR, false))
        .push(route("hang", &clock, 0, StatusCode::OK, true));
    let service = Service::new(router);
    let limit = || load.rate().limit();

    for _ in 0..3 {
        assert_eq!(get(&service, "/ok", PEER).await.status_code, Some(StatusCode::OK));
    }
    clock.set_us(SECOND);
    assert_eq!(limit(), 100);
    assert_eq!(get(&service, "/slow", PEER).await.status_code, Some(StatusCode::OK));
    clock.set_us(2 * SECOND);
    assert_eq!(limit(), 50);
    assert_eq!(get(&service, "/fail", PEER).await.status_code, Some(StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(get(&service, "/ok", PEER).await.status_code, Some(StatusCode::OK));
    clock.set_us(3 * SECOND);
    assert_eq!(limit(), 25);
    {
        let mut pending = pin!(get(&service, "/hang", PEER));
        assert!(pending.as_mut().poll(&mut TaskContext::from_waker(Waker::noop())).is_pending());
    }
    clock.set_us(4 * SECOND);
    assert_eq!(limit(), 12);

    let stat = throttle.stat(&RequestView::empty()).await.unwrap().into_limited().unwrap();
    assert_eq!(stat.limit, 12);
    assert_eq!(stat.metadata["source"]["factor"], serde_json::json!(0.125));
}

/// Requests the throttle refuses never reach an `ObserveLoad` hooped after it.
#[tokio::test]
async fn refused_requests_are_not_observed_after_the_throttle() {
    let clock = ManualClock::new(0);
    let load = Adaptive::builder(rate!("2/min"))
        .clock(clock.clone())
        .latency_target(Duration::from_millis(100))
        .max_slow_share(0.5)
        .unwrap()
        .build();
    let throttle = Throttle::builder()
        .uid("observed-refusals")
        .rate(rate!("1/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let router = Router::new().hoop(SalvoThrottle::new(throttle)).hoop(ObserveLoad::new(load.clone())).push(route(
        "slow",
        &clock,
        300,
        StatusCode::OK,
        false,
    ));
    let service = Service::new(router);
    assert_eq!(get(&service, "/slow", PEER).await.status_code, Some(StatusCode::OK));
    for _ in 0..10 {
        assert_eq!(get(&service, "/slow", PEER).await.status_code, Some(StatusCode::TOO_MANY_REQUESTS));
    }
    clock.set_us(SECOND);
    assert_eq!(load.rate().limit(), 1);
}
