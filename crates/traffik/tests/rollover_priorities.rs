//! The quota with rollover and the priorities through whole throttles: what `stat` shows at the
//! start of a period, and a level resolved from a header (an unknown one gets the default).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};
use std::time::Duration;

use http::{HeaderMap, Method, Uri};
use traffik::priority::{Priorities, PriorityError, Reserve};
use traffik::strategy::QuotaRollover;
use traffik::{Context, InMemoryBackend, ManualClock, RequestView, Throttle, rate};

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory call waited"),
    }
}

fn peer() -> Option<SocketAddr> {
    Some(SocketAddr::from(([192, 0, 2, 5], 1000)))
}

#[test]
fn stat_shows_the_rollover_from_the_first_microsecond_of_a_period() {
    let clock = ManualClock::new(1_796_256_000_000_000); // a minute boundary
    let t = Throttle::builder()
        .uid("rollover-stat")
        .rate(rate!("10/min"))
        .backend(InMemoryBackend::new())
        .strategy(QuotaRollover::builder().max_rollover(6).build().unwrap())
        .clock(clock.clone())
        .build()
        .unwrap();
    let req = RequestView::empty().peer(peer());
    let meta = |t: &Throttle| now_or_never(t.stat(&req)).unwrap().into_limited().unwrap().metadata;
    // A new client: 10 + 6.
    assert_eq!(meta(&t)["allowance"], 16);
    for _ in 0..13 {
        assert!(now_or_never(t.hit(&req)).unwrap().is_allowed());
    }
    // 3 left unused: the next minute shows them before any hit.
    clock.advance(Duration::from_secs(60));
    let m = meta(&t);
    assert_eq!((m["rollover"].as_u64(), m["used"].as_u64()), (Some(3), Some(0)));
    let stat = now_or_never(t.stat(&req)).unwrap().into_limited().unwrap();
    assert_eq!(stat.remaining, 13);
    // An idle minute rolls over its whole unused quota, up to the cap.
    clock.advance(Duration::from_secs(120));
    assert_eq!(meta(&t)["rollover"], 6);
}

#[test]
fn the_level_comes_from_a_header_and_an_unknown_one_gets_the_default() {
    let levels = Priorities::builder(rate!("10/min"), |req: &RequestView<'_>, _ctx: &Context| {
        req.headers().get("x-priority").and_then(|v| v.to_str().ok()).map(str::to_owned)
    })
    .level("high".to_owned(), Reserve::Units(4))
    .level("low".to_owned(), Reserve::None)
    .default_level("low".to_owned())
    .build()
    .unwrap();
    let t = Throttle::builder()
        .uid("priority-header")
        .rate_source(levels.clone().into())
        .backend(InMemoryBackend::new())
        .strategy(levels.strategy())
        .clock(ManualClock::new(1_796_256_000_000_000))
        .build()
        .unwrap();
    let uri = Uri::from_static("/");
    let hits = |value: Option<&str>, n: usize| {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert("x-priority", v.parse().unwrap());
        }
        let req = RequestView::new(&Method::GET, &uri, &headers).peer(peer());
        (0..n).filter(|_| now_or_never(t.hit(&req)).unwrap().is_allowed()).count()
    };
    // "urgent" is no level: the default (low) ceiling of 6 applies, shared with plain hits.
    assert_eq!(hits(Some("urgent"), 4), 4);
    assert_eq!(hits(None, 10), 2);
    assert_eq!(hits(Some("high"), 10), 4);
    // `stat` names the level a request falls in.
    let level = |value: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-priority", value.parse().unwrap());
        let req = RequestView::new(&Method::GET, &uri, &headers).peer(peer());
        now_or_never(t.stat(&req)).unwrap().into_limited().unwrap().metadata["source"].clone()
    };
    assert_eq!(level("high"), serde_json::json!({"kind": "priorities", "level": "\"high\"", "default": false}));
    assert_eq!(level("urgent"), serde_json::json!({"kind": "priorities", "level": "\"low\"", "default": true}));
    let err = Priorities::builder(rate!("10/min"), |_: &RequestView<'_>, _: &Context| None::<u8>)
        .level(1, Reserve::Percent(150))
        .level(2, Reserve::None)
        .default_level(2)
        .build()
        .unwrap_err();
    assert_eq!(err, PriorityError::PercentAbove100 { level: "1".into(), percent: 150 });
}
