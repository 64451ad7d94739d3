//! Rates that depend on who asks, when, and how the service is doing: a rate per plan, office
//! hours, and an adaptive limit.
//!
//! ```sh
//! cargo run -p traffik --example rate_sources
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic, missing_docs)]

use std::future::Future;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use traffik::sources::{Adaptive, Schedule, Tiers};
use traffik::strategy::FixedWindow;
use traffik::{Context, InMemoryBackend, ManualClock, RequestView, Throttle, rate};

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory hit waited"),
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Plan {
    Free,
    Pro,
}

fn main() -> Result<(), traffik::Error> {
    // A rate per plan; the plan is what an authentication layer put in the context.
    let tiers = Tiers::builder(|_req: &RequestView<'_>, ctx: &Context| ctx.get::<Plan>().cloned())
        .tier(Plan::Free, rate!("3/min"))
        .tier(Plan::Pro, rate!("10/min"))
        .default_tier(Plan::Free)
        .build()?;
    let clock = ManualClock::new(1_796_288_400_000_000); // 2026-12-03 09:00 UTC
    let per_plan = Throttle::builder()
        .uid("per-plan")
        .rate_source(tiers.into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()?;
    for (who, ctx) in [
        ("anonymous", Context::new()),
        ("free", Context::new().with(Plan::Free)),
        ("pro", Context::new().with(Plan::Pro)),
    ] {
        let view = RequestView::empty().peer(Some(([192, 0, 2, who.len() as u8], 1000).into()));
        let admitted = (0..20).filter(|_| now_or_never(per_plan.hit_with(&view, &ctx)).unwrap().is_allowed()).count();
        let stat = now_or_never(per_plan.stat_with(&view, &ctx))?.into_limited();
        let tier = stat.map(|s| s.metadata["source"].to_string()).unwrap_or_default();
        println!("{who:>9}: {admitted} of 20 admitted this minute; stat says {tier}");
    }

    // Office hours in New York get a lower rate than the night.
    let schedule = Schedule::builder(rate!("300/min"))
        .window("09:00", "17:00", rate!("100/min"))?
        .zone("America/New_York")?
        .clock(clock.clone())
        .build();
    for (label, at) in [("04:00 New York", 1_796_288_400u64), ("09:30 New York", 1_796_308_200)] {
        clock.set_us(at * 1_000_000);
        println!("{label}: {}", schedule.rate_for(&RequestView::empty(), &Context::new()));
    }

    // A limit that follows the service's load: halved after a slow second, then recovering.
    let adaptive = Adaptive::builder(rate!("100/s")).increase(0.25)?.clock(clock.clone()).build();
    adaptive.observe_latency(std::time::Duration::from_millis(900), std::time::Duration::from_millis(200));
    for second in 1..=3 {
        clock.advance(std::time::Duration::from_secs(1));
        println!("adaptive after {second} s: {} (factor {:.2})", adaptive.rate(), adaptive.factor());
    }

    // The same controller fed by observed responses (what the Poem and Salvo `ObserveLoad`
    // middleware do per request): 1 of 4 responses failed, above a share of 0.2.
    let observed = Adaptive::builder(rate!("100/s")).max_error_share(0.2)?.clock(clock.clone()).build();
    for status in [200, 200, 503, 200] {
        observed.begin().finish(status);
    }
    clock.advance(std::time::Duration::from_secs(1));
    println!("observed after 1 of 4 failed: {} (factor {:.2})", observed.rate(), observed.factor());
    Ok(())
}
