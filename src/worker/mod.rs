//! Thread-per-core workers: each worker thread pins itself to its core,
//! builds its own monoio runtime (io_uring, or epoll where io_uring is not
//! available), binds its own SO_REUSEPORT listeners and serves the
//! connections the kernel hands it until told to stop.

pub mod conns;
pub mod context;
pub mod inbox;
pub mod reconfigure;
pub mod recv_ring;
pub mod rlimit;
pub mod signal;
pub mod stats;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use monoio::net::TcpListener;
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, DriverChoice, ListenerConfig};
use context::WorkerCtx;
use signal::{panic_message, race, CatchUnwind, Either, StopSignal};

/// The io driver a worker runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverKind {
    IoUring,
    Epoll,
}

impl std::fmt::Display for DriverKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            DriverKind::IoUring => "io_uring",
            DriverKind::Epoll => "epoll",
        })
    }
}

/// What a started worker reports about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerInfo {
    pub index: usize,
    /// The CPU the worker pinned itself to, if pinning is on.
    pub core: Option<usize>,
    /// The CPUs the worker thread may run on, read back from the kernel after pinning.
    pub affinity: Vec<usize>,
    pub driver: DriverKind,
    /// The provided-buffer ring idle connections receive from, if any
    /// ("256 x 1024 B, multishot, 4096 B an arming", or "none").
    pub recv_ring: String,
    /// The ring plain upstream connections receive from ("64 x 32768 B,
    /// multishot", or "none").
    pub upstream_ring: String,
}

/// What a worker thread needs to start.
pub(crate) struct WorkerSpec {
    pub index: usize,
    pub core: Option<core_affinity::CoreId>,
    pub config: Arc<Config>,
    /// Listeners with their concrete (port 0 resolved) addresses.
    pub listeners: Vec<ListenerConfig>,
    /// Each listener's TLS settings (`None`: plain), in listener order.
    pub terminators: Vec<Option<crate::tls::Terminator>>,
    /// Each upstream group's TLS client (`None`: plain), in group order.
    pub connectors: Vec<Option<crate::tls::Connector>>,
    pub stop: Arc<StopSignal>,
    pub mailbox: crate::bus::Mailbox,
    pub claims: Arc<crate::cache::claims::Claims>,
    /// The node's rate-limit table.
    pub limiter: Arc<dyn crate::route::rate_limit::Limiter>,
    /// The node's counts of AI provider keys in flight.
    pub ai_keys: Arc<crate::ai::keys::KeyLoad>,
    /// The admin API's concrete address, on the worker that serves it,
    /// with what reloads the config and its handed-over socket, if any.
    pub admin: Option<(
        SocketAddr,
        Arc<crate::reload::Reloader>,
        Option<std::os::fd::OwnedFd>,
    )>,
    /// Listening sockets a previous process handed over, for this worker.
    pub inherited: Vec<(SocketAddr, std::os::fd::OwnedFd)>,
    /// Where this worker registers its listening sockets (for an upgrade).
    pub sockets: Arc<crate::upgrade::Sockets>,
    /// The access log's writer.
    pub access_log: Arc<crate::access_log::AccessLog>,
    /// The link to the other nodes, with `[cluster]`.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

type Runtime = monoio::FusionRuntime<
    monoio::time::TimeDriver<monoio::IoUringDriver>,
    monoio::time::TimeDriver<monoio::LegacyDriver>,
>;

/// Starts a worker thread; it reports `Ok(info)` once it is listening.
pub(crate) fn spawn(
    spec: WorkerSpec,
    ready: mpsc::Sender<Result<WorkerInfo, String>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("ringgate-w{}", spec.index))
        .spawn(move || run_worker(spec, ready))
}

fn run_worker(mut spec: WorkerSpec, ready: mpsc::Sender<Result<WorkerInfo, String>>) {
    if let Some(core) = spec.core {
        if !core_affinity::set_for_current(core) {
            let _ = ready.send(Err(format!("cannot pin to CPU {}", core.id)));
            return;
        }
    }
    let (mut runtime, driver) = match build_runtime(&spec.config) {
        Ok(r) => r,
        Err(e) => {
            let _ = ready.send(Err(format!("cannot build the event loop: {e}")));
            return;
        }
    };
    let info = WorkerInfo {
        index: spec.index,
        core: spec.core.map(|c| c.id),
        affinity: current_affinity(),
        driver,
        recv_ring: String::new(),
        upstream_ring: String::new(),
    };
    let inherited = std::mem::take(&mut spec.inherited);
    runtime.block_on(worker_main(spec, inherited, info, ready));
}

