//! Unit tests of the worker's provided-buffer rings, on a real io_uring
//! and real sockets.

use std::time::Duration;

use super::*;

/// A listener, its address, a connection to it and its accepted end.
async fn connected() -> (
    std::net::TcpListener,
    std::net::SocketAddr,
    TcpStream,
    std::net::TcpStream,
) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let stream = TcpStream::connect(addr).await.unwrap();
    let (peer, _) = listener.accept().unwrap();
    (listener, addr, stream, peer)
}

fn uring() -> monoio::Runtime<monoio::time::TimeDriver<monoio::IoUringDriver>> {
    monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
        .enable_timer()
        .build()
        .expect("io_uring (Linux 5.19 or later for buffer rings)")
}

#[test]
fn receives_take_a_buffer_only_when_bytes_come_and_give_it_back() {
    uring().block_on(async {
        let ring = RecvRing::start(CLIENT_GROUP, 4, 64).expect("a buffer ring");
        assert_eq!(ring.published(), 4);
        let (_listener, _, mut stream, mut peer) = connected().await;
        use std::io::Write;
        peer.write_all(b"GET / HTTP/1.1\r\n").unwrap();
        let mut buf = BytesMut::new();
        let mut armed = Armed::default();
        let read = ring
            .recv(&mut armed, &mut stream, &mut buf, 1024, || panic!("empty"))
            .await;
        assert!(matches!(read, Read::Data(16)), "{read:?}");
        assert_eq!(&buf[..], b"GET / HTTP/1.1\r\n");
        assert_eq!(ring.published(), 5, "the buffer went back at once");
        assert!(armed.0.is_some(), "the receive stays armed");
        peer.write_all(b"Host: a\r\n").unwrap();
        let read = ring
            .recv(&mut armed, &mut stream, &mut buf, 1024, || panic!("empty"))
            .await;
        assert!(matches!(read, Read::Data(9)), "{read:?}");
        assert_eq!(ring.published(), 6);
        drop(peer);
        let read = ring
            .recv(&mut armed, &mut stream, &mut buf, 1024, || panic!("empty"))
            .await;
        assert!(matches!(read, Read::Eof), "{read:?}");
        assert!(armed.0.is_none(), "ended with the stream");
        ring.close();
    });
}

#[test]
fn a_receive_dropped_after_it_took_a_buffer_gives_it_back_later() {
    uring().block_on(async {
        let ring = RecvRing::start(CLIENT_GROUP, 2, 64).expect("a buffer ring");
        let (listener, addr, mut stream, mut peer) = connected().await;
        let mut buf = BytesMut::new();
        let mut armed = Armed::default();
        {
            let mut pending =
                std::pin::pin!(ring.recv(&mut armed, &mut stream, &mut buf, 64, || {}));
            // Armed (polled once), then the bytes come: the kernel
            // fills a ring buffer for a receive nobody will read.
            let polled = monoio::time::timeout(Duration::from_millis(1), &mut pending).await;
            assert!(polled.is_err(), "nothing to read yet");
            use std::io::Write;
            peer.write_all(b"abandoned").unwrap();
        }
        drop(armed);
        // Dropped: the buffer is the driver's orphan until the next receive.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let before = ring.published();
        let mut other = TcpStream::connect(addr).await.unwrap();
        let (mut other_peer, _) = listener.accept().unwrap();
        use std::io::Write;
        other_peer.write_all(b"next").unwrap();
        let mut next = BytesMut::new();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "the orphan never came back"
            );
            let read = ring
                .recv(&mut Armed::default(), &mut other, &mut next, 64, || {})
                .await;
            assert!(matches!(read, Read::Data(_)), "{read:?}");
            // This receive's own buffer went back (+1); the orphan too
            // once the driver saw its completion (+2).
            if ring.published() >= before + 2 {
                break;
            }
            other_peer.write_all(b"more").unwrap();
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        ring.close();
    });
}

