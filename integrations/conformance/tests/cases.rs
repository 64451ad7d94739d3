//! One table of cases, two frameworks: a Poem app and a Salvo app built alike are served on
//! 127.0.0.1, the same requests go to both through a real HTTP client (and a real WebSocket
//! client), and each answer must be what the table says: status, `Retry-After`, the limit
//! headers and the JSON body, which is the core's `ReplyBody`. So both integrations answer alike.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio_tungstenite::tungstenite::Message;
use traffik::functions::SyncFn;
use traffik::reply::ReplyBody;
use traffik::strategy::{FixedWindow, LeakyBucketWithQueue};
use traffik::{
    Context, ErrorPolicy, Identity, InMemoryBackend, ManualClock, Rate, RequestView, Throttle, ThrottleGroup,
    ThrottleRegistry, rate,
};
use traffik::{Headers, When};
use traffik_property_tests::failing::Failing;

/// The user an earlier middleware authenticated (here: from the `u` query parameter), stored
/// where each framework keeps such things (Poem: request extensions; Salvo: the depot).
#[derive(Clone, Debug)]
struct User(String);

fn user_from_query(query: Option<&str>) -> Option<User> {
    query?.split('&').find_map(|p| p.strip_prefix("u=")).map(|u| User(u.to_owned()))
}

/// Identifies a hit by the user the integration put in its context.
fn by_user(_req: &RequestView<'_>, ctx: &Context) -> Identity {
    ctx.get::<User>().map_or(Identity::Anonymous, |u| Identity::Named(u.0.clone()))
}

