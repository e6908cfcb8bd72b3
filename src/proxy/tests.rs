//! Unit tests of the connection task's futures (the size of what an idle
//! connection holds, and of what a timed read or write adds) and of the
//! room its reads make and the read buffers the worker keeps for reuse.

/// Runs `f` on a one-thread epoll runtime with timers.
fn block_on<F: std::future::Future>(f: F) -> F::Output {
    monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
        .enable_timer()
        .build()
        .unwrap()
        .block_on(f)
}

/// A worker's context for a gateway proxying `addr` to itself.
fn worker_ctx(addr: std::net::SocketAddr) -> std::rc::Rc<crate::worker::context::WorkerCtx> {
    let config = std::sync::Arc::new(crate::config::Config::quick(addr, vec![addr]));
    let (bus, _receivers) = crate::bus::Bus::new(1, 16);
    let claims = std::sync::Arc::new(crate::cache::claims::Claims::new(1));
    std::rc::Rc::new(crate::worker::context::WorkerCtx::new(
        0,
        config,
        Default::default(),
        bus,
        claims,
        std::sync::Arc::new(crate::route::rate_limit::NodeTable::new(64)),
    ))
}

/// An idle keep-alive connection holds its task, whose future is the
/// session's (`serve`, holding its request loop in place; a request's
/// exchange is boxed only while it runs, and the wait holds no timer).
#[test]
fn connection_future_stays_small() {
    fn size_of_future<F: std::future::Future>(_: &F) -> usize {
        std::mem::size_of::<F>()
    }
    block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let stream = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let ctx = worker_ctx(addr);
        let entry = std::rc::Rc::new(super::Entry {
            tls: None,
            redirect_https: None,
            h2c: false,
        });
        let tcp = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let mut client = super::Connection::new(&ctx, tcp, addr, 0, &entry).into_client();
        let exchange = size_of_future(&super::session::exchange(&ctx, &mut client));
        let waiting = size_of_future(&super::session::requests(&ctx, &mut client));
        let connection = super::Connection::new(&ctx, stream, addr, 0, &entry);
        let serve = size_of_future(&super::serve(ctx.clone(), connection, entry));
        // Idle, a connection's task holds the session's future, which
        // holds the request loop in place; a request's exchange is boxed
        // only while it runs. With monoio's task header it must fit the
        // allocator's 1 KiB size class.
        assert!(
            serve <= 896,
            "serve {serve} bytes (its request loop {waiting})"
        );
        // About 1.9 KiB since timers lost their cache-line padding.
        assert!(exchange <= 2560, "exchange {exchange} bytes");
        eprintln!("serve {serve}, request loop {waiting}, exchange {exchange} bytes");
    });
}

/// The vendored monoio's timers are not padded to cache lines (its
/// FORK.md): a `Sleep` was 640 bytes aligned to 128, and every future
/// holding a timeout carried it and was copied whole when it moved.
#[test]
fn a_timeout_adds_little_to_the_future_it_guards() {
    assert!(std::mem::size_of::<monoio::time::Sleep>() <= 160);
    assert!(std::mem::align_of::<monoio::time::Sleep>() <= 16);
    block_on(async {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut stream = monoio::net::TcpStream::connect_addr(addr).await.unwrap();
        let limit = std::time::Duration::from_secs(1);
        let write = super::io::write_all(&mut stream, bytes::BytesMut::new(), limit);
        // The write itself (about 270 bytes), the timer, the arguments.
        let size = std::mem::size_of_val(&write);
        assert!(size <= 600, "a timed write's future is {size} bytes");
    });
}

/// A read buffer read empty and given more room than its memory holds
/// gets memory of that size, not that size on top of what it consumed:
/// with `BytesMut`'s own growth, a large body's reads doubling (32, 64,
/// 128 KiB) left each connection holding more than its largest read.
#[test]
fn an_empty_buffer_grows_to_the_room_asked_not_beyond() {
    use bytes::BytesMut;
    let mut buf = BytesMut::new();
    for room in [32 * 1024, 64 * 1024, 128 * 1024, 128 * 1024, 128 * 1024] {
        super::io::make_room(&mut buf, room);
        assert!(buf.capacity() >= room, "room for the read");
        let filled = buf.capacity();
        buf.resize(filled, 1);
        // The body piece is sent and dropped: the buffer is empty again.
        drop(buf.split());
    }
    // Its memory is the largest room asked for: 128 KiB, reclaimable
    // whole, and no more.
    assert!(buf.try_reclaim(128 * 1024));
    assert!(
        !buf.try_reclaim(128 * 1024 + 1),
        "memory beyond the largest read kept"
    );
    // A buffer with bytes still in it grows as `BytesMut` grows it.
    buf.resize(10, 2);
    super::io::make_room(&mut buf, 256 * 1024);
    assert!(buf.capacity() >= 10 + 256 * 1024);
    assert_eq!(&buf[..], &[2u8; 10][..]);
}

/// The worker keeps read buffers for reuse, but not one whose memory grew
/// large, though read empty it shows as room only what follows the bytes
/// taken off it.
#[test]
fn a_read_buffer_grown_large_is_not_kept_for_reuse() {
    use bytes::BytesMut;
    block_on(async {
        let ctx = worker_ctx("127.0.0.1:9".parse().unwrap());
        let mut grown = BytesMut::with_capacity(1 << 20);
        grown.resize(1 << 20, 1);
        drop(grown.split());
        assert!(
            grown.capacity() < 1024,
            "its room is what follows its bytes"
        );
        ctx.give_read_buffer(grown);
        let mut next = ctx.take_read_buffer();
        assert!(
            !next.try_reclaim(256 * 1024 + 1),
            "a MiB buffer was kept for reuse"
        );
        // One of ordinary size is kept: the same memory comes back.
        let ordinary = BytesMut::with_capacity(32 * 1024);
        let at = ordinary.as_ptr();
        ctx.give_read_buffer(ordinary);
        assert_eq!(ctx.take_read_buffer().as_ptr(), at);
    });
}
