//! The worker's provided-buffer rings (io_uring): a plain client
//! connection (`[workers] recv_buffers`) and a plain upstream connection
//! (`[workers] upstream_recv_buffers`, a ring of its own with buffers of
//! `upstream_recv_buffer_size`) receive into buffers the kernel takes from a
//! ring only when bytes arrive, so an idle connection holds no read
//! buffer of its own (nginx's idle connections hold none either: they wait
//! for readiness). The bytes are copied into the connection's buffer at
//! once and the ring buffer given back, so a ring buffer is lent for the
//! length of a copy. Many bytes arriving while the connection's buffer is
//! empty (a response body's piece) are not copied: the two buffers change
//! places, the filled one becoming the connection's and the connection's
//! empty room taking its place in the ring (a new buffer when that room
//! still shares memory with bytes being sent, or grew past twice the
//! ring's buffer size).
//!
//! The receive is multishot (Linux 6.0): armed once, it stays armed across
//! the connection's reads and requests ([`Armed`]), so reading the next
//! request costs no submission. Every read of the socket goes through it
//! while it is armed; before the socket is read another way (a tunnel) it
//! is disarmed, keeping what it had received ([`RecvRing::disarm`]). A
//! client connection's receive takes at most [`HELD_MAX`] buffers' worth
//! of bytes and then ends by itself (a byte limit on the receive, Linux
//! 6.17), the next read
//! arming it again: a burst already in the socket (a large body sent with
//! its head, a pipelined flood) fills no more than that many ring buffers
//! for one connection, the rest waiting in the socket for the connection's
//! next read, which may take it another way (a large request body is read
//! directly, `proxy::BULK_FROM`). Without that limit (older kernels, the
//! upstream ring) a peer that sends while nobody reads it has its receive
//! cancelled by the driver once it holds [`HELD_MAX`] completions, after
//! the kernel's receives per wake-up
//! (32: about 60 buffers for a 1 MiB body sent with its head, measured);
//! the ring's other buffers stay for other connections, and an empty ring
//! only sends readers to buffers of their own. A kernel that refuses
//! multishot receives gets one receive per read. An upstream
//! connection's receive stays armed while it is pooled: a completion it
//! holds then (bytes nobody asked for, the server's close) is what tells
//! the pool not to reuse it ([`RecvRing::quiet`]), with no system call.
//!
//! When every buffer is lent (more connections became readable at once
//! than the ring holds), the kernel answers `ENOBUFS` and the connection
//! reads into a buffer of its own instead: nothing stalls and nothing is
//! lost (the bytes stay in the socket), it only costs that read its buffer
//! (counted as `recv_buffers_empty` and `upstream_recv_buffers_empty` in
//! `/stats`). A receive dropped after
//! the kernel filled a buffer for it (the connection closed, the worker
//! drained) leaves that buffer listed by monoio; it goes back to the ring
//! before the next receive.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicU16, Ordering};

use bytes::BytesMut;
use io_uring::types::BufRingEntry;
use monoio::net::TcpStream;

use crate::proxy::io::Read;

/// The buffer group ids of the worker's two rings in its io_uring.
pub const CLIENT_GROUP: u16 = 0;
pub const UPSTREAM_GROUP: u16 = 1;
/// io_uring rings are page-aligned.
const PAGE: usize = 4096;

pub struct RecvRing {
    /// `entries` ring slots (`io_uring_buf`), page-aligned; the tail the
    /// kernel reads is in the first slot.
    ring: *mut BufRingEntry,
    ring_layout: std::alloc::Layout,
    /// The buffer each id stands for, empty with room for at least `size`
    /// bytes; while the id is published only the kernel writes its room.
    buffers: RefCell<Box<[BytesMut]>>,
    size: usize,
    entries: u16,
    /// Its buffer group id in the worker's io_uring.
    group: u16,
    /// Reads that found the ring empty (and read into a buffer of their own).
    empties: Cell<u64>,
    /// The next slot to publish a buffer in (wrapping).
    tail: Cell<u16>,
    /// Registered with the worker's ring (unregistered when it closes).
    registered: Cell<bool>,
    orphans: RefCell<Vec<u16>>,
    /// Receives stay armed across reads (until a kernel refuses that).
    multishot: Cell<bool>,
    /// A multishot receive delivered bytes (so a later `EINVAL` is not the
    /// kernel refusing multishot receives).
    multishot_worked: Cell<bool>,
    /// Bytes an armed receive takes before it ends by itself
    /// ([`HELD_MAX`] buffers): client connections only (their bursts are
    /// what the limit is for; an upstream's response is read by the
    /// exchange waiting for it, and re-arming every 128 KiB made large
    /// downloads dearer: docs/benchmarks.md). 0: none, or the kernel
    /// refused it.
    arm_limit: Cell<u32>,
}

