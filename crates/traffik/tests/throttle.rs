//! The throttle pipeline end to end on the in-memory backend: builder, identity, cost and rate,
//! registry and rules, headers, runtime updates.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method, Uri};
use traffik::strategy::{FixedWindow, Gcra, LeakyBucketWithQueue, SlidingWindowLog, TokenBucket};
use traffik::{
    ClientIp, ConfigError, Context, Error, Identity, InMemoryBackend, ManualClock, Outcome, Rate, RequestView, Rule,
    Skip, Throttle, ThrottleRegistry, TrustedProxies, rate, with_backend,
};
use traffik::{Headers, When};

fn peer(ip: &str) -> Option<SocketAddr> {
    Some(SocketAddr::new(ip.parse().unwrap(), 40000))
}

fn view(ip: &str) -> RequestView<'static> {
    RequestView::empty().peer(peer(ip))
}

fn clock() -> ManualClock {
    ManualClock::new(1_700_000_000_000_000)
}

#[tokio::test]
async fn admits_the_limit_then_throttles_with_an_exact_retry_after() {
    let clock = clock();
    let t = Throttle::builder()
        .uid("basic")
        .rate("3/10s")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock.clone())
        .build()
        .unwrap();
    let req = view("192.0.2.1");
    for left in [2, 1, 0] {
        let d = t.hit(&req).await.unwrap();
        assert_eq!((d.outcome, d.remaining), (Outcome::Allowed, Some(left)));
    }
    let d = t.hit(&req).await.unwrap();
    assert_eq!(d.outcome, Outcome::Throttled);
    assert_eq!(d.retry_after_secs(), Some(10));
    clock.advance(d.wait);
    assert!(t.hit(&req).await.unwrap().is_allowed());
    // Another client has its own bucket.
    assert!(t.hit(&view("192.0.2.2")).await.unwrap().is_allowed());
}

#[tokio::test]
async fn invalid_settings_are_typed_errors() {
    let bad_rate =
        Throttle::builder().uid("r").rate("5/fortnight").backend(InMemoryBackend::new()).strategy(FixedWindow).build();
    assert!(matches!(bad_rate, Err(Error::Rate(_))), "{bad_rate:?}");
    let bad_uid =
        Throttle::builder().uid("").rate(rate!("1/s")).backend(InMemoryBackend::new()).strategy(FixedWindow).build();
    assert!(matches!(bad_uid, Err(Error::Config(ConfigError::UidLength { len: 0, max: 128 }))), "{bad_uid:?}");
}

