//! Who is making a request: the neutral request view, identities, trusted proxies and
//! identifiers.
//!
//! # Security
//!
//! The default identity is the socket peer address. `Forwarded`, `X-Forwarded-For` and
//! `X-Real-IP` are consulted only when the peer is one of the configured [`TrustedProxies`]; by
//! default none is trusted, so a client cannot pick its bucket by sending a header. The
//! forwarding chain is walked right to left, skipping trusted hops: the first untrusted address
//! is the client.

mod client_ip;
mod proxies;
mod request;
#[cfg(test)]
mod tests;

pub use client_ip::ClientIp;
pub use proxies::{IpNet, TrustedProxies};
pub use request::RequestView;

use std::any::Any;
use std::future::Future;
use std::net::IpAddr;

use futures_core::future::BoxFuture;

use crate::context::Context;
use crate::key::{self, Key, KeyBuilder};

/// Who a hit is charged to.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Identity {
    /// Skip throttling entirely: no quota consumed, no backend call (the seed's `EXEMPTED`).
    Exempted,
    /// No peer address is known; all such requests share this one bucket.
    Anonymous,
    /// A client IP address.
    Ip(IpAddr),
    /// A network: the address with host bits cleared, and the prefix length.
    Network(IpAddr, u8),
    /// An application-chosen name (user id, API key, tenant).
    Named(String),
    /// Arbitrary bytes.
    Bytes(Vec<u8>),
}

impl Identity {
    /// A named identity.
    pub fn named(name: impl Into<String>) -> Self {
        Identity::Named(name.into())
    }

    /// Whether this identity skips throttling.
    pub fn is_exempted(&self) -> bool {
        matches!(self, Identity::Exempted)
    }

    /// Appends this identity to a key; `hashed` replaces it by a digest.
    #[inline]
    pub(crate) fn write_key(&self, b: KeyBuilder, hashed: bool) -> KeyBuilder {
        b.tagged(|out| self.write_part(out, hashed))
    }

    /// Appends `:` and this identity's key part to `key`, in place: the shortcut for plain
    /// hits builds its key this way, since moving a key whose bytes were just written costs
    /// stalled loads (the bytes are still in flight as single-byte stores).
    #[inline]
    pub(crate) fn append_to(&self, key: &mut Key, hashed: bool) {
        let out = key.text_mut();
        out.push(b':');
        self.write_part(out, hashed);
    }

    #[inline]
    fn write_part(&self, out: &mut key::KeyText, hashed: bool) {
        if hashed && !matches!(self, Identity::Anonymous | Identity::Exempted) {
            out.push_str("h!");
            let mut raw = key::KeyText::new();
            self.write_plain(&mut raw);
            key::push_digest(out, raw.as_bytes());
        } else {
            self.write_plain(out);
        }
    }

    #[inline]
    fn write_plain(&self, out: &mut key::KeyText) {
        match self {
            Identity::Exempted => out.push_str("exempt"),
            Identity::Anonymous => out.push_str("anon"),
            Identity::Ip(ip) => key::push_ip(out, key::Tag::IP, *ip),
            Identity::Network(ip, len) => {
                key::push_ip(out, key::Tag::NET, *ip);
                out.push(b'!');
                key::push_u8(out, *len);
            }
            Identity::Named(name) => {
                out.push_str("id!");
                key::push_part(out, name.as_bytes());
            }
            Identity::Bytes(bytes) => {
                out.push_str("b!");
                key::push_part(out, bytes);
            }
        }
    }
}

impl From<&str> for Identity {
    fn from(s: &str) -> Self {
        Identity::Named(s.to_owned())
    }
}

impl From<String> for Identity {
    fn from(s: String) -> Self {
        Identity::Named(s)
    }
}

impl From<IpAddr> for Identity {
    fn from(ip: IpAddr) -> Self {
        Identity::Ip(ip)
    }
}

/// Maps a request to an [`Identity`].
///
/// Implemented by [`ClientIp`] (the default), by sync closures
/// `Fn(&RequestView<'_>) -> Identity`, by [`AsyncIdentifier`], and by
/// [`SyncFn`](crate::functions::SyncFn)/[`AsyncFn`](crate::functions::AsyncFn) around closures that also read the hit's
/// [`Context`] (where an integration puts what earlier middleware stored: a user from Salvo's
/// `Depot`, a tenant from Poem's extensions):
///
/// ```
/// use traffik::{Context, Identity, RequestView};
/// use traffik::functions::SyncFn;
/// #[derive(Clone)]
/// struct User(String);
/// let by_user = SyncFn(|_req: &RequestView<'_>, ctx: &Context| match ctx.get::<User>() {
///     Some(user) => Identity::Named(user.0.clone()),
///     None => Identity::Anonymous,
/// });
/// # let _ = traffik::Throttle::builder().identifier(by_user);
/// ```
pub trait Identifier: Any + Send + Sync {
    /// The identity of `req`, with the hit's context.
    fn identify<'a>(&'a self, req: &'a RequestView<'a>, ctx: &'a Context) -> BoxFuture<'a, Identity>;

    /// The identity without awaiting, when the identifier never needs to (skips a boxed future).
    fn identify_now(&self, _req: &RequestView<'_>, _ctx: &Context) -> Option<Identity> {
        None
    }
}

impl<F> Identifier for F
where
    F: Fn(&RequestView<'_>) -> Identity + Send + Sync + 'static,
{
    fn identify<'a>(&'a self, req: &'a RequestView<'a>, _ctx: &'a Context) -> BoxFuture<'a, Identity> {
        let id = self(req);
        Box::pin(async move { id })
    }

    #[inline]
    fn identify_now(&self, req: &RequestView<'_>, _ctx: &Context) -> Option<Identity> {
        Some(self(req))
    }
}

/// An identifier that must await (a database or cache lookup). The closure reads what it needs
/// from the request and returns a `'static` future.
///
/// ```
/// use traffik::{Identity, RequestView};
/// use traffik::identity::AsyncIdentifier;
/// let by_token = AsyncIdentifier(|req: &RequestView<'_>| {
///     let token = req.headers().get("x-api-key").map(|v| v.as_bytes().to_vec());
///     async move {
///         match token {
///             Some(t) => Identity::Bytes(t), // look the tenant up here
///             None => Identity::Anonymous,
///         }
///     }
/// });
/// # let _ = by_token;
/// ```
pub struct AsyncIdentifier<F>(pub F);

impl<F, Fut> Identifier for AsyncIdentifier<F>
where
    F: Fn(&RequestView<'_>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Identity> + Send + 'static,
{
    fn identify<'a>(&'a self, req: &'a RequestView<'a>, _ctx: &'a Context) -> BoxFuture<'a, Identity> {
        Box::pin((self.0)(req))
    }
}