fn build_runtime(config: &Config) -> std::io::Result<(Runtime, DriverKind)> {
    let workers = &config.workers;
    let want_uring = match workers.driver {
        DriverChoice::Epoll => false,
        DriverChoice::IoUring => true,
        DriverChoice::Auto => monoio::utils::detect_uring(),
    };
    if want_uring {
        // Each worker is the only thread submitting to its ring, so the kernel
        // can skip cross-CPU task-work notification and run completions only
        // when the worker asks for them (SINGLE_ISSUER + DEFER_TASKRUN, Linux
        // 6.1+). Kernels without them get a plain ring.
        let mut last_error = None;
        for tuned in [true, false] {
            let mut urb = io_uring::IoUring::builder();
            if tuned && workers.sqpoll.is_none() {
                urb.setup_single_issuer().setup_defer_taskrun();
            } else if tuned {
                continue;
            }
            if let Some(idle) = workers.sqpoll {
                urb.setup_sqpoll(idle.as_millis().min(u128::from(u32::MAX)) as u32);
            }
            let built = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
                .with_entries(workers.ring_entries)
                .uring_builder(urb)
                .enable_timer()
                .build();
            match built {
                Ok(rt) => return Ok((rt.into(), DriverKind::IoUring)),
                Err(e) => last_error = Some(e),
            }
        }
        match last_error {
            Some(e) if workers.driver == DriverChoice::IoUring => return Err(e),
            Some(e) => tracing::warn!(error = %e, "io_uring unavailable, using epoll"),
            None => {}
        }
    }
    let rt = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()?;
    Ok((rt.into(), DriverKind::Epoll))
}

fn current_affinity() -> Vec<usize> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity fills it for the calling thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Binds a listening socket with SO_REUSEPORT, so every worker has its own
/// accept queue on the same address.
pub(crate) fn reuseport_socket(address: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    Ok(socket)
}

/// This worker's own listening socket on a listener's address.
pub(crate) fn listen(l: &ListenerConfig) -> std::io::Result<TcpListener> {
    let socket = reuseport_socket(l.address)?;
    socket.listen(l.backlog.min(i32::MAX as u32) as i32)?;
    TcpListener::from_std(socket.into())
}

/// What a listener does with a connection, as this worker runs it.
pub(crate) fn entry(
    l: &ListenerConfig,
    tls: Option<&crate::tls::Terminator>,
) -> (SocketAddr, Rc<crate::proxy::Entry>) {
    let entry = crate::proxy::Entry {
        tls: tls.map(crate::tls::Terminator::for_worker),
        redirect_https: l.redirect_https,
        h2c: l.h2c,
    };
    (l.address, Rc::new(entry))
}

/// A listening socket handed over by the previous process.
fn adopt(fd: std::os::fd::OwnedFd) -> std::io::Result<TcpListener> {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    TcpListener::from_std(listener)
}