#[tokio::test]
async fn spoofed_forwarding_headers_do_not_change_an_untrusted_clients_bucket() {
    let t = Throttle::builder()
        .uid("spoof")
        .rate(rate!("2/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let uri = Uri::from_static("/");
    let mut allowed = 0;
    for i in 0..10 {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(&format!("10.9.9.{i}")).unwrap());
        headers.insert("x-real-ip", HeaderValue::from_str(&format!("10.8.8.{i}")).unwrap());
        headers.insert("forwarded", HeaderValue::from_str(&format!("for=10.7.7.{i}")).unwrap());
        let req = RequestView::new(&Method::GET, &uri, &headers).peer(peer("203.0.113.9"));
        if t.hit(&req).await.unwrap().is_allowed() {
            allowed += 1;
        }
    }
    assert_eq!(allowed, 2, "forged headers must not mint fresh buckets");
}

#[tokio::test]
async fn trusted_proxies_forward_distinct_clients() {
    let t = Throttle::builder()
        .uid("proxied")
        .rate(rate!("1/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .identifier(ClientIp::new().trusted_proxies(TrustedProxies::new(["127.0.0.1"]).unwrap()))
        .build()
        .unwrap();
    let uri = Uri::from_static("/");
    for client in ["198.51.100.1", "198.51.100.2"] {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_str(client).unwrap());
        let req = RequestView::new(&Method::GET, &uri, &headers).peer(peer("127.0.0.1"));
        assert!(t.hit(&req).await.unwrap().is_allowed(), "{client} first hit");
        assert!(t.hit(&req).await.unwrap().is_throttled(), "{client} second hit");
    }
}

#[tokio::test]
async fn exempted_identities_and_anonymous_clients() {
    let backend = InMemoryBackend::new();
    let t = Throttle::builder()
        .uid("exempt")
        .rate(rate!("1/min"))
        .backend(backend.clone())
        .strategy(FixedWindow)
        .identifier(|req: &RequestView<'_>| match req.headers().get("x-user").and_then(|v| v.to_str().ok()) {
            Some("admin") => Identity::Exempted,
            Some(user) => Identity::named(user),
            None => Identity::Anonymous,
        })
        .build()
        .unwrap();
    let uri = Uri::from_static("/");
    let mut admin = HeaderMap::new();
    admin.insert("x-user", HeaderValue::from_static("admin"));
    for _ in 0..5 {
        let d = t.hit(&RequestView::new(&Method::GET, &uri, &admin)).await.unwrap();
        assert_eq!(d.outcome, Outcome::Skipped(Skip::Exempted));
    }
    assert!(backend.is_empty(), "exempted hits never touch the backend");
    // All anonymous requests share one bucket.
    assert!(t.hit(&RequestView::empty()).await.unwrap().is_allowed());
    assert!(t.hit(&RequestView::empty()).await.unwrap().is_throttled());
}

#[tokio::test]
async fn cost_functions_overrides_and_never() {
    let t = Throttle::builder()
        .uid("cost")
        .rate(rate!("10/min"))
        .backend(InMemoryBackend::new())
        .strategy(SlidingWindowLog)
        .cost_fn(|req: &RequestView<'_>, _: &Context| if req.method() == Method::POST { 4 } else { 1 })
        .build()
        .unwrap();
    let uri = Uri::from_static("/upload");
    let headers = HeaderMap::new();
    let post = RequestView::new(&Method::POST, &uri, &headers).peer(peer("192.0.2.7"));
    assert_eq!(t.hit(&post).await.unwrap().remaining, Some(6));
    assert_eq!(t.hit_with(&post, &Context::new().cost(5)).await.unwrap().remaining, Some(1));
    let zero = t.hit_with(&post, &Context::new().cost(0)).await.unwrap();
    assert_eq!(zero.outcome, Outcome::Skipped(Skip::ZeroCost));
    let never = t.hit_with(&post, &Context::new().cost(11)).await.unwrap();
    assert_eq!(never.outcome, Outcome::Never);
    assert_eq!(never.retry_after_secs(), None, "no bogus Retry-After for a cost that cannot fit");
    assert_eq!(never.remaining, None, "nothing was read or consumed, so no remaining count is claimed");
    assert_eq!(t.hit(&post).await.unwrap().outcome, Outcome::Throttled);
}

#[tokio::test]
async fn async_rate_function_by_tenant_tier() {
    let t = Throttle::builder()
        .uid("tiers")
        .rate_async(|req: &RequestView<'_>, _: &Context| {
            let premium = req.headers().contains_key("x-premium");
            async move { if premium { rate!("5/min") } else { rate!("1/min") } }
        })
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let uri = Uri::from_static("/");
    let mut premium = HeaderMap::new();
    premium.insert("x-premium", HeaderValue::from_static("1"));
    let p = RequestView::new(&Method::GET, &uri, &premium).peer(peer("192.0.2.10"));
    let free = view("192.0.2.11");
    let mut n = 0;
    while t.hit(&p).await.unwrap().is_allowed() {
        n += 1;
    }
    assert_eq!(n, 5);
    assert!(t.hit(&free).await.unwrap().is_allowed());
    assert!(t.hit(&free).await.unwrap().is_throttled());
}

#[tokio::test]
async fn min_wait_floors_only_denied_hits() {
    let t = Throttle::builder()
        .uid("minwait")
        .rate(rate!("1/s"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .min_wait(Duration::from_secs(30))
        .build()
        .unwrap();
    let req = view("192.0.2.12");
    assert_eq!(t.hit(&req).await.unwrap().wait, Duration::ZERO);
    assert_eq!(t.hit(&req).await.unwrap().wait, Duration::from_secs(30));
}

#[tokio::test]
async fn shaping_delays_then_rejects() {
    let t = Throttle::builder()
        .uid("shape")
        .rate(rate!("2/s"))
        .backend(InMemoryBackend::new())
        .strategy(LeakyBucketWithQueue::new(1))
        .clock(clock())
        .build()
        .unwrap();
    let req = view("192.0.2.13");
    let outcomes: Vec<_> = [(); 4].iter().map(|_| ()).collect();
    let mut seen = Vec::new();
    for _ in outcomes {
        let d = t.hit(&req).await.unwrap();
        seen.push((d.outcome, d.wait));
    }
    assert_eq!(
        seen,
        vec![
            (Outcome::Allowed, Duration::ZERO),
            (Outcome::Allowed, Duration::ZERO),
            (Outcome::Delayed, Duration::from_millis(500)),
            (Outcome::Throttled, Duration::from_millis(500)),
        ]
    );
}

/// A throttle joins no registry unless asked, so the same app builds twice in one process;
/// the process-wide registry is one call away and keeps its duplicate check.
#[test]
fn throttles_join_no_registry_unless_asked() {
    let make = || {
        Throttle::builder()
            .uid("built-twice")
            .rate(rate!("1/min"))
            .backend(InMemoryBackend::new())
            .strategy(Gcra::new())
    };
    let first = make().build().unwrap();
    let second = make().build().unwrap();
    assert!(!traffik::GLOBAL_REGISTRY.exists("built-twice"));
    let global = || make().uid("built-twice-global").registry(&traffik::GLOBAL_REGISTRY).build();
    let joined = global().unwrap();
    assert!(traffik::GLOBAL_REGISTRY.exists("built-twice-global"));
    assert!(matches!(global(), Err(Error::DuplicateUid(uid)) if uid == "built-twice-global"));
    let undone = make().uid("built-twice-undone").registry(&traffik::GLOBAL_REGISTRY).no_registry().build().unwrap();
    assert!(!traffik::GLOBAL_REGISTRY.exists("built-twice-undone"), "no_registry undoes registry");
    drop((first, second, joined, undone));
}

#[tokio::test]
async fn registry_rejects_duplicates_forgets_dropped_and_toggles() {
    let registry = ThrottleRegistry::new();
    let make = |uid: &str| {
        Throttle::builder()
            .uid(uid)
            .rate(rate!("1/min"))
            .backend(InMemoryBackend::new())
            .strategy(Gcra::new())
            .registry(&registry)
            .build()
    };
    let a = make("a").unwrap();
    assert!(matches!(make("a"), Err(Error::DuplicateUid(uid)) if uid == "a"));
    assert!(registry.exists("a"));
    drop(a);
    assert!(!registry.exists("a"), "dropped throttles leave the registry");
    let a = make("a").unwrap();
    let b = make("b").unwrap();
    assert_eq!(registry.uids(), vec!["a".to_owned(), "b".to_owned()]);
    registry.disable_all();
    assert!(a.is_disabled() && b.is_disabled());
    let d = a.hit(&view("192.0.2.20")).await.unwrap();
    assert_eq!(d.outcome, Outcome::Skipped(Skip::Disabled));
    registry.enable_all();
    assert!(registry.disable("b"));
    assert!(!a.is_disabled() && b.is_disabled());
    assert!(!registry.enable("missing"));
    assert!(matches!(registry.add_rules("missing", []), Err(Error::UnknownUid(_))));
    registry.add_rules("a", [Rule::bypass().path("/health").unwrap()]).unwrap();
    assert_eq!(registry.get_rules("a").len(), 1);
    registry.clear();
    assert!(!registry.exists("a"));
}

#[tokio::test]
async fn rules_gate_and_bypass() {
    let t = Throttle::builder()
        .uid("rules")
        .rate(rate!("1/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .rules([
            Rule::gate().path("/api/*/users").unwrap().methods([Method::GET]),
            Rule::bypass().predicate(|r: &RequestView<'_>, _: &Context| r.headers().contains_key("x-internal")),
        ])
        .build()
        .unwrap();
    let headers = HeaderMap::new();
    let hit = |path: &'static str, method: Method| {
        let t = t.clone();
        let headers = headers.clone();
        async move {
            let uri = Uri::from_static(path);
            let req = RequestView::new(&method, &uri, &headers).peer(peer("192.0.2.30"));
            t.hit(&req).await.unwrap().outcome
        }
    };
    assert_eq!(hit("/api/v1/users/9", Method::GET).await, Outcome::Skipped(Skip::Rules));
    assert_eq!(hit("/api/v1/users", Method::POST).await, Outcome::Skipped(Skip::Rules));
    assert_eq!(hit("/api/v1/users", Method::GET).await, Outcome::Allowed);
    assert_eq!(hit("/api/v2/users", Method::GET).await, Outcome::Throttled);
    let mut internal = HeaderMap::new();
    internal.insert("x-internal", HeaderValue::from_static("1"));
    let uri = Uri::from_static("/api/v1/users");
    let req = RequestView::new(&Method::GET, &uri, &internal).peer(peer("192.0.2.30"));
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Skipped(Skip::Rules));
}

#[tokio::test]
async fn runtime_updates_take_effect_on_the_next_hit() {
    let t = Throttle::builder()
        .uid("updates")
        .rate(rate!("1/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let req = view("192.0.2.40");
    assert!(t.hit(&req).await.unwrap().is_allowed());
    assert!(t.hit(&req).await.unwrap().is_throttled());
    t.update_rate(rate!("3/min"));
    assert_eq!(t.rate(), Some(rate!("3/min")));
    assert!(t.hit(&req).await.unwrap().is_allowed());
    t.update_strategy(TokenBucket::with_burst(1));
    assert!(t.hit(&req).await.unwrap().is_allowed(), "a new strategy starts from fresh state");
    t.update_backend(InMemoryBackend::new());
    t.update_cost(traffik::Cost::Fixed(2));
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Never, "cost 2 never fits a burst of 1");
    t.update_identifier(|_: &RequestView<'_>| Identity::Exempted);
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Skipped(Skip::Exempted));
    t.update_headers(Headers::x_ratelimit(When::Always));
    assert_eq!(t.headers().names().count(), 3);
    assert!(!t.has_throttled_handler());
    t.update_throttled_handler(Custom("custom"));
    assert_eq!(t.throttled_handler::<Custom>().map(|h| h.0), Some("custom"));
    assert!(t.throttled_handler::<Other>().is_none(), "another integration's type is not returned");
    assert!(t.has_throttled_handler());
}

/// Stand-ins for two integrations' handler types.
struct Custom(&'static str);
impl traffik::reply::RefusalHandler for Custom {}
struct Other;
impl traffik::reply::RefusalHandler for Other {}

#[tokio::test]
async fn stat_reads_without_consuming_and_serializes() {
    let t = Throttle::builder()
        .uid("stat")
        .rate(rate!("4/min"))
        .backend(InMemoryBackend::new())
        .strategy(TokenBucket::new())
        .clock(clock())
        .build()
        .unwrap();
    let req = view("192.0.2.50");
    let _ = t.hit_with(&req, &Context::new().cost(3)).await.unwrap();
    for _ in 0..3 {
        let s = t.stat(&req).await.unwrap().into_limited().unwrap();
        assert_eq!(s.remaining, 1);
        assert_eq!(s.wait(), Duration::ZERO);
        assert!(s.admissible);
    }
    let s = t.stat_with(&req, &Context::new().cost(3)).await.unwrap().into_limited().unwrap();
    assert_eq!(s.wait(), Duration::from_secs(30), "two more tokens at 15 s each");
    let json = serde_json::to_value(&s).unwrap();
    assert_eq!(json["rate"], "4/min");
    assert_eq!(json["remaining"], 1);
    assert_eq!(json["strategy"], "tb", "one strategy name, as the handle's: {json}");
    assert!(json["metadata"].get("strategy").is_none(), "the name is not repeated in the metadata: {json}");
    let back: traffik::Stat = serde_json::from_value(json).unwrap();
    assert_eq!(back.key, s.key);
    assert!(!t.check_with(&req, &Context::new().cost(2)).await.unwrap().is_allowed());
    assert!(t.check_with(&req, &Context::new().cost(1)).await.unwrap().is_allowed());
    assert!(t.check_with(&req, &Context::new().cost(1)).await.unwrap().is_allowed(), "check consumes nothing");
}

#[tokio::test]
async fn context_resolved_backend_per_tenant() {
    let t = Throttle::builder()
        .uid("tenant")
        .rate(rate!("1/min"))
        .backend_from_context()
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let req = view("192.0.2.60");
    assert!(matches!(t.hit(&req).await, Err(Error::NoBackendInContext(_))));
    let tenant_a: traffik::SharedBackend = Arc::new(InMemoryBackend::new());
    let tenant_b: traffik::SharedBackend = Arc::new(InMemoryBackend::new());
    assert!(with_backend(tenant_a.clone(), t.hit(&req)).await.unwrap().is_allowed());
    assert!(with_backend(tenant_a, t.hit(&req)).await.unwrap().is_throttled());
    assert!(with_backend(tenant_b, t.hit(&req)).await.unwrap().is_allowed(), "each tenant has its own state");
}

#[tokio::test]
async fn scopes_and_hashed_identities_make_safe_distinct_keys() {
    let t = Throttle::builder()
        .uid("ws")
        .rate(rate!("1/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .identifier(|req: &RequestView<'_>| {
            Identity::Bytes(req.headers().get("x-id").map(|v| v.as_bytes().to_vec()).unwrap_or_default())
        })
        .hash_identities(true)
        .build()
        .unwrap();
    let uri = Uri::from_static("/");
    let weird = ["{tag}".to_owned(), "with space".into(), "x".repeat(10_000), "ünïcødé".into(), "a:b:c".into()];
    for id in &weird {
        let mut headers = HeaderMap::new();
        headers.insert("x-id", HeaderValue::from_bytes(id.as_bytes()).unwrap());
        let req = RequestView::new(&Method::GET, &uri, &headers);
        let d = t.hit_with(&req, &Context::new().scope("room 1")).await.unwrap();
        assert!(d.is_allowed(), "{id:.20}");
        let key = d.key.unwrap();
        assert!(key.as_str().len() < 100, "{key}");
        assert!(!key.as_str().contains(['{', '}', ' ', '\n']), "{key}");
        assert!(!key.as_str().contains(id.as_str()), "raw identity stored: {key}");
        assert!(t.hit_with(&req, &Context::new().scope("room 2")).await.unwrap().is_allowed(), "scopes are separate");
        assert!(t.hit_with(&req, &Context::new().scope("room 1")).await.unwrap().is_throttled());
    }
}

#[test]
fn sixty_four_tasks_through_the_throttle_admit_exactly_the_limit() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    for (name, strategy) in [
        ("fw", traffik::StrategyHandle::new(FixedWindow)),
        ("swl", SlidingWindowLog.into()),
        ("gcra", Gcra::with_tolerance(Duration::from_secs(1)).into()),
    ] {
        let t = Throttle::builder()
            .uid(format!("concurrency-{name}"))
            .rate(rate!("100/min"))
            .backend(InMemoryBackend::new())
            .strategy(strategy)
            .clock(clock())
            .build()
            .unwrap();
        let admitted = Arc::new(AtomicU64::new(0));
        rt.block_on(async {
            let tasks: Vec<_> = (0..64)
                .map(|_| {
                    let t = t.clone();
                    let admitted = Arc::clone(&admitted);
                    tokio::spawn(async move {
                        for _ in 0..5 {
                            if t.hit(&view("192.0.2.70")).await.unwrap().is_allowed() {
                                admitted.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        });
        let expected = if name == "gcra" { 1 + 1_000_000 / 600_000 } else { 100 };
        assert_eq!(admitted.load(Ordering::Relaxed), expected, "{name}");
    }
}

#[test]
fn hits_and_stats_work_outside_a_tokio_runtime() {
    // A minimal executor: the in-memory path never waits, so polling once completes it.
    fn run<F: std::future::Future>(f: F) -> F::Output {
        let mut f = std::pin::pin!(f);
        match f.as_mut().poll(&mut std::task::Context::from_waker(std::task::Waker::noop())) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the in-memory path waited"),
        }
    }
    let t = Throttle::builder()
        .uid("no-runtime")
        .rate(rate!("1/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let req = view("192.0.2.80");
    assert!(run(t.hit(&req)).unwrap().is_allowed());
    let stat = run(t.stat(&req)).unwrap().into_limited().unwrap();
    assert_eq!(stat.remaining, 0);
    assert!(run(t.hit(&req)).unwrap().is_throttled());
}

/// `hit` on the common configuration takes a shortcut (concrete types, a per-thread copy of the
/// configuration); `hit_with` always takes the general path. Both must agree on keys and share
/// state, and the shortcut must follow every runtime update.
#[tokio::test]
async fn the_plain_hit_shortcut_agrees_with_the_general_path() {
    let clock = clock();
    let t = Throttle::builder()
        .uid("shortcut")
        .rate("4/10s")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .identifier(ClientIp::new().ipv6_prefix(48))
        .clock(clock.clone())
        .build()
        .unwrap();
    let general = Context::new();
    for ip in ["192.0.2.7", "2001:db8:1:2::9", "::ffff:198.51.100.3"] {
        let req = view(ip);
        let fast = t.hit(&req).await.unwrap();
        let slow = t.hit_with(&req, &general).await.unwrap();
        assert_eq!(fast.key, slow.key, "{ip}: one key on both paths");
        assert_eq!((fast.remaining, slow.remaining), (Some(3), Some(2)), "{ip}: one bucket on both paths");
        assert!(t.hit(&req).await.unwrap().is_allowed());
        assert!(t.hit_with(&req, &general).await.unwrap().is_allowed());
        assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Throttled);
        assert_eq!(t.hit_with(&req, &general).await.unwrap().outcome, Outcome::Throttled);
    }
    // Clients in one /48 share a bucket on both paths.
    assert_eq!(t.hit(&view("2001:db8:1:ffff::1")).await.unwrap().outcome, Outcome::Throttled);
    let anonymous = RequestView::empty();
    let fast = t.hit(&anonymous).await.unwrap();
    assert_eq!(fast.key, t.hit_with(&anonymous, &general).await.unwrap().key);

    // Runtime updates reach the shortcut at once.
    let req = view("203.0.113.5");
    for _ in 0..4 {
        assert!(t.hit(&req).await.unwrap().is_allowed());
    }
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Throttled);
    t.update_rate(rate!("6/10s"));
    assert!(t.hit(&req).await.unwrap().is_allowed(), "the raised limit applies to the next plain hit");
    t.update_min_wait(Duration::from_secs(30));
    t.update_rate(rate!("5/10s"));
    let d = t.hit(&req).await.unwrap();
    assert_eq!((d.outcome, d.wait), (Outcome::Throttled, Duration::from_secs(30)));
    t.disable();
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Skipped(Skip::Disabled));
    t.enable();
    // A custom identifier leaves the shortcut; the general path keeps the same state.
    t.update_identifier(|req: &RequestView<'_>| match req.peer_addr() {
        Some(addr) => Identity::Ip(addr.ip()),
        None => Identity::Anonymous,
    });
    assert_eq!(t.hit(&req).await.unwrap().outcome, Outcome::Throttled);
    clock.advance(Duration::from_secs(10));
    assert!(t.hit(&req).await.unwrap().is_allowed());
}

/// A backend error on the shortcut goes through the error policy like any other.
#[tokio::test]
async fn the_plain_hit_shortcut_applies_the_error_policy() {
    let t = Throttle::builder()
        .uid("shortcut-full")
        .rate("5/s")
        .backend(
            InMemoryBackend::builder().shards(1).max_keys(1).eviction(traffik::backend::Eviction::RejectNew).build(),
        )
        .strategy(FixedWindow)
        .clock(clock())
        .on_error(traffik::ErrorPolicy::allow())
        .build()
        .unwrap();
    assert!(t.hit(&view("192.0.2.1")).await.unwrap().is_allowed());
    let d = t.hit(&view("192.0.2.2")).await.unwrap();
    assert_eq!(d.source, traffik::Source::ErrorPolicy, "{d:?}");
    assert_eq!(t.incidents().failed_open, 1);
}

/// The observed defect: in a Tokio runtime without a timer driver `hit` worked and `stat`
/// panicked (it always asked for a timeout). The in-memory backend answers without awaiting,
/// so neither needs a timer.
#[test]
fn stat_and_check_work_in_a_runtime_without_timers() {
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let t = Throttle::builder()
        .uid("no-timer")
        .rate(rate!("5/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .build()
        .unwrap();
    let req = RequestView::empty().peer(Some(([192, 0, 2, 77], 1).into()));
    rt.block_on(async {
        assert!(t.hit(&req).await.unwrap().is_allowed());
        let stat = t.stat(&req).await.unwrap().into_limited().unwrap();
        assert_eq!(stat.remaining, 4);
        assert!(t.check(&req).await.unwrap().is_allowed());
        let group = traffik::ThrottleGroup::new("no-timer-group", [t.clone()]).unwrap();
        assert!(group.hit(&req).await.unwrap().is_allowed());
        assert_eq!(group.stat(&req).await.unwrap()[0].limited().unwrap().remaining, 4);
    });
}

/// A partly configured builder is a template: clone it, finish each copy.
#[tokio::test]
async fn a_builder_is_a_template() {
    let template = Throttle::builder()
        .rate(rate!("2/min"))
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .headers(Headers::x_ratelimit(When::Always));
    let a = template.clone().uid("template-a").build().unwrap();
    let b = template.uid("template-b").rate(rate!("5/min")).build().unwrap();
    let req = RequestView::empty().peer(Some(([192, 0, 2, 60], 1).into()));
    assert_eq!(a.hit(&req).await.unwrap().remaining, Some(1));
    assert_eq!(b.hit(&req).await.unwrap().remaining, Some(4), "its own uid and rate, the template's backend");
    assert_eq!((a.headers().names().count(), b.headers().names().count()), (3, 3));
}

/// "What are my quotas?": every throttle of the registry that limits the request, in uid
/// order, with what it has left; asking charges nothing, and throttles whose rules pass the
/// request by, or that are disabled, are not listed.
#[tokio::test]
async fn quotas_list_what_limits_the_caller() {
    let registry = ThrottleRegistry::new();
    let make = |uid: &str, rate: Rate| {
        Throttle::builder()
            .uid(uid)
            .rate(rate)
            .backend(InMemoryBackend::new())
            .strategy(FixedWindow)
            .registry(&registry)
    };
    let minute = make("minute", rate!("5/min")).build().unwrap();
    let hour = make("hour", rate!("100/h")).build().unwrap();
    let api_only = make("api-only", rate!("5/min")).rules([Rule::gate().path("/api/**").unwrap()]).build().unwrap();
    let off = make("off", rate!("5/min")).build().unwrap();
    off.disable();
    let (method, uri, headers) = (Method::GET, Uri::from_static("/web/page"), HeaderMap::new());
    let req = RequestView::new(&method, &uri, &headers).peer(peer("192.0.2.80"));
    for t in [&minute, &hour, &minute] {
        assert!(t.hit(&req).await.unwrap().is_allowed());
    }
    for _ in 0..2 {
        let q = registry.quotas(&req, &Context::new()).await;
        let listed: Vec<(&str, u64)> = q.quotas.iter().map(|q| (q.throttle.as_str(), q.remaining)).collect();
        assert_eq!(listed, [("hour", 99), ("minute", 3)]);
        assert!(q.unavailable.is_empty());
    }
    let json = serde_json::to_value(registry.quotas(&req, &Context::new()).await).unwrap();
    assert_eq!(json["quotas"][1]["throttle"], "minute");
    assert_eq!(json["quotas"][1]["remaining"], 3, "each snapshot names its throttle: {json}");
    drop((api_only, off));
}

/// `Throttle::hit` answers a small, `Send` future (a few words: the general path is boxed only
/// when it is taken), which completes once and then stays pending.
#[tokio::test]
async fn a_hit_is_a_small_send_future_on_every_path() {
    use std::future::Future;
    use std::task::{Context as TaskContext, Poll, Waker};
    fn send<T: Send>(_: &T) {}
    let t = Throttle::builder()
        .uid("small-future")
        .rate("1/min")
        .backend(InMemoryBackend::new())
        .strategy(FixedWindow)
        .clock(clock())
        .build()
        .unwrap();
    let req = view("192.0.2.77");
    let hit = t.hit(&req);
    send(&hit);
    assert!(std::mem::size_of_val(&hit) <= 4 * std::mem::size_of::<usize>(), "{}", std::mem::size_of_val(&hit));
    let mut hit = std::pin::pin!(hit);
    let mut cx = TaskContext::from_waker(Waker::noop());
    assert!(matches!(hit.as_mut().poll(&mut cx), Poll::Ready(Ok(ref d)) if d.is_allowed()));
    assert!(hit.as_mut().poll(&mut cx).is_pending(), "completed once");
    // The general path (a backend that is awaited): the same future type, and the same answer.
    let general = Throttle::builder()
        .uid("small-future-general")
        .rate("1/min")
        .backend(traffik_property_tests::failing::Failing::first(0))
        .strategy(FixedWindow)
        .clock(clock())
        .build()
        .unwrap();
    assert!(general.hit(&req).await.unwrap().is_allowed());
    assert!(general.hit(&req).await.unwrap().is_throttled());
}
