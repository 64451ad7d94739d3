//! TLS. With `--features tls`: decisions over a `rediss://` connection to a real TLS
//! redis-server, and a server certificate nobody trusts is a typed connection error, never a
//! panic or a silent plain-text fallback. Without it: a `rediss://` URL is a typed error.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Input};
use traffik::{Backend, BackendError, Key, Rate, StrategyHandle};
use traffik_redis::RedisBackend;
#[cfg(feature = "tls")]
use traffik_redis::redis::{self, TlsCertificates};
#[cfg(feature = "tls")]
use traffik_test_support::redis_tls_server;

fn op<'a>(key: &'a Key, strategy: &'a StrategyHandle) -> Operation<'a> {
    Operation {
        key,
        strategy,
        input: Input { now_us: 0, rate: Rate::per_millis(3, 60_000).unwrap(), cost: 1 },
        mode: Mode::Consume,
    }
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn decisions_over_tls_with_a_private_ca_are_exact() {
    let server = redis_tls_server();
    let url = server.url.clone();
    let ca = server.ca_pem.clone();
    let backend = RedisBackend::builder()
        .factory(move || {
            let (url, ca) = (url.clone(), ca.clone());
            async move {
                let client = redis::Client::build_with_tls(
                    url.as_str(),
                    TlsCertificates { client_tls: None, root_cert: Some(ca) },
                )?;
                client.get_multiplexed_async_connection().await
            }
        })
        .namespace("tls")
        .build()
        .unwrap();
    backend.ready().await.unwrap();
    let strategy = StrategyHandle::new(FixedWindow);
    let key = Key::builder("tls").part(b"client").build();
    let mut admitted = 0;
    for _ in 0..5 {
        if backend.decide(op(&key, &strategy)).await.unwrap().kind == traffik::strategy::VerdictKind::Admit {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 3, "3/min admits exactly 3 of 5 over TLS");

    // The state really lives on this server: visible over its plain-text port too.
    let plain = redis::Client::open(server.plain_url.as_str()).unwrap();
    let mut conn = plain.get_multiplexed_async_connection().await.unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg("tls:*").query_async(&mut conn).await.unwrap();
    assert_eq!(keys.len(), 1, "{keys:?}");
}

#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_server_certificate_is_a_typed_error() {
    let server = redis_tls_server();
    // The platform's roots do not include the test's certificate authority.
    let backend =
        RedisBackend::builder().url(server.url.as_str()).connection_timeout(Duration::from_secs(2)).build().unwrap();
    let strategy = StrategyHandle::new(FixedWindow);
    let key = Key::builder("tls").part(b"client").build();
    match backend.decide(op(&key, &strategy)).await {
        Err(e @ BackendError::Connection { .. }) => {
            let text = format!("{e} {:?}", std::error::Error::source(&e));
            assert!(text.to_lowercase().contains("certificate"), "should name the certificate problem: {text}");
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[cfg(not(feature = "tls"))]
#[tokio::test]
async fn without_the_feature_a_tls_url_is_a_typed_error() {
    let strategy = StrategyHandle::new(FixedWindow);
    let key = Key::builder("tls").part(b"client").build();
    let outcome = match RedisBackend::builder()
        .url("rediss://127.0.0.1:1/")
        .connection_timeout(Duration::from_millis(500))
        .build()
    {
        Err(e) => format!("{e}"),
        Ok(backend) => match backend.decide(op(&key, &strategy)).await {
            Err(e @ BackendError::Connection { .. }) => format!("{e}"),
            other => panic!("expected a connection error, got {other:?}"),
        },
    };
    assert!(outcome.to_lowercase().contains("tls"), "the error should say TLS is not available: {outcome}");
}
