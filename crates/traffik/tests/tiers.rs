//! Rates per tier: the tier comes from the request and its context, never from the key.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context as TaskContext, Poll, Waker};

use http::{HeaderMap, Method, Uri};
use traffik::sources::Tiers;
use traffik::strategy::FixedWindow;
use traffik::{ConfigError, Context, Error, InMemoryBackend, ManualClock, RequestView, Throttle, rate};

fn now_or_never<F: Future>(f: F) -> F::Output {
    match pin!(f).as_mut().poll(&mut TaskContext::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => panic!("an in-memory hit waited"),
    }
}

/// The plan an authentication layer put in the context.
#[derive(Clone, Debug)]
struct Plan(&'static str);

fn tiers() -> Tiers<&'static str> {
    Tiers::builder(|_req: &RequestView<'_>, ctx: &Context| ctx.get::<Plan>().map(|p| p.0))
        .tier("free", rate!("2/min"))
        .tier("pro", rate!("5/min"))
        .tier("enterprise", rate!("20/min"))
        .default_tier("free")
        .build()
        .unwrap()
}

fn throttle() -> Throttle {
    Throttle::builder()
        .uid("tiers")
        .rate_source(tiers().into())
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(ManualClock::new(1_000_000))
        .build()
        .unwrap()
}

/// Hits until the first refusal (at most 100), returning how many were admitted.
fn admitted(throttle: &Throttle, req: &RequestView<'_>, ctx: &Context) -> usize {
    (0..100).take_while(|_| now_or_never(throttle.hit_with(req, ctx)).unwrap().is_allowed()).count()
}

fn peer(last: u8) -> Option<SocketAddr> {
    Some(SocketAddr::from(([192, 0, 2, last], 1000)))
}

#[test]
fn each_tier_gets_its_rate_and_an_unknown_or_missing_tier_the_default() {
    let t = throttle();
    let cases = [(Some("free"), 2), (Some("pro"), 5), (Some("enterprise"), 20), (Some("platinum"), 2), (None, 2)];
    for (i, (plan, want)) in cases.into_iter().enumerate() {
        let view = RequestView::empty().peer(peer(i as u8 + 1));
        let ctx = plan.map_or_else(Context::new, |p| Context::new().with(Plan(p)));
        assert_eq!(admitted(&t, &view, &ctx), want, "plan {plan:?}");
    }
}

/// The original library read the tier back out of the storage key, so a request to
/// `/tier:enterprise:/x` got the enterprise limit. Here a path (or any scope or identity a
/// client controls) never chooses a tier.
#[test]
fn a_path_that_names_a_tier_does_not_choose_it() {
    let t = throttle();
    let (method, uri, headers) = (Method::GET, Uri::from_static("/tier:enterprise:/x"), HeaderMap::new());
    let view = RequestView::new(&method, &uri, &headers).peer(peer(9));
    let ctx = Context::new().scope("/tier:enterprise:/x").scope("tier:enterprise:");
    assert_eq!(admitted(&t, &view, &ctx), 2, "the default tier's 2, not the enterprise 20");
}

/// Moving to a tier with the same period keeps the window's usage (the rate-change rule of
/// the fixed window): 2 used on free, then 3 more on pro (5 in all), not 5 more.
#[test]
fn a_client_whose_tier_changes_keeps_its_usage() {
    let t = throttle();
    let view = RequestView::empty().peer(peer(20));
    assert_eq!(admitted(&t, &view, &Context::new().with(Plan("free"))), 2);
    let pro = Context::new().with(Plan("pro"));
    assert_eq!(admitted(&t, &view, &pro), 3);
    // And back down: the 5 used are over the free limit, so nothing more this minute.
    assert_eq!(admitted(&t, &view, &Context::new()), 0);
}

#[test]
fn bad_tier_sets_are_typed_errors() {
    let resolve = |_: &RequestView<'_>, _: &Context| None::<&'static str>;
    let no_default = Tiers::builder(resolve).tier("free", rate!("2/min")).build();
    assert!(matches!(no_default, Err(Error::Config(ConfigError::NoDefaultTier))), "{no_default:?}");
    let unknown_default = Tiers::builder(resolve).tier("free", rate!("2/min")).default_tier("pro").build();
    assert!(
        matches!(unknown_default, Err(Error::Config(ConfigError::UnknownDefaultTier { ref tier })) if tier == "\"pro\""),
        "{unknown_default:?}"
    );
    let twice =
        Tiers::builder(resolve).tier("free", rate!("2/min")).tier("free", rate!("3/min")).default_tier("free").build();
    assert!(matches!(twice, Err(Error::Config(ConfigError::DuplicateTier { .. }))), "{twice:?}");
}

/// `stat` names the tier a request falls in, and says when it got the default tier's rate.
#[test]
fn stat_names_the_tier_and_whether_it_was_the_default() {
    let t = throttle();
    let view = RequestView::empty().peer(peer(30));
    let source = |ctx: &Context| {
        let stat = now_or_never(t.stat_with(&view, ctx)).unwrap().into_limited().unwrap();
        (stat.limit, stat.metadata["source"].clone())
    };
    let (limit, pro) = source(&Context::new().with(Plan("pro")));
    assert_eq!(limit, 5);
    assert_eq!(pro, serde_json::json!({"kind": "tiers", "tier": "\"pro\"", "default": false}));
    let (limit, unknown) = source(&Context::new().with(Plan("platinum")));
    assert_eq!(limit, 2);
    assert_eq!(unknown, serde_json::json!({"kind": "tiers", "tier": "\"free\"", "default": true}));
}
