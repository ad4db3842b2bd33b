//! The proxy itself: an accept loop and one task per connection.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};
use tracing::{debug, trace};

use crate::fault::{Direction, Fault, RawResponse};
use crate::strip::HeaderStripper;

/// A loopback TCP proxy, bound on `127.0.0.1:0`, that forwards to a target address and
/// applies the current [`Fault`] to each connection.
///
/// Dropping the proxy stops accepting and closes every connection it holds.
#[derive(Debug)]
pub struct FaultProxy {
    local_addr: SocketAddr,
    shared: Arc<Shared>,
    _stop: DropGuard,
}

/// Counters of what a proxy has seen so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct ProxyStats {
    /// Client connections accepted since the start.
    pub connections_accepted: u64,
    /// Connections open right now.
    pub live_connections: u64,
    /// Bytes forwarded from clients to the target.
    pub bytes_to_target: u64,
    /// Bytes forwarded from the target to clients.
    pub bytes_to_client: u64,
}

impl FaultProxy {
    /// Binds a proxy on `127.0.0.1:0` that forwards to `target`, passing everything through
    /// until told otherwise.
    ///
    /// # Errors
    ///
    /// The listening socket could not be bound.
    pub async fn start(target: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let (accepted, _) = watch::channel(0);
        let shared = Arc::new(Shared {
            target: Mutex::new(target),
            next_fault: Mutex::new(Fault::PassThrough),
            live: Mutex::new(HashMap::new()),
            accepted,
            next_id: AtomicU64::new(0),
            bytes_to_target: AtomicU64::new(0),
            bytes_to_client: AtomicU64::new(0),
            stop: stop.clone(),
        });

        tokio::spawn(accept_loop(listener, Arc::clone(&shared)));
        debug!(%local_addr, %target, "fault proxy started");
        Ok(Self {
            local_addr,
            shared,
            _stop: stop.drop_guard(),
        })
    }

    /// The address clients connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Applies `fault` to new and to live connections.
    pub fn set_fault(&self, fault: Fault) {
        self.set_fault_for_new(fault.clone());
        self.set_fault_for_live(fault);
    }

    /// Applies `fault` to connections accepted from now on; live ones keep theirs.
    pub fn set_fault_for_new(&self, fault: Fault) {
        debug!(?fault, "fault for new connections");
        *lock(&self.shared.next_fault) = fault;
    }

    /// Applies `fault` to the connections open right now; later ones get the fault for new
    /// connections.
    pub fn set_fault_for_live(&self, fault: Fault) {
        debug!(?fault, "fault for live connections");
        for connection in lock(&self.shared.live).values() {
            connection.fault.send_replace(fault.clone());
        }
    }

    /// Points the proxy at another target, for connections accepted from now on (a server
    /// restarted on a new port, for example).
    pub fn set_target(&self, target: SocketAddr) {
        *lock(&self.shared.target) = target;
    }

    /// Closes every live connection gracefully (FIN to both ends); new ones are accepted
    /// as usual.
    pub fn drop_all(&self) {
        let live = lock(&self.shared.live);
        debug!(count = live.len(), "dropping all live connections");
        for connection in live.values() {
            connection.kill.cancel();
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> ProxyStats {
        ProxyStats {
            connections_accepted: *self.shared.accepted.borrow(),
            live_connections: lock(&self.shared.live).len() as u64,
            bytes_to_target: self.shared.bytes_to_target.load(Ordering::Relaxed),
            bytes_to_client: self.shared.bytes_to_client.load(Ordering::Relaxed),
        }
    }

    /// Waits until at least `count` connections have been accepted since the start.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it only observes a counter.
    pub async fn wait_for_accepts(&self, count: u64) {
        let mut accepted = self.shared.accepted.subscribe();
        // The sender lives in `shared`, which outlives this borrow, so this cannot fail.
        let _ = accepted.wait_for(|accepted| *accepted >= count).await;
    }
}

/// State shared by the handle, the accept loop and the connection tasks.
#[derive(Debug)]
struct Shared {
    target: Mutex<SocketAddr>,
    next_fault: Mutex<Fault>,
    live: Mutex<HashMap<u64, LiveConnection>>,
    accepted: watch::Sender<u64>,
    next_id: AtomicU64,
    bytes_to_target: AtomicU64,
    bytes_to_client: AtomicU64,
    stop: CancellationToken,
}

/// The handle's view of one open connection.
#[derive(Debug)]
struct LiveConnection {
    fault: watch::Sender<Fault>,
    kill: CancellationToken,
}

/// Why a connection ended early.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Close both sides gracefully.
    Close,
    /// Abort both sides with a reset.
    Reset,
}

/// Longest request head read before answering a [`Fault::Respond`].
const MAX_REQUEST_HEAD: usize = 64 * 1024;

/// How long a closed response connection waits for the client to close its side, so that
/// unread request bytes do not turn the close into a reset.
const LINGER_AFTER_RESPONSE: Duration = Duration::from_secs(1);

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            () = shared.stop.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        let Ok((client, peer)) = accepted else {
            // Accept errors (out of descriptors) are transient; the next call may succeed.
            continue;
        };

        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let fault = lock(&shared.next_fault).clone();
        let (fault_tx, fault_rx) = watch::channel(fault);
        let kill = shared.stop.child_token();
        lock(&shared.live).insert(
            id,
            LiveConnection {
                fault: fault_tx,
                kill: kill.clone(),
            },
        );
        shared.accepted.send_modify(|accepted| *accepted += 1);
        trace!(id, %peer, "accepted");

        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            serve(client, fault_rx, kill, &shared).await;
            lock(&shared.live).remove(&id);
            trace!(id, "connection over");
        });
    }
}

