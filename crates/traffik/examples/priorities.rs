//! Priority with reserved capacity: interactive requests keep a share of the capacity that a
//! batch flood cannot touch, and both count in one window per client.
//!
//! ```sh
//! cargo run -p traffik --example priorities
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use http::{HeaderMap, Method, Uri};
use traffik::priority::{Priorities, Reserve};
use traffik::{Context, InMemoryBackend, ManualClock, RequestView, Throttle, rate};

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory call waited"),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Lane {
    Interactive,
    Normal,
    Batch,
}

fn main() -> Result<(), traffik::Error> {
    // The lane comes from a header; a request without one (or with an unknown one) is batch.
    let lanes = Priorities::builder(rate!("100/min"), |req: &RequestView<'_>, _ctx: &Context| {
        match req.headers().get("x-priority")?.to_str().ok()? {
            "interactive" => Some(Lane::Interactive),
            "normal" => Some(Lane::Normal),
            _ => None,
        }
    })
    .level(Lane::Interactive, Reserve::Units(20))
    .level(Lane::Normal, Reserve::Percent(30))
    .level(Lane::Batch, Reserve::None)
    .default_level(Lane::Batch)
    .build()?;
    let throttle = Throttle::builder()
        .uid("api")
        .rate_source(lanes.clone().into())
        .backend(InMemoryBackend::new())
        .strategy(lanes.strategy())
        .clock(ManualClock::new(1_796_256_000_000_000))
        .build()?;
    let with = |lane: &str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-priority", lane.parse().unwrap());
        headers
    };
    let (batch, normal, interactive) = (HeaderMap::new(), with("normal"), with("interactive"));
    let peer = Some(([192, 0, 2, 9], 1000).into());
    let uri = Uri::from_static("/reports");
    let count = |headers: &HeaderMap, tries: usize| {
        let req = RequestView::new(&Method::GET, &uri, headers).peer(peer);
        (0..tries).filter(|_| now_or_never(throttle.hit(&req)).unwrap().is_allowed()).count()
    };
    println!("batch flood: {} of 500 admitted (ceiling {:?})", count(&batch, 500), lanes.ceiling_of(&Lane::Batch));
    println!("normal after the flood: {} of 50 admitted", count(&normal, 50));
    println!("interactive after both: {} of 50 admitted", count(&interactive, 50));
    let req = RequestView::new(&Method::GET, &uri, &batch).peer(peer);
    let stat = now_or_never(throttle.stat(&req))?.into_limited().expect("limited");
    println!("batch stat: {}", serde_json::Value::Object(stat.metadata));
    Ok(())
}