#[test]
fn more_readable_connections_than_buffers_read_into_their_own() {
    uring().block_on(async {
        let ring = std::rc::Rc::new(RecvRing::start(CLIENT_GROUP, 2, 64).expect("a buffer ring"));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut streams = Vec::new();
        let mut peers = Vec::new();
        for _ in 0..6 {
            streams.push(TcpStream::connect(addr).await.unwrap());
            peers.push(listener.accept().unwrap().0);
        }
        // Six receives armed, then every peer sends at once: two get a
        // ring buffer, the others find it empty.
        let empties = std::rc::Rc::new(Cell::new(0));
        let mut tasks = Vec::new();
        for (i, mut stream) in streams.into_iter().enumerate() {
            let ring = ring.clone();
            let empties = empties.clone();
            tasks.push(monoio::spawn(async move {
                let mut buf = BytesMut::new();
                let read = ring
                    .recv(&mut Armed::default(), &mut stream, &mut buf, 1024, || {
                        empties.set(empties.get() + 1)
                    })
                    .await;
                assert!(matches!(read, Read::Data(_)), "{i}: {read:?}");
                buf
            }));
        }
        for (i, peer) in peers.iter_mut().enumerate() {
            use std::io::Write;
            peer.write_all(format!("request {i}").as_bytes()).unwrap();
        }
        for (i, task) in tasks.into_iter().enumerate() {
            let buf = task.await;
            assert_eq!(&buf[..], format!("request {i}").as_bytes());
        }
        assert!((1..=4).contains(&empties.get()), "{}", empties.get());
        ring.close();
    });
}

#[test]
fn a_peer_nobody_reads_holds_few_buffers_and_loses_nothing() {
    uring().block_on(async {
        let ring = RecvRing::start(CLIENT_GROUP, 16, 64).expect("a buffer ring");
        assert!(ring.multishot(), "multishot receives on this kernel");
        let (listener, addr, mut stream, mut peer) = connected().await;
        peer.set_nodelay(true).unwrap();
        use std::io::Write;
        let mut buf = BytesMut::new();
        let mut armed = Armed::default();
        peer.write_all(b"first").unwrap();
        let read = ring
            .recv(&mut armed, &mut stream, &mut buf, 64, || {})
            .await;
        assert!(matches!(read, Read::Data(5)), "{read:?}");
        // Armed and not read: the peer trickles 40 messages of 60 bytes.
        // This runtime is the test's own thread, so the pause is what
        // lets each arrive on a wake-up of its own, as a trickling
        // peer's do (the pacing is the case under test; a burst is
        // tests/recv_ring.rs's, with the gateway on its own thread).
        let mut sent = b"first".to_vec();
        for i in 0..40u8 {
            let message = [b'a' + i % 26; 60];
            peer.write_all(&message).unwrap();
            sent.extend_from_slice(&message);
            monoio::time::sleep(Duration::from_micros(200)).await;
        }
        // Its receive was cancelled after HELD_MAX completions, so the
        // ring still has buffers for another connection.
        let mut other = TcpStream::connect(addr).await.unwrap();
        let (mut other_peer, _) = listener.accept().unwrap();
        other_peer.write_all(b"other").unwrap();
        let mut other_buf = BytesMut::new();
        let read = ring
            .recv(
                &mut Armed::default(),
                &mut other,
                &mut other_buf,
                64,
                || panic!("a peer nobody reads took the whole ring"),
            )
            .await;
        assert!(matches!(read, Read::Data(5)), "{read:?}");
        // Read again: everything, in order, the receive re-armed as needed.
        while buf.len() < sent.len() {
            let read = ring
                .recv(&mut armed, &mut stream, &mut buf, 64, || {})
                .await;
            assert!(matches!(read, Read::Data(_)), "{read:?}");
        }
        assert_eq!(&buf[..], &sent[..]);
        ring.close();
    });
}

