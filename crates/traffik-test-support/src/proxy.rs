//! A loopback TCP fault proxy: sits between a client and a server and, on command, adds
//! latency, drops new connections, resets the open ones, or turns into a half-open peer that
//! accepts and reads but never answers.
//!
//! The proxy runs on a Tokio runtime of its own (one worker thread), so it keeps working
//! whatever the test's runtime is doing, and it is torn down when the [`FaultProxy`] drops.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// What the proxy does to traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Forwards bytes both ways untouched.
    PassThrough,
    /// Holds every chunk read (either direction) this long after it was read before writing
    /// it on, so a request and its answer gain about twice this.
    Latency(Duration),
    /// Accepts new connections and closes them at once with a reset; open connections keep
    /// working.
    DropNew,
    /// A half-open peer: new connections are accepted and read but never answered, and every
    /// open connection swallows what it is sent from now on. A connection that has gone
    /// half-open stays so (as a peer that vanished would): it never carries traffic again,
    /// whatever the fault later becomes.
    HalfOpen,
}

struct Shared {
    upstream: SocketAddr,
    fault: Mutex<Fault>,
    /// Bumped by [`FaultProxy::reset_connections`]; each connection resets when it changes.
    resets: watch::Sender<u64>,
    accepted: AtomicU64,
}

impl Shared {
    fn fault(&self) -> Fault {
        *self.fault.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A loopback TCP fault proxy: forwards to one server and, on command, adds latency, drops
/// new connections, resets open ones, or turns into a half-open peer (see [`Fault`]). It runs
/// on a Tokio runtime of its own, torn down when the proxy drops.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for FaultProxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultProxy").field("addr", &self.addr).field("fault", &self.shared.fault()).finish()
    }
}

impl FaultProxy {
    /// Listens on a free 127.0.0.1 port and forwards to `upstream` (which must be a loopback
    /// address: these tests never leave the machine).
    pub fn start(upstream: SocketAddr) -> FaultProxy {
        assert!(upstream.ip().is_loopback(), "the fault proxy only forwards to loopback, not {upstream}");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("fault-proxy")
            .enable_all()
            .build()
            .expect("fault proxy runtime"); // ok: test support
        let listener = runtime.block_on(TcpListener::bind(("127.0.0.1", 0))).expect("fault proxy: bind 127.0.0.1:0"); // ok: test support
        let addr = listener.local_addr().expect("fault proxy address"); // ok: test support
        let (resets, _) = watch::channel(0u64);
        let shared =
            Arc::new(Shared { upstream, fault: Mutex::new(Fault::PassThrough), resets, accepted: AtomicU64::new(0) });
        let accept_shared = Arc::clone(&shared);
        runtime.spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else { continue };
                accept_shared.accepted.fetch_add(1, Ordering::Relaxed);
                tokio::spawn(serve(client, Arc::clone(&accept_shared)));
            }
        });
        FaultProxy { addr, shared, runtime: Some(runtime) }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches to `fault` (connections already half-open stay so).
    pub fn set(&self, fault: Fault) {
        *self.shared.fault.lock().unwrap_or_else(|p| p.into_inner()) = fault;
    }

    /// The fault in force.
    pub fn fault(&self) -> Fault {
        self.shared.fault()
    }

    /// Resets every open connection (the client side gets a TCP RST, the server side a close).
    pub fn reset_connections(&self) {
        self.shared.resets.send_modify(|n| *n += 1);
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            // Never blocks, so dropping the proxy inside a test's runtime is fine.
            rt.shutdown_background();
        }
    }
}

/// Closes `stream` with a reset rather than an orderly shutdown.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>) {
    let _ = client.set_nodelay(true);
    let mut resets = shared.resets.subscribe();
    resets.mark_unchanged();
    match shared.fault() {
        Fault::DropNew => return reset(client),
        Fault::HalfOpen => {
            tokio::select! {
                _ = swallow(&mut client) => {}
                _ = resets.changed() => {}
            }
            return reset(client);
        }
        Fault::PassThrough | Fault::Latency(_) => {}
    }
    let connect = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(shared.upstream)).await;
    let Ok(Ok(mut upstream)) = connect else { return reset(client) };
    let _ = upstream.set_nodelay(true);
    let half_open = AtomicFlag::default();
    {
        let (mut cr, mut cw) = client.split();
        let (mut ur, mut uw) = upstream.split();
        tokio::select! {
            _ = pump(&mut cr, &mut uw, &shared, &half_open) => {}
            _ = pump(&mut ur, &mut cw, &shared, &half_open) => {}
            _ = resets.changed() => {}
        }
    }
    if half_open.get() {
        // The peer vanished: it never says goodbye; only a reset ends the connection.
        if !matches!(resets.has_changed(), Ok(true)) {
            tokio::select! {
                _ = swallow(&mut client) => {}
                _ = resets.changed() => {}
            }
        }
    }
    reset(client);
    reset(upstream);
}

/// A flag shared by the two directions of one connection.
#[derive(Default)]
struct AtomicFlag(std::sync::atomic::AtomicBool);

impl AtomicFlag {
    fn set(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
    fn get(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Reads and discards until the peer closes.
async fn swallow<R: AsyncReadExt + Unpin>(from: &mut R) {
    let mut buf = vec![0u8; 16 * 1024];
    while matches!(from.read(&mut buf).await, Ok(n) if n > 0) {}
}

/// Copies `from` to `to` under the current fault until either side closes or the connection
/// goes half-open (then returns, and the caller swallows). Latency is applied per chunk from
/// the moment it was read, so chunks in flight overlap as on a slow link (a later chunk is not
/// held behind an earlier one's delay).
async fn pump<R, W>(from: &mut R, to: &mut W, shared: &Shared, half_open: &AtomicFlag)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let (queue, mut queued) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = match from.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            let fault = shared.fault();
            if half_open.get() || fault == Fault::HalfOpen {
                half_open.set();
                return;
            }
            let due = match fault {
                Fault::Latency(d) => tokio::time::Instant::now() + d,
                _ => tokio::time::Instant::now(),
            };
            if queue.send((due, buf[..n].to_vec())).is_err() {
                return;
            }
        }
    };
    let write = async move {
        while let Some((due, bytes)) = queued.recv().await {
            tokio::time::sleep_until(due).await;
            if half_open.get() || to.write_all(&bytes).await.is_err() {
                return;
            }
        }
    };
    tokio::join!(read, write);
}