/// Keeps throttles alive for as long as the app that holds it (a registry only holds weak
/// references).
#[derive(Clone)]
struct KeepAlive(#[allow(dead_code)] Vec<Throttle>);

/// The throttles of one app (each app gets its own, on its own backend; time stands still at 0,
/// so every wait is exact).
struct Throttles {
    limited: Throttle,
    costly: Throttle,
    down: Throttle,
    app_headers: Throttle,
    outer: Throttle,
    inner: Throttle,
    group: ThrottleGroup,
    draft_group: ThrottleGroup,
    per_message: Throttle,
    per_message_down: Throttle,
    per_user: Throttle,
    group_per_user: ThrottleGroup,
    /// Throttles of the quotas registry: two that limit `/q-data`, one whose backend is down,
    /// one disabled.
    quotas: ThrottleRegistry,
    q_minute: Throttle,
    q_hour: Throttle,
    q_down: Throttle,
    q_off: Throttle,
    shadow: Throttle,
    shadow_route: Throttle,
    shadow_group: ThrottleGroup,
    shadow_delay: Throttle,
    per_message_shadow: Throttle,
}

fn throttles(app: &str) -> Throttles {
    let registry = ThrottleRegistry::new();
    let backend = InMemoryBackend::new();
    let clock = ManualClock::new(0);
    let build = |uid: &str, rate: Rate| {
        Throttle::builder()
            .uid(format!("{app}-{uid}"))
            .rate(rate)
            .backend(backend.clone())
            .strategy(FixedWindow)
            .clock(clock.clone())
            .headers(Headers::x_ratelimit(When::Always))
    };
    Throttles {
        limited: build("limited", rate!("2/h")).build().unwrap(),
        costly: build("costly", rate!("5/min")).build().unwrap(),
        down: build("down", rate!("5/min")).backend(Failing::down()).on_error(ErrorPolicy::raise()).build().unwrap(),
        app_headers: build("app-headers", rate!("10/min")).build().unwrap(),
        outer: build("outer", rate!("10/min")).build().unwrap(),
        inner: build("inner", rate!("3/min")).build().unwrap(),
        group: ThrottleGroup::new(
            format!("{app}-group"),
            [build("g-outer", rate!("10/min")).build().unwrap(), build("g-inner", rate!("3/min")).build().unwrap()],
        )
        .unwrap(),
        draft_group: ThrottleGroup::new(
            format!("{app}-draft"),
            [
                // The members' uids name them in the draft fields: the same in both apps.
                build("burst", rate!("2/s")).uid("burst").headers(Headers::ietf_draft10("burst")).build().unwrap(),
                build("hourly", rate!("100/h")).uid("hourly").headers(Headers::ietf_draft10("hourly")).build().unwrap(),
            ],
        )
        .unwrap(),
        per_message: build("per-message", rate!("1/h")).build().unwrap(),
        per_message_down: build("per-message-down", rate!("1/h"))
            .backend(Failing::down())
            .on_error(ErrorPolicy::raise())
            .build()
            .unwrap(),
        per_user: build("per-user", rate!("1/h")).identifier(SyncFn(by_user)).build().unwrap(),
        q_minute: build("q-minute", rate!("5/min")).registry(&registry).build().unwrap(),
        q_hour: build("q-hour", rate!("100/h")).registry(&registry).build().unwrap(),
        q_down: build("q-down", rate!("5/min"))
            .backend(Failing::down())
            .on_error(ErrorPolicy::raise())
            .registry(&registry)
            .build()
            .unwrap(),
        q_off: {
            let off = build("q-off", rate!("5/min")).registry(&registry).build().unwrap();
            off.disable();
            off
        },
        quotas: registry.clone(),
        group_per_user: ThrottleGroup::new(
            format!("{app}-group-per-user"),
            [
                build("gu-hourly", rate!("1/h")).identifier(SyncFn(by_user)).build().unwrap(),
                build("gu-daily", rate!("10/d")).identifier(SyncFn(by_user)).build().unwrap(),
            ],
        )
        .unwrap(),
        shadow: build("shadow", rate!("1/h")).shadow(true).build().unwrap(),
        shadow_route: build("shadow-route", rate!("1/h")).build().unwrap(),
        shadow_group: {
            let group = ThrottleGroup::new(
                format!("{app}-shadow-group"),
                [build("sg-hourly", rate!("1/h")).build().unwrap(), build("sg-daily", rate!("10/d")).build().unwrap()],
            )
            .unwrap();
            group.set_shadow(true);
            group
        },
        shadow_delay: build("shadow-delay", rate!("1/h"))
            .strategy(LeakyBucketWithQueue::new(1))
            .shadow(true)
            .build()
            .unwrap(),
        per_message_shadow: build("per-message-shadow", rate!("1/h")).shadow(true).build().unwrap(),
    }
}

/// What a handler reports of the decision its throttle recorded (the binding member's, for a
/// group): the outcome and whether shadow mode let it through.
fn decision_json(decision: Option<&traffik::Decision>) -> String {
    match decision {
        Some(d) => serde_json::json!({"outcome": d.outcome, "shadow": d.shadow}).to_string(),
        None => "null".to_owned(),
    }
}

mod poem_app {
    use poem::http::StatusCode;
    use poem::listener::{Acceptor, Listener, TcpListener};
    use poem::web::websocket::{Message, WebSocket};
    use poem::web::{Data, websocket::WebSocketStream};
    use std::sync::Arc;

    use poem::{Endpoint, EndpointExt, IntoResponse, Request, Response, Route, Server, get, handler};
    use traffik::Throttle;
    use traffik_poem::{GroupExt, PoemGroup, PoemThrottle, QuotasEndpoint, ThrottleExt, WsThrottle};

    use super::*;

    #[handler]
    fn ok() -> &'static str {
        "ok"
    }

    #[handler]
    fn maintenance() -> Response {
        Response::builder().status(StatusCode::SERVICE_UNAVAILABLE).header("retry-after", "120").body("maintenance")
    }

    #[handler]
    fn decided(req: &Request) -> Response {
        Response::builder().content_type("application/json").body(decision_json(traffik_poem::decision(req)))
    }

    #[derive(Clone)]
    struct PerMessage(Throttle);

    /// Echoes text messages, each charged to the throttle the route carries.
    #[handler]
    fn echo(ws: WebSocket, req: &Request, per_message: Data<&PerMessage>) -> impl IntoResponse {
        let limiter = WsThrottle::new(per_message.0.0.clone(), req);
        ws.on_upgrade(move |mut socket: WebSocketStream| async move {
            while let Some(Ok(Message::Text(text))) = socket.next().await {
                match limiter.hit(&mut socket, &Context::new()).await {
                    Ok(v) if v.is_allowed() => {
                        if socket.send(Message::text(text)).await.is_err() {
                            break;
                        }
                    }
                    Ok(v) if v.is_closed() => break,
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        })
    }

    /// An earlier middleware: puts the user in the request's extensions.
    async fn authenticate<E: Endpoint>(ep: Arc<E>, mut req: Request) -> poem::Result<Response> {
        if let Some(user) = user_from_query(req.uri().query()) {
            req.extensions_mut().insert(user);
        }
        Ok(ep.call(req).await?.into_response())
    }

    fn user_context(req: &Request) -> Context {
        match req.extensions().get::<User>() {
            Some(user) => Context::new().with(user.clone()),
            None => Context::new(),
        }
    }

    pub(super) async fn serve(t: Throttles) -> SocketAddr {
        let app = Route::new()
            .at("/limited", get(ok).with(t.limited.middleware()))
            .at("/costly", get(ok).with(PoemThrottle::new(t.costly).cost(10)))
            .at("/down", get(ok).with(t.down.middleware()))
            .at("/app-headers", get(maintenance).with(t.app_headers.middleware()))
            .at("/stacked", get(ok).with(t.inner.middleware()).with(t.outer.middleware()))
            .at("/group", get(ok).with(t.group.middleware()))
            .at("/draft", get(ok).with(t.draft_group.middleware()))
            .at("/ws", get(echo).data(PerMessage(t.per_message)))
            .at("/ws-down", get(echo).data(PerMessage(t.per_message_down)))
            .at("/per-user", get(ok).with(t.per_user.middleware().context(user_context)).around(authenticate))
            .at(
                "/group-per-user",
                get(ok).with(PoemGroup::new(t.group_per_user).context(user_context)).around(authenticate),
            )
            .at("/q-data", get(ok).with(t.q_minute.middleware()).with(t.q_hour.middleware()))
            .at("/quotas", get(QuotasEndpoint::new(t.quotas)).data(KeepAlive(vec![t.q_down, t.q_off])))
            .at("/shadow", get(decided).with(t.shadow.middleware()))
            .at("/shadow-route", get(decided).with(PoemThrottle::new(t.shadow_route).shadow(true)))
            .at("/shadow-group", get(decided).with(t.shadow_group.middleware()))
            .at("/shadow-delay", get(decided).with(t.shadow_delay.middleware()))
            .at("/ws-shadow", get(echo).data(PerMessage(t.per_message_shadow)));
        let acceptor = TcpListener::bind("127.0.0.1:0").into_acceptor().await.unwrap();
        let addr = acceptor.local_addr()[0].as_socket_addr().copied().unwrap();
        tokio::spawn(Server::new_with_acceptor(acceptor).run(app));
        addr
    }
}

mod salvo_app {
    use salvo::prelude::*;
    use salvo::websocket::{Message, WebSocketUpgrade};
    use traffik_salvo::{GroupExt, QuotasHandler, SalvoGroup, SalvoThrottle, ThrottleExt, WsThrottle};

    use super::*;

    #[handler]
    async fn ok() -> &'static str {
        "ok"
    }

    #[handler]
    async fn decided(depot: &mut Depot, res: &mut Response) {
        use traffik_salvo::DepotExt;
        res.headers_mut().insert("content-type", salvo::http::HeaderValue::from_static("application/json"));
        res.body(decision_json(depot.throttle_decision()));
    }

    #[handler]
    async fn maintenance(res: &mut Response) {
        res.status_code(StatusCode::SERVICE_UNAVAILABLE);
        res.headers_mut().insert("retry-after", salvo::http::HeaderValue::from_static("120"));
        res.render("maintenance");
    }

    /// Echoes text messages, each charged to the per-message throttle.
    struct Echo(WsThrottle);

    #[async_trait]
    impl Handler for Echo {
        async fn handle(&self, req: &mut Request, _: &mut Depot, res: &mut Response, _: &mut FlowCtrl) {
            let conn = self.0.connection(req);
            let upgraded = WebSocketUpgrade::new()
                .upgrade(req, res, move |mut ws| async move {
                    while let Some(Ok(msg)) = ws.recv().await {
                        let Ok(text) = msg.as_str().map(str::to_owned) else { continue };
                        let verdict = conn.hit_with(&mut ws, &Context::new()).await;
                        if verdict.is_closed() {
                            return;
                        }
                        if verdict.is_allowed() && ws.send(Message::text(text)).await.is_err() {
                            return;
                        }
                    }
                })
                .await;
            if let Err(e) = upgraded {
                res.render(e);
            }
        }
    }

    /// An earlier hoop: puts the user in the depot.
    #[handler]
    async fn authenticate(req: &mut Request, depot: &mut Depot) {
        if let Some(user) = user_from_query(req.uri().query()) {
            depot.insert_typed(user);
        }
    }

    fn user_context(_req: &Request, depot: &Depot) -> Context {
        match depot.get_typed::<User>() {
            Ok(user) => Context::new().with(user.clone()),
            Err(_) => Context::new(),
        }
    }

    #[async_trait]
    impl Handler for KeepAlive {
        async fn handle(&self, _: &mut Request, _: &mut Depot, _: &mut Response, _: &mut FlowCtrl) {}
    }

    pub(super) async fn serve(t: Throttles) -> SocketAddr {
        let router = Router::new()
            .push(Router::with_path("limited").hoop(t.limited.hoop()).get(ok))
            .push(Router::with_path("costly").hoop(SalvoThrottle::new(t.costly).cost(10)).get(ok))
            .push(Router::with_path("down").hoop(t.down.hoop()).get(ok))
            .push(Router::with_path("app-headers").hoop(t.app_headers.hoop()).get(maintenance))
            .push(Router::with_path("stacked").hoop(t.outer.hoop()).hoop(t.inner.hoop()).get(ok))
            .push(Router::with_path("group").hoop(t.group.hoop()).get(ok))
            .push(Router::with_path("draft").hoop(t.draft_group.hoop()).get(ok))
            .push(Router::with_path("ws").goal(Echo(WsThrottle::new(t.per_message))))
            .push(Router::with_path("ws-down").goal(Echo(WsThrottle::new(t.per_message_down))))
            .push(
                Router::with_path("per-user")
                    .hoop(authenticate)
                    .hoop(SalvoThrottle::new(t.per_user).context(user_context))
                    .get(ok),
            )
            .push(
                Router::with_path("group-per-user")
                    .hoop(authenticate)
                    .hoop(SalvoGroup::new(t.group_per_user).context(user_context))
                    .get(ok),
            )
            .push(Router::with_path("q-data").hoop(t.q_hour.hoop()).hoop(t.q_minute.hoop()).get(ok))
            .push(
                Router::with_path("quotas").hoop(KeepAlive(vec![t.q_down, t.q_off])).get(QuotasHandler::new(t.quotas)),
            )
            .push(Router::with_path("shadow").hoop(t.shadow.hoop()).get(decided))
            .push(Router::with_path("shadow-route").hoop(SalvoThrottle::new(t.shadow_route).shadow(true)).get(decided))
            .push(Router::with_path("shadow-group").hoop(t.shadow_group.hoop()).get(decided))
            .push(Router::with_path("shadow-delay").hoop(t.shadow_delay.hoop()).get(decided))
            .push(Router::with_path("ws-shadow").goal(Echo(WsThrottle::new(t.per_message_shadow))));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).unwrap();
        tokio::spawn(Server::new(acceptor).serve(router));
        addr
    }
}