#[test]
fn an_arming_takes_its_byte_limit_of_a_burst_and_leaves_the_rest_in_the_socket() {
    uring().block_on(async {
        let ring = RecvRing::start(CLIENT_GROUP, 16, 64).expect("a buffer ring");
        let limit = ring.arm_limit.get() as usize;
        let (_listener, _, mut stream, mut peer) = connected().await;
        peer.set_nodelay(true).unwrap();
        use std::io::Write;
        // A head and the start of a large body in one write, as a client
        // uploading sends them: all of it in the socket before the arming.
        let sent: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        peer.write_all(&sent).unwrap();
        let mut buf = BytesMut::new();
        let mut armed = Armed::default();
        loop {
            let read = ring
                .recv(&mut armed, &mut stream, &mut buf, 64, || panic!("empty"))
                .await;
            assert!(matches!(read, Read::Data(_)), "{read:?}");
            if !armed.is_armed() {
                break;
            }
        }
        if kernel_at_least(6, 17) {
            assert_eq!(limit, HELD_MAX * 64, "a byte limit on this kernel");
            // The arming ended by itself once it had its limit (at most its
            // last buffer more): 4 of the ring's 16 buffers, not the 16 a
            // burst took before (the kernel's receives per wake-up).
            assert!(
                (limit..=limit + 64).contains(&buf.len()),
                "an arming of {limit} bytes took {}",
                buf.len()
            );
            let buffers = usize::from(ring.published() - 16);
            assert!(
                buffers <= HELD_MAX + 1,
                "{buffers} ring buffers for one arming"
            );
        } else {
            assert_eq!(limit, 0, "no byte limit before Linux 6.17");
        }
        // The rest waited in the socket: read directly (as a large body
        // is), it follows in order.
        while buf.len() < sent.len() {
            let read =
                super::super::super::proxy::io::read_untimed(&mut stream, &mut buf, 4096).await;
            assert!(matches!(read, Read::Data(_)), "{read:?}");
        }
        assert_eq!(&buf[..], &sent[..]);
        ring.close();
    });
}

#[test]
fn disarming_keeps_what_was_received_and_leaves_the_rest_in_the_socket() {
    uring().block_on(async {
        let ring = RecvRing::start(CLIENT_GROUP, 4, 64).expect("a buffer ring");
        let (_listener, _, mut stream, mut peer) = connected().await;
        use std::io::Write;
        let mut buf = BytesMut::new();
        let mut armed = Armed::default();
        peer.write_all(b"GET /ws HTTP/1.1\r\n\r\n").unwrap();
        let read = ring
            .recv(&mut armed, &mut stream, &mut buf, 64, || {})
            .await;
        assert!(matches!(read, Read::Data(_)), "{read:?}");
        buf.clear();
        // Early bytes of the new protocol, sent while armed: the receive
        // may have taken them before the cancel or not; either way they
        // come out in order (tests/websocket.rs holds the first case).
        peer.write_all(b"early").unwrap();
        ring.disarm(&mut armed, &mut buf).await;
        assert!(armed.0.is_none());
        peer.write_all(b"later").unwrap();
        // The socket is read directly now (as a tunnel does).
        while buf.len() < 10 {
            let read =
                super::super::super::proxy::io::read_untimed(&mut stream, &mut buf, 64).await;
            assert!(matches!(read, Read::Data(_)), "{read:?}");
        }
        assert_eq!(&buf[..], b"earlylater");
        ring.close();
    });
}

#[test]
fn single_receives_when_multishot_is_off() {
    uring().block_on(async {
        let ring = RecvRing::start(CLIENT_GROUP, 4, 64).expect("a buffer ring");
        ring.set_multishot(false);
        let (_listener, _, mut stream, mut peer) = connected().await;
        use std::io::Write;
        let mut buf = BytesMut::new();
        let mut armed = Armed::default();
        for word in ["one", "two"] {
            peer.write_all(word.as_bytes()).unwrap();
            let read = ring
                .recv(&mut armed, &mut stream, &mut buf, 64, || {})
                .await;
            assert!(matches!(read, Read::Data(3)), "{read:?}");
            assert!(armed.0.is_none(), "nothing stays armed");
        }
        assert_eq!(&buf[..], b"onetwo");
        assert_eq!(ring.published(), 6);
        ring.close();
    });
}

