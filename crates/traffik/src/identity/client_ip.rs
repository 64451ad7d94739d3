//! [`ClientIp`], the default identifier: the peer address, or the client a trusted proxy names.

use std::net::IpAddr;
use std::sync::Arc;

use futures_core::future::BoxFuture;

use crate::context::Context;
use crate::identity::proxies::{TrustedProxies, mask};
use crate::identity::request::RequestView;
use crate::identity::{Identifier, Identity};

/// The default identifier: the client IP address (see [`Identity`] for the key forms).
///
/// IPv6 clients are grouped by a prefix (default /64, since one subscriber usually holds a whole
/// /64); IPv4 addresses are used whole. Requests with no peer address share
/// [`Identity::Anonymous`].
#[derive(Clone, Debug)]
pub struct ClientIp {
    pub(super) proxies: Arc<TrustedProxies>,
    ipv6_prefix: u8,
    ipv4_prefix: u8,
}

impl Default for ClientIp {
    fn default() -> Self {
        ClientIp { proxies: Arc::new(TrustedProxies::none()), ipv6_prefix: 64, ipv4_prefix: 32 }
    }
}

impl ClientIp {
    /// Peer address only, IPv6 grouped by /64.
    pub fn new() -> Self {
        ClientIp::default()
    }

    /// Believes forwarding headers from these proxies.
    #[must_use]
    pub fn trusted_proxies(mut self, proxies: TrustedProxies) -> Self {
        self.proxies = Arc::new(proxies);
        self
    }

    /// Groups IPv6 clients by this prefix length (1..=128; 128 = per address).
    #[must_use]
    pub fn ipv6_prefix(mut self, prefix: u8) -> Self {
        self.ipv6_prefix = prefix.clamp(1, 128);
        self
    }

    /// Groups IPv4 clients by this prefix length (1..=32; default 32 = per address).
    #[must_use]
    pub fn ipv4_prefix(mut self, prefix: u8) -> Self {
        self.ipv4_prefix = prefix.clamp(1, 32);
        self
    }

    /// Whether `other` identifies every request as this does (same proxies, same prefixes).
    pub(crate) fn same_as(&self, other: &ClientIp) -> bool {
        self.ipv4_prefix == other.ipv4_prefix
            && self.ipv6_prefix == other.ipv6_prefix
            && (Arc::ptr_eq(&self.proxies, &other.proxies) || self.proxies == other.proxies)
    }

    /// The identity of a request.
    #[inline]
    pub fn identity(&self, req: &RequestView<'_>) -> Identity {
        // The common case, an IPv4 peer (or IPv4-mapped IPv6 peer) with no proxy trusted and
        // IPv4 clients not grouped, straight from the request's integers: the general route
        // returns the address as an `IpAddr` through memory, and reloading it stalled each hit
        // for several nanoseconds.
        if self.ipv4_prefix == 32
            && self.proxies.nets.is_empty()
            && let Some(v4) = req.peer.canonical_v4()
        {
            return Identity::Ip(IpAddr::V4(v4));
        }
        self.identity_of(self.proxies.client_ip(req))
    }

    /// The identity of a client address found by [`TrustedProxies::client_ip`].
    #[inline]
    pub(super) fn identity_of(&self, client: Option<IpAddr>) -> Identity {
        match client {
            None => Identity::Anonymous,
            Some(ip @ IpAddr::V4(_)) if self.ipv4_prefix == 32 => Identity::Ip(ip),
            Some(ip @ IpAddr::V6(_)) if self.ipv6_prefix == 128 => Identity::Ip(ip),
            Some(ip) => {
                let prefix = if ip.is_ipv4() { self.ipv4_prefix } else { self.ipv6_prefix };
                Identity::Network(mask(ip, prefix), prefix)
            }
        }
    }
}

impl Identifier for ClientIp {
    fn identify<'a>(&'a self, req: &'a RequestView<'a>, _ctx: &'a Context) -> BoxFuture<'a, Identity> {
        let id = self.identity(req);
        Box::pin(async move { id })
    }

    #[inline]
    fn identify_now(&self, req: &RequestView<'_>, _ctx: &Context) -> Option<Identity> {
        Some(self.identity(req))
    }
}