/// What a client sees of one response.
#[derive(Debug, PartialEq)]
struct Seen {
    status: u16,
    retry_after: Option<String>,
    limit: Option<String>,
    remaining: Option<String>,
    /// The draft-10 fields, `RateLimit-Policy` and `RateLimit`.
    draft: Option<(String, String)>,
    /// The JSON body, for JSON responses.
    json: Option<Value>,
}

async fn get(client: &reqwest::Client, addr: SocketAddr, path: &str) -> Seen {
    let resp = client.get(format!("http://{addr}{path}")).send().await.unwrap();
    let header = |name: &str| resp.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
    let (retry_after, limit, remaining) =
        (header("retry-after"), header("x-ratelimit-limit"), header("x-ratelimit-remaining"));
    let draft = header("ratelimit-policy").zip(header("ratelimit"));
    let is_json = header("content-type").is_some_and(|c| c.starts_with("application/json"));
    let status = resp.status().as_u16();
    let json = if is_json { Some(resp.json().await.unwrap()) } else { None };
    Seen { status, retry_after, limit, remaining, draft, json }
}

fn seen(
    status: u16,
    retry_after: Option<&str>,
    limit: Option<&str>,
    remaining: Option<&str>,
    json: Option<Value>,
) -> Seen {
    Seen {
        status,
        retry_after: retry_after.map(str::to_owned),
        limit: limit.map(str::to_owned),
        remaining: remaining.map(str::to_owned),
        draft: None,
        json,
    }
}