async fn worker_main(
    spec: WorkerSpec,
    mut inherited: Vec<(SocketAddr, std::os::fd::OwnedFd)>,
    mut info: WorkerInfo,
    ready: mpsc::Sender<Result<WorkerInfo, String>>,
) {
    use std::os::fd::AsRawFd;
    let mut listeners = Vec::new();
    for l in &spec.listeners {
        let mut handed = Vec::new();
        inherited.retain_mut(|(address, fd)| {
            if *address != l.address {
                return true;
            }
            handed.push(fd.try_clone());
            false
        });
        let bound: std::io::Result<Vec<TcpListener>> = if handed.is_empty() {
            listen(l).map(|x| vec![x])
        } else {
            handed.into_iter().map(|fd| fd.and_then(adopt)).collect()
        };
        match bound {
            Ok(bound) => {
                for listener in bound {
                    spec.sockets
                        .register(l.address, spec.index, false, listener.as_raw_fd());
                    listeners.push((listener, l.address));
                }
            }
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on {}: {e}", l.address)));
                return;
            }
        }
    }
    let core_key = info.core.unwrap_or(spec.index);
    let per_core = spec.config.workers.for_core(core_key).clone();
    let per_core_buffer = per_core.client_buffer_size;
    let admin_listener = match spec.admin {
        None => None,
        Some((address, reloader, handed)) => match handed.map(adopt).unwrap_or_else(|| {
            reuseport_socket(address).and_then(|s| {
                s.listen(128)?;
                TcpListener::from_std(s.into())
            })
        }) {
            Ok(l) => {
                spec.sockets
                    .register(address, spec.index, true, l.as_raw_fd());
                Some((l, reloader))
            }
            Err(e) => {
                let _ = ready.send(Err(format!("cannot listen on {address} (admin): {e}")));
                return;
            }
        },
    };
    let bus = spec.mailbox.bus().clone();
    let mut first = WorkerCtx::new(
        spec.index,
        spec.config.clone(),
        per_core,
        bus,
        spec.claims.clone(),
        spec.limiter.clone(),
    );
    first.core_key.set(core_key);
    first.set_sockets(spec.sockets.clone());
    first.set_access_log(spec.access_log.clone());
    first.set_cluster(spec.cluster.clone());
    first.set_ai_keys(spec.ai_keys.clone());
    first.set_recv_ring(recv_ring::RecvRing::start(
        recv_ring::CLIENT_GROUP,
        spec.config.workers.recv_buffers,
        per_core_buffer,
    ));
    first.set_upstream_ring(recv_ring::RecvRing::start(
        recv_ring::UPSTREAM_GROUP,
        spec.config.workers.upstream_recv_buffers,
        spec.config.workers.upstream_recv_buffer_size,
    ));
    let mailbox = Rc::new(spec.mailbox);
    first.set_mailbox(mailbox.clone());
    info.recv_ring = recv_ring::describe(first.recv_ring.as_ref());
    info.upstream_ring = recv_ring::describe(first.upstream_ring.as_deref());
    first.entries = spec
        .listeners
        .iter()
        .zip(&spec.terminators)
        .map(|(l, tls)| entry(l, tls.as_ref()))
        .collect();
    first.upstreams.borrow_mut().set_tls(&spec.connectors);
    let ctx = Rc::new(first);
    WorkerCtx::make_current(&ctx);
    monoio::spawn(inbox::run(ctx.clone(), mailbox));
    crate::upstream::health::start(&ctx);
    if let Some((listener, reloader)) = admin_listener {
        monoio::spawn(crate::admin::serve(ctx.clone(), listener, reloader));
    }

    // The stop request from another thread turns into a local drain.
    {
        let ctx = ctx.clone();
        let stop = spec.stop.clone();
        monoio::spawn(async move {
            stop.stopped().await;
            ctx.begin_drain();
        });
    }
    monoio::spawn(sweep_pool(ctx.clone()));
    monoio::spawn(expire_idle(ctx.clone()));
    monoio::spawn(flush_log(ctx.clone()));
    for (listener, address) in listeners {
        monoio::spawn(accept_loop(ctx.clone(), listener, address));
    }
    if ready.send(Ok(info)).is_err() {
        // The starter gave up (another worker failed): stop at once.
        return;
    }
    drop(ready);

    ctx.drain_started().await;
    let grace = ctx.config.timeouts.shutdown_grace;
    // Every accept loop has returned (with the connection its canceled
    // accept still handed over, if any) and every connection has closed.
    let done = || ctx.active.get() == 0 && ctx.accepting.get() == 0;
    let all_closed = ctx.slot_notify.wait_until(done);
    if monoio::time::timeout(grace, all_closed).await.is_err() {
        tracing::warn!(
            worker = ctx.index,
            open = ctx.active.get(),
            "shutdown grace period over, closing remaining connections"
        );
        ctx.force_close();
        // Each connection task drops its work (and its sockets) when next polled.
        ctx.slot_notify.wait_until(done).await;
    }
    // A connection dropped with operations in flight on io_uring (its
    // close, the cancel of its armed receive) keeps its socket open until
    // they complete, which takes turns of the loop: without them the
    // sockets stayed open after the worker ended (clients never saw their
    // connections close). At most a second, a turn at a time.
    let settled = async {
        while monoio::buf_ring::abandoned_in_flight() > 0 {
            monoio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    };
    let _ = monoio::time::timeout(std::time::Duration::from_secs(1), settled).await;
    if let Some(log) = &ctx.log {
        log.hand_over();
    }
    if let Some(ring) = &ctx.recv_ring {
        ring.close();
    }
    if let Some(ring) = &ctx.upstream_ring {
        ring.close();
    }
    ctx.forget_current();
}

/// Hands the access-log lines a quiet worker holds to the writer at least
/// every `access_log.flush`.
async fn flush_log(ctx: Rc<WorkerCtx>) {
    loop {
        let period = ctx.current().config.access_log.flush;
        match race(monoio::time::sleep(period), ctx.drain_started()).await {
            Either::Left(()) => {
                if let Some(log) = &ctx.log {
                    log.hand_over();
                }
            }
            Either::Right(()) => return,
        }
    }
}

