//! Settling after the response, in both frameworks on real listeners: a Poem app and a Salvo
//! app built alike, whose routes are limited to 3 requests a minute and answer 500 to their
//! first 5 requests, then 200. With `settle(Settle::refund_server_errors())` (per route, in a
//! group, in the app-wide middleware) the failures leave the quota untouched; without it they
//! consume it. A bandwidth route reserves 50 of 100 units a minute per request and settles to
//! the body's size in bytes (a streamed body, of unknown length, keeps its reservation). A
//! backend that cannot refund leaves the response as the handler made it. Time stands still,
//! so no window passes during a test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use traffik::strategy::FixedWindow;
use traffik::{InMemoryBackend, ManualClock, Rate, RequestView, Settle, Throttle, ThrottleGroup, rate};
use traffik_property_tests::failing::Failing;

/// How many of a route's first requests fail.
const FAILURES: usize = 5;

/// A handler that fails its first [`FAILURES`] requests with a 500, then answers 200: with a
/// plain 500 response, or (`as_error`) with the framework's error (Poem: `Err`; Salvo: a
/// `StatusError` rendered for the catcher).
#[derive(Clone)]
struct Flaky {
    seen: Arc<AtomicUsize>,
    as_error: bool,
}

impl Flaky {
    fn new(as_error: bool) -> Self {
        Flaky { seen: Arc::new(AtomicUsize::new(0)), as_error }
    }

    /// Whether this request fails.
    fn fails(&self) -> bool {
        self.seen.fetch_add(1, Ordering::SeqCst) < FAILURES
    }
}

/// The length of the body a `/bytes?n=<len>` request asks for.
fn asked_len(query: Option<&str>) -> usize {
    query.and_then(|q| q.strip_prefix("n=")).and_then(|n| n.parse().ok()).unwrap_or(0)
}

/// A streamed body of `len` bytes, one byte a chunk: its length is not known up front.
fn chunks(len: usize) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> + Send + 'static {
    futures_util::stream::iter((0..len).map(|_| Ok(vec![b'x'])))
}

/// The throttles of one app, each on its own backend and a clock that stands still.
struct Throttles {
    refunded: Throttle,
    charged: Throttle,
    refunded_err: Throttle,
    charged_err: Throttle,
    group: ThrottleGroup,
    global: Throttle,
    bytes: Throttle,
    /// Bandwidth too, for a streamed body (of unknown length).
    streamed: Throttle,
    /// On a backend that decides but cannot refund: settling fails.
    unsettled: Throttle,
}

fn throttles(app: &str) -> Throttles {
    let clock = ManualClock::new(1_700_000_000_000_000);
    let build = |uid: &str, rate: Rate| {
        Throttle::builder()
            .uid(format!("{app}-{uid}"))
            .rate(rate)
            .backend(InMemoryBackend::new())
            .strategy(FixedWindow)
            .clock(clock.clone())
            .build()
            .unwrap()
    };
    Throttles {
        refunded: build("refunded", rate!("3/min")),
        charged: build("charged", rate!("3/min")),
        refunded_err: build("refunded-err", rate!("3/min")),
        charged_err: build("charged-err", rate!("3/min")),
        group: ThrottleGroup::new(
            format!("{app}-group"),
            [build("g-minute", rate!("3/min")), build("g-hour", rate!("10/h"))],
        )
        .unwrap(),
        global: build("global", rate!("3/min")),
        bytes: build("bytes", rate!("100/min")),
        streamed: build("streamed", rate!("100/min")),
        unsettled: Throttle::builder()
            .uid(format!("{app}-unsettled"))
            .rate(rate!("3/min"))
            .backend(Failing::switch())
            .strategy(FixedWindow)
            .clock(clock.clone())
            .build()
            .unwrap(),
    }
}

fn refund_5xx() -> Settle {
    Settle::refund_server_errors()
}

fn by_byte() -> Settle {
    Settle::by_body_size(1).unwrap()
}

mod poem_app {
    use poem::http::StatusCode;
    use poem::listener::{Acceptor, Listener, TcpListener};
    use poem::{Endpoint, EndpointExt, Request, Response, Route, Server, get, handler};
    use traffik_poem::{GroupExt, MiddlewareThrottle, PoemThrottle, ThrottleMiddleware};

    use super::*;

    impl Endpoint for Flaky {
        type Output = Response;

