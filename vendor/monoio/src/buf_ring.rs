//! Provided-buffer rings (added for ringgate, see FORK.md): the
//! application gives the kernel a ring of buffers, and a receive
//! ([`crate::net::TcpStream::recv_select`]) takes one only when data
//! arrives, so a waiting receive holds no buffer of its own. io_uring
//! driver only; the ring's memory, its buffers and giving buffers back are
//! the application's.

use std::io;

#[cfg(all(target_os = "linux", feature = "iouring"))]
pub use crate::driver::op::recv_multi::{MultiRecv, Received};

/// Whether the current runtime's driver can use buffer rings (io_uring).
pub fn supported() -> bool {
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    {
        crate::driver::CURRENT.with(|inner| {
            matches!(inner, crate::driver::Inner::Uring(_))
        })
    }
    #[cfg(not(all(target_os = "linux", feature = "iouring")))]
    false
}

/// Registers a buffer ring with the current runtime's io_uring as `group`.
///
/// # Safety
///
/// `ring` must be the page-aligned address of `entries` (a power of two, at
/// most 32768) `io_uring_buf` entries, valid until [`unregister`] or the
/// runtime's end, and every buffer published in it must stay valid while
/// it is there.
pub unsafe fn register(ring: *mut u8, entries: u16, group: u16) -> io::Result<()> {
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    {
        crate::driver::CURRENT.with(|inner| match inner {
            crate::driver::Inner::Uring(this) => {
                crate::driver::UringInner::register_buf_ring(this, ring as u64, entries, group)
            }
            #[allow(unreachable_patterns)]
            _ => Err(io::ErrorKind::Unsupported.into()),
        })
    }
    #[cfg(not(all(target_os = "linux", feature = "iouring")))]
    {
        let _ = (ring, entries, group);
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Unregisters the buffer ring `group` from the current runtime's io_uring.
pub fn unregister(group: u16) -> io::Result<()> {
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    {
        crate::driver::CURRENT.with(|inner| match inner {
            crate::driver::Inner::Uring(this) => {
                crate::driver::UringInner::unregister_buf_ring(this, group)
            }
            #[allow(unreachable_patterns)]
            _ => Err(io::ErrorKind::Unsupported.into()),
        })
    }
    #[cfg(not(all(target_os = "linux", feature = "iouring")))]
    {
        let _ = group;
        Err(io::ErrorKind::Unsupported.into())
    }
}

/// Moves into `out` the id of every provided buffer of ring `group` the
/// kernel filled for a receive that was dropped before its result was
/// taken: the application must give them back to their ring. Other
/// groups' stay listed for their own rings.
pub fn take_orphaned(group: u16, out: &mut Vec<u16>) {
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    crate::driver::ORPHANED.with(|o| {
        o.borrow_mut().retain(|&(g, id)| {
            if g == group {
                out.push(id);
            }
            g != group
        })
    });
    #[cfg(not(all(target_os = "linux", feature = "iouring")))]
    let _ = (group, out);
}

/// Operations on this thread's io_uring dropped while in flight whose
/// last completion has not come (a socket's close, the cancel of a
/// dropped multishot receive): each keeps its socket open until then, so
/// a runtime about to end turns its loop until none is left (or its
/// patience ends). 0 on another driver.
pub fn abandoned_in_flight() -> usize {
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    return crate::driver::ABANDONED.with(|n| n.get());
    #[cfg(not(all(target_os = "linux", feature = "iouring")))]
    0
}
