//! Failures are typed and fast: a stopped server is `Connection` within ~2 s, a server that
//! accepts but never answers is `Timeout`, a closed backend is `Closed`; the configured error
//! policy is handed to throttles; bad configuration is a `BuildError`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::Read;
use std::net::TcpListener;
use std::time::{Duration, Instant};

use traffik::backend::{Mode, Operation};
use traffik::strategy::{FixedWindow, Input};
use traffik::{Backend, BackendError, Key, OnError, Rate, StrategyHandle};
use traffik_memcached::{BuildError, MemcachedBackend};
use traffik_test_support::MemcachedServer;

async fn hit(backend: &MemcachedBackend) -> Result<traffik::strategy::Verdict, BackendError> {
    let key = Key::builder("fail").part(b"k").build();
    let strategy = StrategyHandle::new(FixedWindow);
    let op = Operation {
        key: &key,
        strategy: &strategy,
        input: Input { now_us: 1_700_000_000_000_000, rate: Rate::per_millis(10, 1_000).unwrap(), cost: 1 },
        mode: Mode::Consume,
    };
    backend.decide(op).await
}

#[test]
fn a_stopped_server_is_a_connection_error_quickly() {
    // Stops its server, so it needs one of its own even when TRAFFIK_MEMCACHED is set.
    let mut server = MemcachedServer::spawn();
    common::runtime().block_on(async {
        let backend = MemcachedBackend::builder()
            .server(&server.addr)
            .connect_timeout(Duration::from_millis(500))
            .command_timeout(Duration::from_millis(500))
            .build()
            .unwrap();
        hit(&backend).await.unwrap();
        backend.ready_check().await.unwrap();
        server.stop();
        for _ in 0..3 {
            let started = Instant::now();
            let err = hit(&backend).await.unwrap_err();
            assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
            assert!(matches!(err, BackendError::Connection { .. }), "{err:?}");
            assert!(err.is_transient());
        }
        let err = backend.ready_check().await.unwrap_err();
        assert!(matches!(err, BackendError::Connection { .. }), "{err:?}");
    });
}

#[test]
fn nothing_listening_is_a_connection_error_quickly() {
    let port = traffik_test_support::free_port();
    common::runtime().block_on(async {
        let backend = MemcachedBackend::new(format!("127.0.0.1:{port}")).unwrap();
        let started = Instant::now();
        let err = hit(&backend).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, BackendError::Connection { .. }), "{err:?}");
    });
}

#[test]
fn a_server_that_never_answers_is_a_timeout() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    // Accepts and reads, never answers.
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            std::thread::spawn(move || {
                let mut buf = [0u8; 1024];
                while matches!(stream.read(&mut buf), Ok(n) if n > 0) {}
            });
        }
    });
    common::runtime().block_on(async {
        let backend = MemcachedBackend::builder()
            .server(addr.to_string())
            .command_timeout(Duration::from_millis(300))
            .build()
            .unwrap();
        let started = Instant::now();
        let err = hit(&backend).await.unwrap_err();
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(300) && took < Duration::from_secs(2), "took {took:?}");
        assert!(matches!(err, BackendError::Timeout { after, .. } if after == Duration::from_millis(300)), "{err:?}");
    });
}

#[test]
fn a_closed_backend_says_so() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let backend = MemcachedBackend::new(&server.addr).unwrap();
        hit(&backend).await.unwrap();
        backend.close().await.unwrap();
        assert!(matches!(hit(&backend).await, Err(BackendError::Closed { .. })));
        assert!(matches!(backend.reset().await, Err(BackendError::Closed { .. })));
    });
}

#[test]
fn a_url_configured_backend_works() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let backend = MemcachedBackend::builder().url(format!("memcache://{}", server.addr)).build().unwrap();
        backend.ready().await.unwrap();
        assert!(hit(&backend).await.unwrap().is_admitted());
    });
}

#[test]
fn the_backend_wide_on_error_is_handed_to_throttles() {
    let backend = MemcachedBackend::builder().server("127.0.0.1:1").on_error(OnError::Allow).build().unwrap();
    assert_eq!(backend.on_error(), Some(OnError::Allow));
    assert_eq!(MemcachedBackend::new("127.0.0.1:1").unwrap().on_error(), None);
}

#[test]
fn bad_configuration_is_a_build_error() {
    assert!(matches!(MemcachedBackend::builder().build(), Err(BuildError::NoServers)));
    assert!(matches!(MemcachedBackend::new("no-port"), Err(BuildError::Server(_))));
    assert!(matches!(MemcachedBackend::builder().url("redis://h:1").build(), Err(BuildError::Url(_))));
    assert!(matches!(
        MemcachedBackend::builder().server("h:1").namespace("has space").build(),
        Err(BuildError::Namespace(_))
    ));
    let ok = MemcachedBackend::builder().url("memcache://127.0.0.1:11211,127.0.0.1:11212").build().unwrap();
    assert_eq!(ok.servers().len(), 2);
}
