use std::net::{SocketAddr, SocketAddrV6};

use http::{HeaderMap, HeaderValue};

use super::request::EMPTY_HEADERS;
use super::*;

#[test]
fn the_peer_address_round_trips() {
    let addrs: [SocketAddr; 5] = [
        "10.1.2.3:8080".parse().unwrap(),
        "0.0.0.0:0".parse().unwrap(),
        "[2001:db8::7]:443".parse().unwrap(),
        "[::ffff:1.2.3.4]:9".parse().unwrap(),
        SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 65535, 0x000f_ffff, 7)),
    ];
    for addr in addrs {
        let view = RequestView::empty().peer(Some(addr));
        assert_eq!(view.peer_addr(), Some(addr));
        assert_eq!(view.peer_ip(), Some(addr.ip()));
        assert!(format!("{view:?}").contains(&format!("{addr:?}")), "{view:?}");
    }
    let none = RequestView::empty().peer(Some(addrs[0])).peer(None);
    assert_eq!((none.peer_addr(), none.peer_ip()), (None, None));
}

#[test]
fn the_direct_peer_identity_matches_the_general_route() {
    let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    let identifiers = [
        ClientIp::new(),
        ClientIp::new().ipv4_prefix(24),
        ClientIp::new().ipv6_prefix(128),
        ClientIp::new().trusted_proxies(proxies),
    ];
    let mut forwarded = HeaderMap::new();
    forwarded.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.9"));
    let peers = ["10.1.2.3:1", "198.51.100.7:2", "[::ffff:10.9.8.7]:3", "[2001:db8:1:2::5]:4", "[::1]:5"];
    for id in &identifiers {
        for peer in peers {
            for headers in [&*EMPTY_HEADERS, &forwarded] {
                let view = view_with(peer, headers);
                let prefix = Key::builder("u").build();
                let mut direct = prefix.clone();
                id.identity(&view).append_to(&mut direct, false);
                let mut general = prefix.clone();
                id.identity_of(id.proxies.client_ip(&view)).append_to(&mut general, false);
                assert_eq!(direct, general, "{id:?} {peer}");
            }
        }
        let mut direct = Key::builder("u").build();
        id.identity(&RequestView::empty()).append_to(&mut direct, false);
        assert_eq!(direct.as_str(), "u:anon");
    }
}

fn view_with<'a>(peer: &str, headers: &'a HeaderMap) -> RequestView<'a> {
    RequestView::empty().peer(Some(peer.parse().unwrap())).with_headers(headers)
}

impl<'a> RequestView<'a> {
    fn with_headers(mut self, headers: &'a HeaderMap) -> Self {
        self.headers = headers;
        self
    }
}

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(*k, HeaderValue::from_str(v).unwrap());
    }
    h
}

#[test]
fn untrusted_peer_keeps_its_own_bucket_whatever_it_sends() {
    let h = headers(&[("x-forwarded-for", "9.9.9.9"), ("x-real-ip", "8.8.8.8"), ("forwarded", "for=7.7.7.7")]);
    let id = ClientIp::new().identity(&view_with("203.0.113.5:1234", &h));
    assert_eq!(id, Identity::Ip("203.0.113.5".parse().unwrap()));
}

#[test]
fn trusted_proxy_chain_is_walked_right_to_left() {
    let proxies = TrustedProxies::new(["10.0.0.0/8"]).unwrap();
    let ip = ClientIp::new().trusted_proxies(proxies);
    // The client forged the leftmost entry; the first untrusted hop from the right wins.
    let h = headers(&[("x-forwarded-for", "6.6.6.6, 198.51.100.7, 10.1.1.1")]);
    assert_eq!(ip.identity(&view_with("10.0.0.2:80", &h)), Identity::Ip("198.51.100.7".parse().unwrap()));
    let h = headers(&[("forwarded", "for=6.6.6.6, for=\"[2001:db8::5]:4711\";proto=https, for=10.2.2.2")]);
    assert_eq!(ip.identity(&view_with("10.0.0.2:80", &h)), Identity::Network("2001:db8::".parse().unwrap(), 64));
    let h = headers(&[("x-real-ip", "198.51.100.9")]);
    assert_eq!(ip.identity(&view_with("10.0.0.2:80", &h)), Identity::Ip("198.51.100.9".parse().unwrap()));
    let h = headers(&[("forwarded", "for=_hidden, for=10.3.3.3")]);
    assert_eq!(ip.identity(&view_with("10.0.0.2:80", &h)), Identity::Ip("10.3.3.3".parse().unwrap()));
}