/// Closes client connections idle past their keep-alive (or first-request
/// header) timeout: a scan of the connection table every eighth of the
/// shorter timeout (5 ms to 500 ms), while some connection is idle. A
/// connection is closed that much late at most.
async fn expire_idle(ctx: Rc<WorkerCtx>) {
    loop {
        let timeouts = &ctx.current().config.timeouts;
        let tick = (timeouts.client_header.min(timeouts.keepalive) / 8)
            .clamp(Duration::from_millis(5), Duration::from_millis(500));
        match race(monoio::time::sleep(tick), ctx.drain_started()).await {
            Either::Left(()) => {
                ctx.conns.expire_idle(std::time::Instant::now());
            }
            Either::Right(()) => return,
        }
    }
}

/// Closes pooled upstream connections that stayed idle too long or that
/// the server closed, even when no request comes to meet them (at least
/// once a second), and gives back free buffers a burst left (every half
/// idle timeout, at most every 5 s: halving the free lists more often
/// would make a steady load allocate again what it keeps using).
async fn sweep_pool(ctx: Rc<WorkerCtx>) {
    let half_idle = ctx.per_core.upstream_idle_timeout / 2;
    let period = half_idle.clamp(Duration::from_millis(100), Duration::from_secs(1));
    let trim_every = half_idle.clamp(Duration::from_millis(100), Duration::from_secs(5));
    let mut trimmed = monoio::time::recent();
    loop {
        match race(monoio::time::sleep(period), ctx.drain_started()).await {
            Either::Left(()) => {
                let ctx = ctx.current();
                ctx.upstreams.borrow_mut().sweep_pool();
                let now = monoio::time::recent();
                if now.duration_since(trimmed) >= trim_every {
                    ctx.trim_buffers();
                    trimmed = now;
                }
            }
            Either::Right(()) => return,
        }
    }
}

/// Accepts connections on this worker's socket of the listener bound at
/// `address`, each served on the config generation current when it came,
/// until the worker drains or a reload removes the listener.
/// Counted in `accepting` from the call on, before the task first runs.
pub(crate) fn accept_loop(
    ctx: Rc<WorkerCtx>,
    listener: TcpListener,
    address: SocketAddr,
) -> impl std::future::Future<Output = ()> {
    let running = context::AcceptGuard::new(ctx.clone());
    async move {
        let _running = running;
        accept_until_stopped(ctx, listener, address).await
    }
}

