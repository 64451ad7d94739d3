//! Pins the behaviours of the `memcache` crate (and memcached) that the backend relies on:
//! `add` refuses existing keys, a stale CAS token is refused, a missing key refuses CAS, TTLs
//! above 30 days are read as absolute timestamps, batched reads come back in order.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use memcache::exp::{AsyncMemcache, Get, Meta, MutationStatus, Ttl};

async fn client(addr: &str) -> AsyncMemcache {
    AsyncMemcache::connect([addr.to_owned()]).await.expect("connect")
}

#[test]
fn add_on_an_existing_key_returns_false() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let c = client(&server.addr).await;
        let key = common::unique("add");
        assert!(c.add(&key, "one", Ttl::secs(60)).await.unwrap());
        assert!(!c.add(&key, "two", Ttl::secs(60)).await.unwrap());
        let v: Option<String> = c.get(&key).await.unwrap();
        assert_eq!(v.as_deref(), Some("one"));
        // The protocol layer reports the same refusal as a status.
        let r = c.meta().set(&key, "three").add().ttl_raw(60).send().await.unwrap();
        assert_eq!(r.status, MutationStatus::AlreadyExists);
    });
}

#[test]
fn cas_with_a_stale_token_fails_and_a_fresh_one_succeeds() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let c = client(&server.addr).await;
        let key = common::unique("cas");
        c.meta().set(&key, "a").ttl_raw(60).send().await.unwrap();
        let read = c.meta().get(&key).meta(Meta::NONE.cas()).send().await.unwrap();
        assert!(read.hit());
        assert_eq!(read.value.as_deref(), Some(&b"a"[..]));
        let stale = read.item.cas.expect("cas token returned");
        // Someone else writes: the token goes stale.
        c.meta().set(&key, "b").ttl_raw(60).send().await.unwrap();
        let r = c.meta().set(&key, "c").compare_cas(stale).ttl_raw(60).send().await.unwrap();
        assert_eq!(r.status, MutationStatus::CasMismatch);
        let read = c.meta().get(&key).meta(Meta::NONE.cas()).send().await.unwrap();
        assert_eq!(read.value.as_deref(), Some(&b"b"[..]));
        let fresh = read.item.cas.unwrap();
        let r = c.meta().set(&key, "d").compare_cas(fresh).ttl_raw(60).send().await.unwrap();
        assert!(r.applied());
        // A CAS on a key that is gone is refused too (never recreates it).
        c.delete(&key).await.unwrap();
        let r = c.meta().set(&key, "e").compare_cas(fresh).ttl_raw(60).send().await.unwrap();
        assert_eq!(r.status, MutationStatus::NotFound);
        let miss = c.meta().get(&key).meta(Meta::NONE.cas()).send().await.unwrap();
        assert!(!miss.hit());
        assert_eq!(miss.value, None);
    });
}

#[test]
fn ttl_semantics_relative_absolute_and_never() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let c = client(&server.addr).await;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let ttl_of = |key: String| {
            let c = c.clone();
            async move {
                let r = c.meta().get(&key).meta(Meta::NONE.ttl()).send().await.unwrap();
                (r.hit(), r.item.ttl)
            }
        };
        // Relative seconds.
        let k = common::unique("rel");
        c.meta().set(&k, "x").ttl_raw(100).send().await.unwrap();
        let (hit, ttl) = ttl_of(k).await;
        assert!(hit);
        let ttl = ttl.unwrap();
        assert!((98..=100).contains(&ttl), "{ttl}");
        // 30 days exactly is still relative.
        let k = common::unique("30d");
        c.meta().set(&k, "x").ttl_raw(2_592_000).send().await.unwrap();
        let ttl = ttl_of(k).await.1.unwrap();
        assert!((2_591_990..=2_592_000).contains(&ttl), "{ttl}");
        // Above 30 days the value is an absolute unix time: 40 days from now.
        let k = common::unique("abs");
        let forty_days = 40 * 86_400;
        let at = u32::try_from(now + forty_days).unwrap();
        c.meta().set(&k, "x").ttl_raw(at).send().await.unwrap();
        let ttl = ttl_of(k).await.1.unwrap();
        assert!((forty_days as i64 - 10..=forty_days as i64 + 2).contains(&ttl), "{ttl}");
        // ...so a relative 40 days sent raw (3_456_000) is a time in 1970: gone at once.
        let k = common::unique("rel40");
        c.meta().set(&k, "x").ttl_raw(3_456_000).send().await.unwrap();
        assert!(!ttl_of(k).await.0, "a raw value above 30 days is absolute");
        // 0 never expires.
        let k = common::unique("never");
        c.meta().set(&k, "x").ttl_raw(0).send().await.unwrap();
        assert_eq!(ttl_of(k).await.1, Some(-1));
        // The high-level Ttl rejects a zero relative TTL instead of keeping forever.
        assert!(c.set(common::unique("zero"), "x", Ttl::secs(0)).await.is_err());
    });
}

#[test]
fn incr_creates_on_miss_and_counts() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let c = client(&server.addr).await;
        let key = common::unique("incr");
        assert_eq!(c.incr(&key, 5, Ttl::secs(60)).await.unwrap(), 5);
        assert_eq!(c.incr(&key, 2, Ttl::secs(60)).await.unwrap(), 7);
    });
}

#[test]
fn batched_reads_answer_in_order_with_cas() {
    let server = common::memcached_server();
    common::runtime().block_on(async {
        let c = client(&server.addr).await;
        let (a, b) = (common::unique("ba"), common::unique("bb"));
        c.meta().set(&a, "1").ttl_raw(60).send().await.unwrap();
        let results = c
            .meta()
            .run_many([Get::new(&b).meta(Meta::NONE.cas()), Get::new(&a).meta(Meta::NONE.cas())])
            .await
            .unwrap();
        let rb = results[0].as_ref().unwrap();
        let ra = results[1].as_ref().unwrap();
        assert!(!rb.hit());
        assert!(ra.hit());
        assert_eq!(ra.value.as_deref(), Some(&b"1"[..]));
        assert!(ra.item.cas.is_some());
    });
}