        async fn call(&self, _req: Request) -> poem::Result<Response> {
            match (self.fails(), self.as_error) {
                (false, _) => Ok(Response::builder().body("ok")),
                (true, false) => Ok(Response::builder().status(StatusCode::INTERNAL_SERVER_ERROR).body("failed")),
                (true, true) => Err(poem::Error::from_status(StatusCode::INTERNAL_SERVER_ERROR)),
            }
        }
    }

    #[handler]
    fn bytes(req: &Request) -> String {
        "x".repeat(asked_len(req.uri().query()))
    }

    #[handler]
    fn streamed(req: &Request) -> poem::Body {
        poem::Body::from_bytes_stream(chunks(asked_len(req.uri().query())))
    }

    pub(super) async fn serve(t: Throttles) -> SocketAddr {
        let app = Route::new()
            .at("/refunded", get(Flaky::new(false)).with(PoemThrottle::new(t.refunded).settle(refund_5xx())))
            .at("/charged", get(Flaky::new(false)).with(PoemThrottle::new(t.charged)))
            .at("/refunded-err", get(Flaky::new(true)).with(PoemThrottle::new(t.refunded_err).settle(refund_5xx())))
            .at("/charged-err", get(Flaky::new(true)).with(PoemThrottle::new(t.charged_err)))
            .at("/group", get(Flaky::new(false)).with(t.group.middleware().settle(refund_5xx())))
            .at(
                "/global",
                get(Flaky::new(true))
                    .with(ThrottleMiddleware::new([MiddlewareThrottle::new(t.global).settle(refund_5xx())])),
            )
            .at("/bytes", get(bytes).with(PoemThrottle::new(t.bytes).cost(50).settle(by_byte())))
            .at("/streamed", get(streamed).with(PoemThrottle::new(t.streamed).cost(50).settle(by_byte())))
            .at("/unsettled", get(Flaky::new(false)).with(PoemThrottle::new(t.unsettled).settle(refund_5xx())));
        let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        addr
    }
}

mod salvo_app {
    use salvo::prelude::*;
    use traffik_salvo::{GroupExt, MiddlewareThrottle, SalvoThrottle, ThrottleMiddleware};

    use super::*;

    #[async_trait]
    impl Handler for Flaky {
        async fn handle(&self, _req: &mut Request, _depot: &mut Depot, res: &mut Response, _ctrl: &mut FlowCtrl) {
            match (self.fails(), self.as_error) {
                (false, _) => res.render("ok"),
                (true, false) => {
                    res.status_code(StatusCode::INTERNAL_SERVER_ERROR);
                    res.render("failed");
                }
                (true, true) => res.render(StatusError::internal_server_error()),
            }
        }
    }

    #[handler]
    async fn bytes(req: &mut Request, res: &mut Response) {
        res.render("x".repeat(asked_len(req.uri().query())));
    }

    #[handler]
    async fn streamed(req: &mut Request, res: &mut Response) {
        res.stream(chunks(asked_len(req.uri().query())));
    }

    pub(super) async fn serve(t: Throttles) -> SocketAddr {
        let router = Router::new()
            .push(
                Router::with_path("refunded")
                    .hoop(SalvoThrottle::new(t.refunded).settle(refund_5xx()))
                    .get(Flaky::new(false)),
            )
            .push(Router::with_path("charged").hoop(SalvoThrottle::new(t.charged)).get(Flaky::new(false)))
            .push(
                Router::with_path("refunded-err")
                    .hoop(SalvoThrottle::new(t.refunded_err).settle(refund_5xx()))
                    .get(Flaky::new(true)),
            )
            .push(Router::with_path("charged-err").hoop(SalvoThrottle::new(t.charged_err)).get(Flaky::new(true)))
            .push(Router::with_path("group").hoop(t.group.hoop().settle(refund_5xx())).get(Flaky::new(false)))
            .push(
                Router::with_path("global")
                    .hoop(ThrottleMiddleware::new([MiddlewareThrottle::new(t.global).settle(refund_5xx())]))
                    .get(Flaky::new(true)),
            )
            .push(Router::with_path("bytes").hoop(SalvoThrottle::new(t.bytes).cost(50).settle(by_byte())).get(bytes))
            .push(
                Router::with_path("streamed")
                    .hoop(SalvoThrottle::new(t.streamed).cost(50).settle(by_byte()))
                    .get(streamed),
            )
            .push(
                Router::with_path("unsettled")
                    .hoop(SalvoThrottle::new(t.unsettled).settle(refund_5xx()))
                    .get(Flaky::new(false)),
            );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
        tokio::spawn(Server::new(acceptor).serve(router));
        addr
    }
}