/// Completions a connection's armed receive may hold before the driver
/// cancels it: a client sending while its request is served (pipelining,
/// a flood) stops taking ring buffers then (after the burst under way);
/// the rest waits in its socket until it is read again.
const HELD_MAX: usize = 4;

/// Bytes from which a receive into an empty connection buffer hands over
/// the ring's buffer instead of copying out of it (a page: below that the
/// copy costs less than the exchange of buffers).
const SWAP_FROM: usize = 4096;

/// The worker's ring and a connection's receive on it, as the reads of a
/// client connection take them.
pub type Receiver<'a> = (&'a RecvRing, &'a mut Armed);

/// A connection's receive on the ring, kept armed between reads.
#[derive(Debug, Default)]
pub struct Armed(Option<monoio::buf_ring::MultiRecv>);

impl Armed {
    /// A receive is armed (the socket must not be read another way).
    pub fn is_armed(&self) -> bool {
        self.0.is_some()
    }
}

impl RecvRing {
    /// A ring of `entries` buffers of `size` bytes registered with the
    /// current runtime's io_uring as buffer group `group`; `None` on
    /// another driver, with no entries, or when the kernel refuses it
    /// (logged: the worker then reads into buffers of its own).
    pub fn start(group: u16, entries: u16, size: usize) -> Option<RecvRing> {
        if entries == 0 || !monoio::buf_ring::supported() {
            return None;
        }
        let ring_bytes = (usize::from(entries) * std::mem::size_of::<BufRingEntry>()).max(PAGE);
        let ring_layout = std::alloc::Layout::from_size_align(ring_bytes, PAGE).ok()?;
        // SAFETY: the layout has a non-zero size.
        let ring = unsafe { std::alloc::alloc_zeroed(ring_layout) } as *mut BufRingEntry;
        if ring.is_null() {
            return None;
        }
        let ring = RecvRing {
            ring,
            ring_layout,
            buffers: RefCell::new(
                (0..entries)
                    .map(|_| BytesMut::with_capacity(size))
                    .collect(),
            ),
            size,
            entries,
            group,
            empties: Cell::new(0),
            tail: Cell::new(0),
            registered: Cell::new(false),
            orphans: RefCell::default(),
            multishot: Cell::new(kernel_at_least(6, 0)),
            multishot_worked: Cell::new(false),
            arm_limit: Cell::new(if group == CLIENT_GROUP && kernel_at_least(6, 17) {
                u32::try_from(HELD_MAX * size).unwrap_or(u32::MAX)
            } else {
                0
            }),
        };
        // SAFETY: `ring` is page-aligned, holds `entries` slots and lives
        // until `close` unregisters it (or, unregistered, until it drops).
        match unsafe { monoio::buf_ring::register(ring.ring as *mut u8, entries, group) } {
            Ok(()) => ring.registered.set(true),
            Err(e) => {
                tracing::warn!(error = %e, "no provided-buffer ring: reading into buffers of each connection's own");
                return None;
            }
        }
        for id in 0..entries {
            ring.publish(id);
        }
        Some(ring)
    }

    /// Buffers in the ring.
    pub fn entries(&self) -> u16 {
        self.entries
    }

    /// Puts buffer `id` back at the ring's tail for the kernel to take.
    fn publish(&self, id: u16) {
        let tail = self.tail.get();
        let slot = usize::from(tail & (self.entries - 1));
        let addr = self.buffers.borrow_mut()[usize::from(id)]
            .spare_capacity_mut()
            .as_mut_ptr() as u64;
        // SAFETY: `slot` is below `entries`, the ring holds `entries` slots,
        // and the kernel reads a slot only once the tail passed it (the
        // release store below), so this write races with nothing. The
        // buffer at `addr` has room for `size` bytes and stays where it is
        // until its id comes back in a completion.
        unsafe {
            let entry = &mut *self.ring.add(slot);
            entry.set_addr(addr);
            entry.set_len(self.size as u32);
            entry.set_bid(id);
        }
        let next = tail.wrapping_add(1);
        self.tail.set(next);
        // SAFETY: the tail is the `resv` field of the first slot, which the
        // kernel reads and never writes; an atomic store publishes the slot.
        unsafe {
            let field = BufRingEntry::tail(self.ring) as *const AtomicU16;
            (*field).store(next, Ordering::Release);
        }
    }

    /// Gives back the buffers of receives dropped after they completed.
    fn recycle_orphans(&self) {
        let mut orphans = self.orphans.borrow_mut();
        monoio::buf_ring::take_orphaned(self.group, &mut orphans);
        for id in orphans.drain(..) {
            if id < self.entries {
                self.publish(id);
            }
        }
    }