async fn accept_until_stopped(ctx: Rc<WorkerCtx>, listener: TcpListener, address: SocketAddr) {
    loop {
        // At the connection cap with nothing idle to close, stop accepting:
        // new clients wait in the kernel's backlog (or go to another worker)
        // instead of being reset.
        if !wait_for_room(&ctx).await {
            return;
        }
        let removed = ctx
            .reconfigured
            .wait_until(|| !ctx.current().listens_on(address));
        // Stopping cancels the pending accept and still takes what it
        // returns: a connection the kernel handed over just before the
        // cancel is served, not dropped (the socket stays open in another
        // process after an upgrade, and its clients must not see a reset).
        let canceller = monoio::io::Canceller::new();
        let mut accept = std::pin::pin!(listener.cancelable_accept(canceller.handle()));
        let (accepted, last) = match race(accept.as_mut(), race(ctx.drain_started(), removed)).await
        {
            Either::Left(accepted) => (accepted, false),
            Either::Right(why) => {
                if let Either::Right(()) = why {
                    ctx.sockets.unregister(address, ctx.index);
                }
                let _canceled = canceller.cancel();
                (accept.await, true)
            }
        };
        if last && accepted.is_err() {
            return;
        }
        match accepted {
            Ok((stream, peer)) => {
                // Connections may have turned busy while the accept was
                // pending: this one waits (accepted, unread) for room too.
                // A drain starting meanwhile makes it the last one served:
                // dropping it would reset a client the kernel handed over.
                let last = last || !wait_for_room(&ctx).await;
                // The listener's entry as of now, or as it was when a reload
                // removed it (that last connection is still served).
                let first = ctx.clone();
                let ctx = ctx.current();
                let Some(entry) = ctx.entry_for(address).or_else(|| first.entry_for(address))
                else {
                    return;
                };
                ctx.stats.count(context::Counter::Accepted);
                if !make_room(&ctx, peer.ip()) {
                    monoio::spawn(refuse_connection(ctx.clone(), stream));
                    if last {
                        return;
                    }
                    continue;
                }
                let guard = context::ConnectionGuard::new(ctx.clone(), peer.ip());
                let connection =
                    crate::proxy::Connection::new(&ctx, stream, peer, guard.key, &entry);
                monoio::spawn(ConnectionTask {
                    session: CatchUnwind::new(crate::proxy::serve(
                        ctx.clone(),
                        connection,
                        entry.clone(),
                    )),
                    guard,
                });
                if last {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors or memory: back off briefly instead of spinning.
                tracing::warn!(worker = ctx.index, error = %e, "accept failed");
                monoio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// A client connection's task: its session, a panic in it contained
    /// (counted and logged, the worker goes on), its slot in the worker's
    /// connection table released when it ends. A plain struct, so the
    /// session's future is held once, with nothing beside it.
    struct ConnectionTask<F> {
        #[pin]
        session: CatchUnwind<F>,
        guard: context::ConnectionGuard,
    }
}

impl<F: std::future::Future<Output = ()>> std::future::Future for ConnectionTask<F> {
    type Output = ();

    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        let this = self.project();
        match this.session.poll(cx) {
            std::task::Poll::Pending => std::task::Poll::Pending,
            std::task::Poll::Ready(Ok(())) => std::task::Poll::Ready(()),
            std::task::Poll::Ready(Err(panic)) => {
                let ctx = this.guard.ctx();
                ctx.stats.count(context::Counter::Panics);
                tracing::error!(
                    worker = ctx.index,
                    conn = this.guard.key,
                    "connection task panicked: {}",
                    panic_message(panic.as_ref())
                );
                std::task::Poll::Ready(())
            }
        }
    }
}

/// Waits until the worker is below `max_connections` or has an idle
/// connection it may close; false once it drains.
async fn wait_for_room(ctx: &Rc<WorkerCtx>) -> bool {
    let ctx = &ctx.current();
    let max = ctx.per_core.max_connections;
    let room = || ctx.active.get() < max || ctx.conns.any_idle();
    if !room() && !ctx.draining.get() {
        ctx.stats.count(context::Counter::ConnectionCapReached);
        if let Some(suppressed) = ctx.cap_log.allow() {
            tracing::warn!(
                worker = ctx.index,
                open = ctx.active.get(),
                max_connections = max,
                suppressed,
                "connection cap reached and no connection idle: new clients wait in the backlog"
            );
        }
    }
    ctx.slot_notify
        .wait_until(|| ctx.draining.get() || room())
        .await;
    !ctx.draining.get()
}

/// Makes room for a connection from `ip` at the caps: closes the oldest idle
/// connection (of that address, at its per-address cap; of anyone, at
/// `max_connections`). False when the address is at its cap with nothing idle.
fn make_room(ctx: &WorkerCtx, ip: std::net::IpAddr) -> bool {
    if let Some(cap) = ctx.per_core.max_connections_per_ip {
        if ctx.conns.count_for(ip) >= cap {
            if ctx.conns.evict_oldest_idle(Some(ip)) {
                ctx.stats.count(context::Counter::IdleClosedForRoom);
            } else {
                ctx.stats.count(context::Counter::PerIpRefused);
                if let Some(suppressed) = ctx.cap_log.allow() {
                    tracing::warn!(
                        worker = ctx.index,
                        %ip,
                        max_connections_per_ip = cap,
                        suppressed,
                        "per-address connection cap reached and none of its connections idle: refused with 503"
                    );
                }
                return false;
            }
        }
    }
    if ctx.active.get() >= ctx.per_core.max_connections && ctx.conns.evict_oldest_idle(None) {
        ctx.stats.count(context::Counter::IdleClosedForRoom);
        if let Some(suppressed) = ctx.cap_log.allow() {
            tracing::warn!(
                worker = ctx.index,
                max_connections = ctx.per_core.max_connections,
                suppressed,
                "connection cap reached: closed the oldest idle connection for a new client"
            );
        }
    }
    true
}

/// Answers a connection over its address's cap with a 503 and closes it.
async fn refuse_connection(ctx: Rc<WorkerCtx>, stream: monoio::net::TcpStream) {
    let mut stream = stream;
    let body = "503 Service Unavailable: too many connections from your address\n";
    let reply = format!(
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let limit = ctx.config.timeouts.client_send.min(Duration::from_secs(5));
    let _ = crate::proxy::io::write_all(&mut stream, reply.into_bytes(), limit).await;
}