/// The observed defect: `for="[::1` (an unclosed quote and bracket) from a trusted proxy
/// was believed as `::1`. A malformed hop ends the walk: the client is the last hop believed.
#[test]
fn a_malformed_hop_ends_the_walk() {
    let ip = ClientIp::new().trusted_proxies(TrustedProxies::private_networks());
    let peer = "10.0.0.2:80";
    let last_believed = Identity::Ip("10.0.0.2".parse().unwrap());
    for bad in [
        "for=\"[::1",
        "for=\"[::1]",
        "for=[::1",
        "for=\"[::1]:80",
        "for=[::1]:80\"",
        "for=\"[::1]x\"",
        "for=\"[::1]:\"",
        "for=\"192.0.2.60:\"",
        "for=\"192.0.2.60:80:90\"",
        "for=\"\"",
        "for=\"",
        "for=\"1.2.3.4, for=5.6.7.8\"",
    ] {
        let h = headers(&[("forwarded", &format!("for=198.51.100.1, {bad}"))]);
        assert_eq!(ip.identity(&view_with(peer, &h)), last_believed, "{bad} was believed");
    }
    // Well-formed hops still parse, quoted or not, with or without ports.
    for (good, want) in [
        ("for=\"[::1]\"", "::1"),
        ("for=\"[::1]:4711\"", "::1"),
        ("for=\"[::1]:_hidden\"", "::1"),
        ("for=192.0.2.60", "192.0.2.60"),
        ("for=\"192.0.2.60:8080\"", "192.0.2.60"),
        ("FOR=192.0.2.61;proto=http", "192.0.2.61"),
    ] {
        let h = headers(&[("forwarded", &format!("for=198.51.100.1, {good}"))]);
        let want: IpAddr = want.parse().unwrap();
        let got = ip.identity(&view_with(peer, &h));
        // ::1 is trusted (a private network): the walk goes on to the next hop.
        let expect = if TrustedProxies::private_networks().contains(want) {
            Identity::Ip("198.51.100.1".parse().unwrap())
        } else {
            Identity::Ip(want)
        };
        assert_eq!(got, expect, "{good}");
    }
    let h = headers(&[("x-forwarded-for", "198.51.100.1, [::1")]);
    assert_eq!(ip.identity(&view_with(peer, &h)), last_believed, "x-forwarded-for `[::1`");
    let h = headers(&[("x-forwarded-for", "198.51.100.1, \"10.1.1.1")]);
    assert_eq!(ip.identity(&view_with(peer, &h)), last_believed, "x-forwarded-for with a stray quote");
}

#[test]
fn ipv6_grouping_and_mapped_ipv4() {
    let h = HeaderMap::new();
    let a = ClientIp::new().identity(&view_with("[2001:db8:1:2:aaaa::1]:1", &h));
    let b = ClientIp::new().identity(&view_with("[2001:db8:1:2:bbbb::9]:1", &h));
    assert_eq!(a, b);
    let m = ClientIp::new().identity(&view_with("[::ffff:192.0.2.1]:1", &h));
    assert_eq!(m, Identity::Ip("192.0.2.1".parse().unwrap()));
    assert_eq!(ClientIp::new().identity(&RequestView::empty()), Identity::Anonymous);
}

#[test]
fn cidr_parsing() {
    assert!(IpNet::parse("10.0.0.0/8").unwrap().contains("10.200.1.1".parse().unwrap()));
    assert!(!IpNet::parse("10.0.0.0/8").unwrap().contains("11.0.0.1".parse().unwrap()));
    assert!(IpNet::parse("::1").unwrap().contains("::1".parse().unwrap()));
    assert!(IpNet::parse("10.0.0.0/33").is_err());
    assert!(IpNet::parse("nope").is_err());
}