    /// Waits for bytes on `stream` with no buffer held, then appends them
    /// to `buf` (at least `reserve` bytes of room are made when it reads
    /// into a buffer of its own). The receive stays armed in `armed`
    /// between calls (multishot), so a connection's next read costs no
    /// submission; every read of a plain client socket goes through here
    /// while it is armed. `empty` is called when the ring had no buffer
    /// left.
    pub async fn recv(
        &self,
        armed: &mut Armed,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        reserve: usize,
        empty: impl FnOnce(),
    ) -> Read {
        // The other ways to read are boxed: an idle connection's future
        // holds the armed receive's wait, not them.
        if !self.multishot.get() {
            return Box::pin(self.recv_once(stream, buf, reserve, empty)).await;
        }
        loop {
            let op = match &mut armed.0 {
                Some(op) => op,
                None => {
                    self.recycle_orphans();
                    match stream.recv_multi(self.group, HELD_MAX, self.arm_limit.get()) {
                        Ok(op) => armed.0.insert(op),
                        Err(_) => {
                            return Box::pin(self.recv_once(stream, buf, reserve, empty)).await
                        }
                    }
                }
            };
            let Some(got) = op.next().await else {
                armed.0 = None;
                continue;
            };
            if !got.more {
                // Its last completion: the next read arms a new one.
                armed.0 = None;
            }
            self.take(&got, buf);
            match got.result {
                Ok(0) => return Read::Eof,
                Ok(n) => {
                    self.multishot_worked.set(true);
                    return Read::Data(n);
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::ENOBUFS) => {
                        self.empties.set(self.empties.get() + 1);
                        empty();
                        let read = super::super::proxy::io::read_untimed(stream, buf, reserve);
                        return Box::pin(read).await;
                    }
                    // Held too many completions nobody took: cancelled by
                    // the driver; what it had received came before this.
                    Some(libc::ECANCELED) => continue,
                    // A kernel refusing the receive's byte limit (before
                    // 6.17): armed without one from now on.
                    Some(libc::EINVAL)
                        if self.arm_limit.get() > 0 && !self.multishot_worked.get() =>
                    {
                        tracing::info!("multishot receives without a byte limit");
                        self.arm_limit.set(0);
                        continue;
                    }
                    // A kernel without multishot receives (before 6.0):
                    // single receives from now on.
                    Some(libc::EINVAL) if !self.multishot_worked.get() => {
                        tracing::info!("no multishot receives: one receive per read");
                        self.multishot.set(false);
                        return Box::pin(self.recv_once(stream, buf, reserve, empty)).await;
                    }
                    _ => return Read::Failed(e),
                },
            }
        }
    }

    /// Appends the bytes of a completion to `buf` and gives its buffer back.
    fn take(&self, got: &monoio::buf_ring::Received, buf: &mut BytesMut) {
        let n = got.result.as_ref().map_or(0, |n| *n);
        self.give_back(got.buffer, n, buf);
    }

    /// Appends the `n` bytes ring buffer `id` holds to `buf` and publishes
    /// the buffer again. When `buf` is empty and the bytes are many (a
    /// response body's piece), they are not copied: the filled buffer
    /// becomes `buf`, and `buf`'s room (or a new buffer, if `buf`'s is
    /// still shared with bytes on their way out) goes to the ring under
    /// the same id.
    fn give_back(&self, id: Option<u16>, n: usize, buf: &mut BytesMut) {
        let Some(id) = id.filter(|id| *id < self.entries) else {
            return;
        };
        {
            let mut buffers = self.buffers.borrow_mut();
            let filled = &mut buffers[usize::from(id)];
            // SAFETY: the completion says the kernel wrote `n` bytes at the
            // start of this buffer's room (at most `size`, its published
            // length), and it writes no more there until the id is
            // published again below.
            unsafe { filled.set_len(n.min(self.size)) };
            if buf.is_empty() && filled.len() >= SWAP_FROM {
                let mut room = std::mem::replace(buf, std::mem::take(filled));
                room.clear();
                // Its memory is taken back whole (the kernel fills `size`
                // bytes of it) unless it is still shared with bytes on
                // their way out, or grew for something large (receives
                // appended to it, a pooled buffer that grew): the ring keeps
                // no more than it lends.
                if !room.try_reclaim(self.size) || room.capacity() > 2 * self.size {
                    room = BytesMut::with_capacity(self.size);
                }
                *filled = room;
            } else {
                buf.extend_from_slice(filled);
                filled.clear();
            }
        }
        self.publish(id);
    }

    /// Publishes buffer `id` again without reading what it holds (bytes an
    /// idle connection was not asked for).
    fn discard(&self, id: Option<u16>) {
        if let Some(id) = id.filter(|id| *id < self.entries) {
            self.publish(id);
        }
    }

    /// Whether an armed receive has nothing waiting: `None` when the
    /// connection has no receive armed (the caller looks at the socket
    /// instead), `Some(false)` when a completion waits (bytes, the peer's
    /// close, an error: taken here, its buffer given back), `Some(true)`
    /// otherwise. For an idle pooled upstream connection: a completion
    /// there is bytes nobody asked for, or the server's close. One
    /// exception: the receive's end by the driver's cancel (it held
    /// [`HELD_MAX`] completions while the response was relayed, and the
    /// exchange took its last bytes before the cancel's own completion
    /// came) says nothing of the socket: `None`, so the caller looks.
    pub fn quiet(&self, armed: &mut Armed) -> Option<bool> {
        let op = armed.0.as_mut()?;
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match op.poll_next(&mut cx) {
            std::task::Poll::Pending => Some(true),
            std::task::Poll::Ready(got) => {
                armed.0 = None;
                let got = got?;
                self.discard(got.buffer);
                match &got.result {
                    Err(e) if e.raw_os_error() == Some(libc::ECANCELED) => None,
                    _ => Some(false),
                }
            }
        }
    }

    /// Reads that found the ring empty.
    pub fn empties(&self) -> u64 {
        self.empties.get()
    }

    /// Ends a connection's armed receive before its socket is read some
    /// other way (handed to a tunnel): what it had received is appended to
    /// `buf`; what it had not stays in the socket.
    pub async fn disarm(&self, armed: &mut Armed, buf: &mut BytesMut) {
        let Some(mut op) = armed.0.take() else {
            return;
        };
        op.cancel();
        while let Some(got) = op.next().await {
            self.take(&got, buf);
        }
    }

    /// One receive into a ring buffer (kernels without multishot
    /// receives).
    async fn recv_once(
        &self,
        stream: &mut TcpStream,
        buf: &mut BytesMut,
        reserve: usize,
        empty: impl FnOnce(),
    ) -> Read {
        self.recycle_orphans();
        let len = self.size.min(u32::MAX as usize) as u32;
        match stream.recv_select(self.group, len).await {
            Ok((n, id)) => {
                self.give_back(id, n, buf);
                match n {
                    0 => Read::Eof,
                    n => Read::Data(n),
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => {
                self.empties.set(self.empties.get() + 1);
                empty();
                super::super::proxy::io::read_untimed(stream, buf, reserve).await
            }
            Err(e) => Read::Failed(e),
        }
    }

    /// Multishot receives are used (they are unless the kernel refused one).
    pub fn multishot(&self) -> bool {
        self.multishot.get()
    }

    #[cfg(test)]
    fn set_multishot(&self, on: bool) {
        self.multishot.set(on);
    }

    /// Unregisters the ring (at the worker's end, on its runtime): no
    /// receive takes a buffer from it afterwards, so its memory may go.
    pub fn close(&self) {
        if self.registered.get() && monoio::buf_ring::unregister(self.group).is_ok() {
            self.registered.set(false);
        }
    }

    #[cfg(test)]
    fn published(&self) -> u16 {
        self.tail.get()
    }
}

impl Drop for RecvRing {
    fn drop(&mut self) {
        self.close();
        if self.registered.get() {
            // Still registered (no runtime to unregister from): the kernel
            // may still write into the buffers, so they are never freed.
            std::mem::forget(std::mem::take(self.buffers.get_mut()));
            return;
        }
        // SAFETY: allocated in `start` with this layout; unregistered, so
        // the kernel no longer reads it.
        unsafe { std::alloc::dealloc(self.ring as *mut u8, self.ring_layout) };
    }
}

impl std::fmt::Debug for RecvRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvRing")
            .field("entries", &self.entries)
            .field("size", &self.size)
            .finish()
    }
}

/// The running kernel is at least `major.minor` (multishot receives came
/// in 6.0; an older one answers `EINVAL`, which turns them off too).
fn kernel_at_least(major: u32, minor: u32) -> bool {
    let Ok(release) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
    let number = |p: Option<&str>| p.and_then(|p| p.parse::<u32>().ok()).unwrap_or(0);
    (number(parts.next()), number(parts.next())) >= (major, minor)
}

/// Whether the worker's io_uring took the ring; for the start-up log.
pub fn describe(ring: Option<&RecvRing>) -> String {
    match ring {
        Some(r) if r.multishot() && r.arm_limit.get() > 0 => format!(
            "{} x {} B, multishot, {} B an arming",
            r.entries(),
            r.size,
            r.arm_limit.get()
        ),
        Some(r) if r.multishot() => format!("{} x {} B, multishot", r.entries(), r.size),
        Some(r) => format!("{} x {} B", r.entries(), r.size),
        None => "none".to_string(),
    }
}

#[cfg(test)]
mod tests;