fn body(b: &ReplyBody) -> Option<Value> {
    Some(serde_json::to_value(b).unwrap())
}

/// The table: a path, how many requests to send first, and what the next one must get.
fn cases() -> Vec<(&'static str, &'static str, usize, Seen)> {
    let rate_limited = |secs: u64| {
        body(&ReplyBody::RateLimited {
            message: format!("Too many requests. Retry in {secs} seconds."),
            retry_after_ms: secs * 1000,
        })
    };
    let rate_limited_one = || {
        body(&ReplyBody::RateLimited { message: "Too many requests. Retry in 1 second.".into(), retry_after_ms: 1000 })
    };
    let never = body(&ReplyBody::CostExceedsLimit {
        message: "This request costs 10 but the rate limit is 5/min; it can never be admitted, so retrying will not \
                  help."
            .into(),
        cost: 10,
        limit: Some(5),
        retry_after_ms: None,
    });
    vec![
        ("allowed: limit headers, never Retry-After", "/limited", 0, seen(200, None, Some("2"), Some("1"), None)),
        (
            "throttled: 429, Retry-After, the core's body",
            "/limited",
            1,
            seen(429, Some("3600"), Some("2"), Some("0"), rate_limited(3600)),
        ),
        ("a cost that never fits: 429 without Retry-After", "/costly", 0, seen(429, None, Some("5"), None, never)),
        (
            "the backend is down and the policy raises: 503",
            "/down",
            0,
            seen(503, None, None, None, body(&ReplyBody::unavailable())),
        ),
        (
            "the application's own Retry-After is kept",
            "/app-headers",
            0,
            seen(503, Some("120"), Some("10"), Some("9"), None),
        ),
        (
            "stacked: the inner throttle's 429 is not rewritten",
            "/stacked",
            3,
            seen(429, Some("60"), Some("3"), Some("0"), rate_limited(60)),
        ),
        (
            "a group answers with its binding member",
            "/group",
            3,
            seen(429, Some("60"), Some("3"), Some("0"), rate_limited(60)),
        ),
        (
            "a group's draft fields list every member",
            "/draft",
            0,
            Seen {
                draft: Some((
                    r#""burst";q=2;w=1, "hourly";q=100;w=3600"#.into(),
                    r#""burst";r=1;t=1, "hourly";r=99;t=3600"#.into(),
                )),
                ..seen(200, None, None, None, None)
            },
        ),
        (
            "refused, the draft fields still list every member, and nobody was charged",
            "/draft",
            1,
            Seen {
                draft: Some((
                    r#""burst";q=2;w=1, "hourly";q=100;w=3600"#.into(),
                    r#""burst";r=0;t=1, "hourly";r=98;t=3600"#.into(),
                )),
                ..seen(429, Some("1"), None, None, rate_limited_one())
            },
        ),
        // Every request comes from 127.0.0.1: only the user an earlier middleware stored tells
        // alice from bob.
        (
            "identity from earlier middleware: alice",
            "/per-user?u=alice",
            0,
            seen(200, None, Some("1"), Some("0"), None),
        ),
        (
            "identity from earlier middleware: alice again is refused",
            "/per-user?u=alice",
            0,
            seen(429, Some("3600"), Some("1"), Some("0"), rate_limited(3600)),
        ),
        (
            "identity from earlier middleware: bob has his own quota",
            "/per-user?u=bob",
            0,
            seen(200, None, Some("1"), Some("0"), None),
        ),
        (
            "a group's members see the context too: alice",
            "/group-per-user?u=alice",
            0,
            seen(200, None, Some("1"), Some("0"), None),
        ),
        (
            "a group's members see the context too: alice again is refused",
            "/group-per-user?u=alice",
            0,
            seen(429, Some("3600"), Some("1"), Some("0"), rate_limited(3600)),
        ),
        (
            "a group's members see the context too: bob",
            "/group-per-user?u=bob",
            0,
            seen(200, None, Some("1"), Some("0"), None),
        ),
        (
            "shadow mode: an allowed request is plain",
            "/shadow",
            0,
            seen(200, None, Some("1"), Some("0"), recorded("allowed", false)),
        ),
        (
            "shadow mode over the limit: 200, the true limit headers, no Retry-After, the throttled decision recorded",
            "/shadow",
            0,
            seen(200, None, Some("1"), Some("0"), recorded("throttled", true)),
        ),
        (
            "shadow mode for one route of an enforcing throttle",
            "/shadow-route",
            1,
            seen(200, None, Some("1"), Some("0"), recorded("throttled", true)),
        ),
        (
            "a group in shadow mode over the limit: 200, its binding member's decision recorded",
            "/shadow-group",
            1,
            seen(200, None, Some("1"), Some("0"), recorded("throttled", true)),
        ),
        (
            "shadow mode does not hold a delayed request",
            "/shadow-delay",
            1,
            seen(200, None, Some("1"), Some("0"), recorded("delayed", true)),
        ),
        (
            "shadow mode over the queue too",
            "/shadow-delay",
            0,
            seen(200, None, Some("1"), Some("0"), recorded("throttled", true)),
        ),
    ]
}