#[test]
fn an_idle_armed_receive_tells_what_came_without_a_read() {
    uring().block_on(async {
        let ring = RecvRing::start(UPSTREAM_GROUP, 4, 64).expect("a buffer ring");
        let (_listener, _, mut stream, mut peer) = connected().await;
        use std::io::Write;
        let mut armed = Armed::default();
        assert_eq!(
            ring.quiet(&mut armed),
            None,
            "nothing armed: the caller peeks"
        );
        // A response read through the ring leaves its receive armed.
        peer.write_all(b"HTTP/1.1 200 OK\r\n\r\n").unwrap();
        let mut buf = BytesMut::new();
        let read = ring
            .recv(&mut armed, &mut stream, &mut buf, 64, || {})
            .await;
        assert!(matches!(read, Read::Data(19)), "{read:?}");
        assert_eq!(ring.quiet(&mut armed), Some(true));
        // Bytes nobody asked for arrive while the connection is idle.
        peer.write_all(b"stray").unwrap();
        let published = ring.published();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while ring.quiet(&mut armed) == Some(true) {
            assert!(std::time::Instant::now() < deadline, "never seen");
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        assert!(
            armed.0.is_none(),
            "the receive is given up with the connection"
        );
        assert_eq!(ring.published(), published + 1, "its buffer went back");
        ring.close();
    });
}

#[test]
fn each_ring_takes_back_only_its_own_orphans() {
    uring().block_on(async {
        let client = RecvRing::start(CLIENT_GROUP, 4, 64).expect("a buffer ring");
        let upstream = RecvRing::start(UPSTREAM_GROUP, 4, 64).expect("a second ring");
        let (_listener, _, mut stream, mut peer) = connected().await;
        use std::io::Write;
        // A receive armed on the upstream ring, filled, then dropped
        // unread: its buffer is an orphan of the upstream ring.
        let mut armed = Armed::default();
        let mut buf = BytesMut::new();
        {
            let pending = upstream.recv(&mut armed, &mut stream, &mut buf, 64, || {});
            let polled = monoio::time::timeout(Duration::from_millis(1), pending).await;
            assert!(polled.is_err(), "nothing to read yet");
        }
        peer.write_all(b"late").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while upstream.quiet(&mut armed) == Some(true) {
            assert!(std::time::Instant::now() < deadline, "never received");
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        // Taken through `quiet`, so given back at once; now one the
        // kernel fills for a receive dropped before anyone looked.
        let before = upstream.published();
        {
            let mut other = Armed::default();
            let pending = upstream.recv(&mut other, &mut stream, &mut buf, 64, || {});
            let polled = monoio::time::timeout(Duration::from_millis(1), pending).await;
            assert!(polled.is_err(), "nothing to read yet");
            peer.write_all(b"again").unwrap();
            // Until the armed receive has taken the bytes out of the
            // socket (into a ring buffer); then it is dropped unread.
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while !crate::upstream::pool::is_quiet(&stream) {
                assert!(std::time::Instant::now() < deadline, "never received");
                monoio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        let client_before = client.published();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            // The client ring looks first each time: never its.
            client.recycle_orphans();
            assert_eq!(client.published(), client_before, "not the client ring's");
            upstream.recycle_orphans();
            if upstream.published() > before {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the orphan never came back"
            );
            monoio::time::sleep(Duration::from_millis(1)).await;
        }
        client.close();
        upstream.close();
    });
}

#[test]
fn a_large_receive_into_an_empty_buffer_takes_the_ring_buffer_and_the_ring_never_writes_it_again() {
    uring().block_on(async {
        let ring = RecvRing::start(UPSTREAM_GROUP, 2, 8192).expect("a buffer ring");
        let (_listener, _, mut stream, mut peer) = connected().await;
        use std::io::Write;
        let mut armed = Armed::default();
        // Pieces handed over stay alive (as a body piece on its way to a
        // slow client does) while the ring goes on receiving: each must
        // keep its bytes, so no ring buffer may point into one.
        let mut held: Vec<(bytes::Bytes, Vec<u8>)> = Vec::new();
        let mut small = BytesMut::new();
        // One buffer for every round, as an exchange's: once a piece is
        // split off it is empty again, its room shared with that piece.
        let mut buf = BytesMut::new();
        for round in 0..12u8 {
            let piece: Vec<u8> = (0..6000u32).map(|i| (i as u8) ^ round).collect();
            peer.write_all(&piece).unwrap();
            let ring_buffers: Vec<usize> = ring
                .buffers
                .borrow()
                .iter()
                .map(|b| b.as_ptr() as usize)
                .collect();
            while buf.len() < piece.len() {
                let read = ring
                    .recv(&mut armed, &mut stream, &mut buf, 64, || panic!("empty"))
                    .await;
                assert!(matches!(read, Read::Data(_)), "{read:?}");
            }
            assert_eq!(&buf[..], &piece[..]);
            assert!(
                ring_buffers.contains(&(buf.as_ptr() as usize)),
                "round {round}: the bytes were copied, not handed over"
            );
            held.push((buf.split().freeze(), piece));
            // A few bytes onto a buffer that has some: copied.
            peer.write_all(b"tail").unwrap();
            let before = small.len();
            let read = ring
                .recv(&mut armed, &mut stream, &mut small, 64, || panic!("empty"))
                .await;
            assert!(matches!(read, Read::Data(4)), "{read:?}");
            assert_eq!(&small[before..], b"tail");
            for buffer in ring.buffers.borrow().iter() {
                let at = buffer.as_ptr() as usize;
                for (bytes, _) in &held {
                    let start = bytes.as_ptr() as usize;
                    assert!(
                        at + ring.size <= start || at >= start + bytes.len(),
                        "a ring buffer points into bytes handed over"
                    );
                }
            }
        }
        for (bytes, piece) in &held {
            assert_eq!(&bytes[..], &piece[..], "bytes handed over were overwritten");
        }
        assert_eq!(small.len(), 4 * 12);
        ring.close();
    });
}

#[test]
fn a_buffer_grown_for_a_large_body_is_not_kept_in_the_ring() {
    uring().block_on(async {
        let ring = RecvRing::start(UPSTREAM_GROUP, 2, 8192).expect("a buffer ring");
        let (_listener, _, mut stream, mut peer) = connected().await;
        use std::io::Write;
        let mut armed = Armed::default();
        // A connection's buffer that grew to 1 MiB for a large body and was
        // read empty: its room has only what follows the consumed bytes,
        // its memory all of the MiB.
        let mut buf = BytesMut::with_capacity(1 << 20);
        buf.resize(1 << 20, b'x');
        drop(buf.split());
        assert!(buf.is_empty());
        peer.write_all(&[7u8; 6000]).unwrap();
        while buf.len() < 6000 {
            let read = ring
                .recv(&mut armed, &mut stream, &mut buf, 64, || panic!("empty"))
                .await;
            assert!(matches!(read, Read::Data(_)), "{read:?}");
        }
        assert!(buf.iter().all(|b| *b == 7));
        // The ring buffer was handed over and the MiB took its place: the
        // ring lends `size` bytes of it and would have kept the rest.
        for buffer in ring.buffers.borrow().iter() {
            assert!(
                buffer.capacity() <= 2 * ring.size,
                "a ring buffer of {} bytes for receives of {}",
                buffer.capacity(),
                ring.size
            );
        }
        ring.close();
    });
}

#[test]
fn a_runtime_ended_with_a_receive_abandoned_leaves_none_to_the_next_on_its_thread() {
    uring().block_on(async {
        let ring = RecvRing::start(CLIENT_GROUP, 4, 64).expect("a buffer ring");
        let (_listener, _, mut stream, _peer) = connected().await;
        let mut armed = Armed::default();
        let mut buf = BytesMut::new();
        {
            // Polled once: the receive is armed and nothing has come.
            let mut read = std::pin::pin!(ring.recv(&mut armed, &mut stream, &mut buf, 64, || {}));
            let polled = std::future::poll_fn(|cx| {
                std::task::Poll::Ready(std::future::Future::poll(read.as_mut(), cx))
            })
            .await;
            assert!(polled.is_pending());
        }
        assert!(armed.is_armed());
        // Dropped in flight: its cancel has not completed when the runtime ends.
        drop(armed);
        assert!(monoio::buf_ring::abandoned_in_flight() > 0);
        ring.close();
    });
    assert_eq!(
        monoio::buf_ring::abandoned_in_flight(),
        0,
        "the closed io_uring's operations are still counted"
    );
    uring().block_on(async {
        assert_eq!(monoio::buf_ring::abandoned_in_flight(), 0);
    });
}