/// The statuses of `n` requests to `path`, in order.
async fn statuses(client: &reqwest::Client, addr: SocketAddr, path: &str, n: usize) -> Vec<u16> {
    let mut seen = Vec::with_capacity(n);
    for _ in 0..n {
        seen.push(client.get(format!("http://{addr}{path}")).send().await.unwrap().status().as_u16());
    }
    seen
}

/// The table: a path and the statuses of its first 9 requests.
fn cases() -> Vec<(&'static str, &'static str, Vec<u16>)> {
    // The 5 failures are refunded: the next 3 succeed, the 4th is refused.
    let refunded = [vec![500; FAILURES], vec![200; 3], vec![429]].concat();
    // The failures consume the quota: 3 of them, then refusals (the handler is not called).
    let charged = [vec![500; 3], vec![429; 6]].concat();
    vec![
        ("refund_server_errors: a 500 response costs nothing", "/refunded", refunded.clone()),
        ("without settle, failures consume the quota", "/charged", charged.clone()),
        ("an error from the handler counts with its status", "/refunded-err", refunded.clone()),
        ("an error from the handler, without settle", "/charged-err", charged),
        ("a group refunds every member", "/group", refunded.clone()),
        ("the app-wide middleware settles too", "/global", refunded),
    ]
}

/// What is left on `throttle` for the test client (127.0.0.1), charging nothing.
async fn left(throttle: &Throttle) -> Option<u64> {
    let view = RequestView::empty().peer(Some(([127, 0, 0, 1], 1).into()));
    throttle.stat(&view).await.unwrap().into_limited().map(|s| s.remaining)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poem_and_salvo_settle_every_case_alike() {
    let apps =
        [("poem", poem_app::serve(throttles("poem")).await), ("salvo", salvo_app::serve(throttles("salvo")).await)];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for (framework, addr) in apps {
        for (case, path, want) in cases() {
            assert_eq!(statuses(&client, addr, path, want.len()).await, want, "{framework}: {case}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poem_and_salvo_settle_by_body_size_alike() {
    let (poem, salvo) = (throttles("poem"), throttles("salvo"));
    let poem_bytes = (poem.bytes.clone(), poem.streamed.clone());
    let salvo_bytes = (salvo.bytes.clone(), salvo.streamed.clone());
    let apps =
        [("poem", poem_app::serve(poem).await, poem_bytes), ("salvo", salvo_app::serve(salvo).await, salvo_bytes)];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for (framework, addr, (bytes, streamed)) in apps {
        let get = |n: usize| {
            let client = client.clone();
            async move { client.get(format!("http://{addr}/bytes?n={n}")).send().await.unwrap() }
        };
        assert_eq!(left(&bytes).await, Some(100), "{framework}: nothing charged yet");
        // 50 reserved, 10 bytes sent: 40 given back.
        let resp = get(10).await;
        assert_eq!((resp.status().as_u16(), resp.bytes().await.unwrap().len()), (200, 10), "{framework}");
        assert_eq!(left(&bytes).await, Some(90), "{framework}: a 10-byte response costs 10");
        // 50 reserved, 200 bytes sent: the excess is charged as far as the key can take it.
        let resp = get(200).await;
        assert_eq!((resp.status().as_u16(), resp.bytes().await.unwrap().len()), (200, 200), "{framework}");
        assert_eq!(left(&bytes).await, Some(0), "{framework}: the excess took what was left");
        // Nothing left for the next reservation.
        assert_eq!(get(1).await.status().as_u16(), 429, "{framework}");
        assert_eq!(left(&bytes).await, Some(0), "{framework}");
        // A streamed body's length is unknown: the reservation stands.
        let resp = client.get(format!("http://{addr}/streamed?n=10")).send().await.unwrap();
        assert_eq!((resp.status().as_u16(), resp.bytes().await.unwrap().len()), (200, 10), "{framework}");
        assert_eq!(left(&streamed).await, Some(50), "{framework}: a streamed response keeps its charge");
    }
}

/// The backend cannot refund: settling fails, is logged, and the response is the handler's,
/// untouched; the charge stands, so the failures consume the quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poem_and_salvo_answer_alike_when_settling_fails() {
    let apps =
        [("poem", poem_app::serve(throttles("poem")).await), ("salvo", salvo_app::serve(throttles("salvo")).await)];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for (framework, addr) in apps {
        let resp = client.get(format!("http://{addr}/unsettled")).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 500, "{framework}");
        assert_eq!(resp.text().await.unwrap(), "failed", "{framework}");
        assert_eq!(statuses(&client, addr, "/unsettled", 3).await, [500, 500, 429], "{framework}");
    }
}