/// The JSON a `decided` handler answers with.
fn recorded(outcome: &str, shadow: bool) -> Option<Value> {
    Some(serde_json::json!({"outcome": outcome, "shadow": shadow}))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poem_and_salvo_answer_every_http_case_alike() {
    let apps =
        [("poem", poem_app::serve(throttles("poem")).await), ("salvo", salvo_app::serve(throttles("salvo")).await)];
    // A request held for the hour a delay asks (a shadow delay that was not let through) fails
    // here instead of hanging the test.
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(600)).build().unwrap();
    for (framework, addr) in apps {
        for (case, path, before, want) in cases() {
            for _ in 0..before {
                let _ = get(&client, addr, path).await;
            }
            let got = get(&client, addr, path).await;
            assert_eq!(got, want, "{framework}: {case}");
        }
    }
}

async fn next_message<S>(socket: &mut S) -> Message
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(30), socket.next()).await.unwrap().unwrap().unwrap();
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return msg;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poem_and_salvo_answer_every_websocket_case_alike() {
    let apps =
        [("poem", poem_app::serve(throttles("poem")).await), ("salvo", salvo_app::serve(throttles("salvo")).await)];
    let notice: Value = serde_json::from_str(
        &ReplyBody::RateLimited {
            message: "Too many requests. Retry in 3600 seconds.".into(),
            retry_after_ms: 3_600_000,
        }
        .to_notice_json(),
    )
    .unwrap();
    let unavailable: Value = serde_json::from_str(&ReplyBody::unavailable().to_notice_json()).unwrap();
    for (framework, addr) in apps {
        // Over the limit: the core's notice, and the socket stays open.
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await.unwrap();
        ws.send(Message::text("one")).await.unwrap();
        assert_eq!(next_message(&mut ws).await, Message::text("one"), "{framework}: echo");
        for _ in 0..2 {
            ws.send(Message::text("two")).await.unwrap();
            let Message::Text(text) = next_message(&mut ws).await else { panic!("{framework}: expected a notice") };
            assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), notice, "{framework}: notice");
        }
        // The rate limiter fails: the core's notice, then a 1011 close.
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws-down")).await.unwrap();
        ws.send(Message::text("one")).await.unwrap();
        let Message::Text(text) = next_message(&mut ws).await else { panic!("{framework}: expected a notice") };
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap(), unavailable, "{framework}: failure notice");
        let Message::Close(Some(frame)) = next_message(&mut ws).await else { panic!("{framework}: expected a close") };
        assert_eq!(u16::from(frame.code), 1011, "{framework}: close code");
        // Shadow mode: every message over the limit is still echoed, no notice is sent.
        let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws-shadow")).await.unwrap();
        for text in ["one", "two", "three"] {
            ws.send(Message::text(text)).await.unwrap();
            assert_eq!(next_message(&mut ws).await, Message::text(text), "{framework}: shadow echo");
        }
    }
}