async fn serve(
    mut client: TcpStream,
    mut fault: watch::Receiver<Fault>,
    kill: CancellationToken,
    shared: &Shared,
) {
    let first = fault.borrow_and_update().clone();
    match first {
        Fault::Reset => return reset(&client),
        Fault::Respond(response) => return respond(client, &response, &kill).await,
        _ => {}
    }

    let target = *lock(&shared.target);
    let upstream = tokio::select! {
        () = kill.cancelled() => return,
        upstream = TcpStream::connect(target) => upstream,
    };
    let Ok(mut upstream) = upstream else {
        // The client sees the same thing as when the target refuses: an immediate reset.
        return reset(&client);
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);

    let end = {
        let (client_read, client_write) = client.split();
        let (target_read, target_write) = upstream.split();
        let to_target = pump(
            client_read,
            target_write,
            Direction::ToTarget,
            fault.clone(),
            &shared.bytes_to_target,
        );
        let to_client = pump(
            target_read,
            client_write,
            Direction::ToClient,
            fault.clone(),
            &shared.bytes_to_client,
        );

        tokio::select! {
            ended = async { tokio::try_join!(to_target, to_client) } => {
                ended.err().unwrap_or(End::Close)
            }
            end = control(fault, &kill) => end,
        }
    };

    if end == End::Reset {
        reset(&client);
        reset(&upstream);
    }
}

/// Watches for what ends a connection from outside its data flow: being dropped, a reset
/// applied to a live connection, a close-after timer.
async fn control(mut fault: watch::Receiver<Fault>, kill: &CancellationToken) -> End {
    let mut deadline = close_deadline(&fault.borrow_and_update());

    loop {
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };

        tokio::select! {
            () = kill.cancelled() => return End::Close,
            () = expired => return End::Close,
            changed = fault.changed() => {
                if changed.is_err() {
                    // The handle's sender is gone only once the proxy itself stops.
                    return End::Close;
                }
                let current = fault.borrow_and_update().clone();
                if current == Fault::Reset {
                    return End::Reset;
                }
                deadline = close_deadline(&current);
            }
        }
    }
}

fn close_deadline(fault: &Fault) -> Option<Instant> {
    match fault {
        Fault::CloseAfter(after) => Some(Instant::now() + *after),
        _ => None,
    }
}

/// Moves bytes one way, applying the current fault to each chunk read.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    direction: Direction,
    mut fault: watch::Receiver<Fault>,
    counter: &AtomicU64,
) -> Result<(), End> {
    let mut current = fault.borrow_and_update().clone();
    let mut stripper = stripper_for(&current, direction);
    let mut forwarded_since_change = 0u64;
    let mut buffer = vec![0; 16 * 1024];

    loop {
        let read = from.read(&mut buffer).await.map_err(|_| End::Reset)?;

        if fault.has_changed().unwrap_or(false) {
            current = fault.borrow_and_update().clone();
            stripper = stripper_for(&current, direction);
            forwarded_since_change = 0;
        }

        let black_holed = matches!(current, Fault::BlackHole(hole) if hole.covers(direction));
        if read == 0 {
            if black_holed {
                // A black hole swallows the end of stream too: the other end never learns.
                std::future::pending::<()>().await;
            }
            let _ = to.shutdown().await;
            return Ok(());
        }
        if black_holed {
            continue;
        }

        let mut chunk = &buffer[..read];
        let stripped;
        let mut cut = false;
        match &current {
            Fault::Delay(delay) => tokio::time::sleep(*delay).await,
            Fault::CutAfter {
                direction: cut_direction,
                bytes,
            } if cut_direction.covers(direction) => {
                let room = bytes.saturating_sub(forwarded_since_change);
                let take = usize::try_from(room).unwrap_or(usize::MAX).min(chunk.len());
                chunk = &chunk[..take];
                cut = forwarded_since_change + take as u64 >= *bytes;
            }
            _ => {}
        }
        if let Some(stripper) = stripper.as_mut() {
            stripped = stripper.feed(chunk);
            chunk = &stripped;
        }

        to.write_all(chunk).await.map_err(|_| End::Reset)?;
        forwarded_since_change += chunk.len() as u64;
        counter.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        if cut {
            trace!(?direction, forwarded_since_change, "cut");
            return Err(End::Close);
        }
    }
}

fn stripper_for(fault: &Fault, direction: Direction) -> Option<HeaderStripper> {
    match fault {
        Fault::StripHeader(name) if direction == Direction::ToTarget => {
            Some(HeaderStripper::new(name))
        }
        _ => None,
    }
}

/// Reads the request head, writes the canned response and closes.
async fn respond(mut client: TcpStream, response: &RawResponse, kill: &CancellationToken) {
    let exchange = async {
        let mut head = Vec::new();
        let mut buffer = [0; 4096];
        while !head.windows(4).any(|window| window == b"\r\n\r\n") && head.len() < MAX_REQUEST_HEAD
        {
            let read = client.read(&mut buffer).await?;
            if read == 0 {
                break;
            }
            head.extend_from_slice(&buffer[..read]);
        }

        client.write_all(&response.to_bytes()).await?;
        client.shutdown().await?;

        // Wait for the client to close, discarding whatever else it sends.
        let _ = tokio::time::timeout(LINGER_AFTER_RESPONSE, async {
            while client.read(&mut buffer).await.is_ok_and(|read| read > 0) {}
        })
        .await;
        io::Result::Ok(())
    };

    tokio::select! {
        () = kill.cancelled() => {}
        _ = exchange => {}
    }
}

/// Aborts a socket with a reset instead of the usual graceful close.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The data behind these locks stays consistent even if a holder panicked.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