/// "What are my quotas?" in both frameworks: after two requests to a route limited by two
/// throttles of a registry, the quotas endpoint lists both (in uid order, nothing charged by
/// asking), names the one whose backend is down, and leaves out the disabled one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poem_and_salvo_serve_the_callers_quotas_alike() {
    let apps =
        [("poem", poem_app::serve(throttles("poem")).await), ("salvo", salvo_app::serve(throttles("salvo")).await)];
    let client = reqwest::Client::builder().no_proxy().build().unwrap();
    for (framework, addr) in apps {
        for _ in 0..2 {
            assert_eq!(get(&client, addr, "/q-data").await.status, 200, "{framework}");
        }
        for _ in 0..2 {
            let got = get(&client, addr, "/quotas").await;
            assert_eq!(got.status, 200, "{framework}");
            let json = got.json.unwrap_or_else(|| panic!("{framework}: quotas are JSON"));
            let listed: Vec<(String, u64)> = json["quotas"]
                .as_array()
                .unwrap()
                .iter()
                .map(|q| (q["throttle"].as_str().unwrap().to_owned(), q["remaining"].as_u64().unwrap()))
                .collect();
            assert_eq!(
                listed,
                [(format!("{framework}-q-hour"), 98), (format!("{framework}-q-minute"), 3)],
                "{framework}: {json}"
            );
            assert_eq!(json["unavailable"], serde_json::json!([format!("{framework}-q-down")]), "{framework}");
            assert_eq!(json["quotas"][1]["rate"], "5/min", "{framework}: {json}");
        }
    }
}
