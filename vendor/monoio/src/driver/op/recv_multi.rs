//! A multishot receive on a provided-buffer ring (`IORING_RECV_MULTISHOT`
//! with `IOSQE_BUFFER_SELECT`, Linux 6.0): one submission keeps receiving,
//! each time data arrives into a buffer the kernel takes from the ring,
//! until it fails, the peer closes, the ring is empty (`ENOBUFS`), it is
//! cancelled or (Linux 6.17) it has received the bytes it was armed for.
//! Added for ringgate (see FORK.md); io_uring only.

use std::{
    cell::UnsafeCell,
    io,
    rc::Rc,
    task::{Context, Poll},
};

use io_uring::{opcode, types};

use super::{super::shared_fd::SharedFd, recv_select::buffer_of};
use crate::driver::{Inner, UringInner, CURRENT};

/// A connection's multishot receive. Completions are taken one by one
/// with [`MultiRecv::poll_next`]; dropped, it is cancelled, and buffers
/// of completions nobody took are listed by `buf_ring::take_orphaned`.
pub struct MultiRecv {
    driver: Rc<UnsafeCell<UringInner>>,
    index: usize,
    /// Keeps the file open while the kernel may still receive on it.
    fd: Option<SharedFd>,
    /// Its last completion was taken.
    done: bool,
}

/// One completion of a [`MultiRecv`].
#[derive(Debug)]
pub struct Received {
    /// Bytes received (0: the peer closed), or the error that ended it
    /// (`ENOBUFS`: the ring was empty; `ECANCELED`: it was cancelled).
    pub result: io::Result<usize>,
    /// The ring buffer holding the bytes, to be given back by its owner.
    pub buffer: Option<u16>,
    /// More completions follow; false on the last one.
    pub more: bool,
}

impl MultiRecv {
    /// Arms a multishot receive on `fd` from buffer ring `group`, holding
    /// at most `held_max` completions not taken before it is cancelled
    /// (the kernel then stops taking buffers for a peer nobody reads).
    /// `limit` (0: none): the receive ends by itself, its last completion
    /// without `more`, once it has received that many bytes (it may go past
    /// them by part of its last buffer). Kernels before 6.17 refuse a limit
    /// with `EINVAL` (in the first completion).
    pub(crate) fn arm(
        fd: SharedFd,
        group: u16,
        held_max: usize,
        limit: u32,
    ) -> io::Result<MultiRecv> {
        let driver = CURRENT.with(|inner| match inner {
            Inner::Uring(this) => Ok(this.clone()),
            #[allow(unreachable_patterns)]
            _ => Err(io::Error::from(io::ErrorKind::Unsupported)),
        })?;
        let mut sqe = opcode::RecvMulti::new(types::Fd(fd.raw_fd()), group).build();
        if limit > 0 {
            set_optlen(&mut sqe, limit);
        }
        let index = UringInner::submit_multi(&driver, sqe, Some(group), held_max)?;
        Ok(MultiRecv {
            driver,
            index,
            fd: Some(fd),
            done: false,
        })
    }

    /// The next completion; `None` after the last one was taken.
    pub fn poll_next(&mut self, cx: &mut Context<'_>) -> Poll<Option<Received>> {
        if self.done {
            return Poll::Ready(None);
        }
        match UringInner::poll_multi(&self.driver, self.index, cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some((result, flags))) => {
                let more = io_uring::cqueue::more(flags);
                Poll::Ready(Some(Received {
                    result: result.map(|n| n as usize),
                    buffer: buffer_of(flags),
                    more,
                }))
            }
        }
    }

    /// The next completion; `None` after the last one was taken.
    pub async fn next(&mut self) -> Option<Received> {
        std::future::poll_fn(|cx| self.poll_next(cx)).await
    }

    /// Asks the kernel to stop receiving; completions already made and the
    /// last one (`ECANCELED`) still come through [`MultiRecv::next`].
    pub fn cancel(&mut self) {
        if !self.done {
            UringInner::cancel_multi(&self.driver, self.index);
        }
    }
}

impl Drop for MultiRecv {
    fn drop(&mut self) {
        if !self.done {
            UringInner::drop_multi(&self.driver, self.index, &mut self.fd);
        }
    }
}

/// Byte offset of the submission's 32-bit `optlen` field (a union with
/// `file_index` and `splice_fd_in`) in the kernel's 64-byte
/// `io_uring_sqe`; io-uring 0.6 has no setter for it on a receive.
const SQE_OPTLEN: usize = 44;

/// Sets a multishot receive's total byte limit (`sqe->optlen`).
fn set_optlen(sqe: &mut io_uring::squeue::Entry, limit: u32) {
    const _: () = assert!(std::mem::size_of::<io_uring::squeue::Entry>() == 64);
    // SAFETY: `Entry` is `repr(C)` around the kernel's `io_uring_sqe`
    // (64 bytes, checked above), whose bytes 44..48 are the `u32` union of
    // `splice_fd_in`, `file_index` and `optlen` (the kernel's ABI, fixed);
    // an unaligned write of a `u32` there leaves every other field as
    // built.
    unsafe {
        let at = (sqe as *mut io_uring::squeue::Entry as *mut u8).add(SQE_OPTLEN);
        std::ptr::write_unaligned(at as *mut u32, limit);
    }
}

impl std::fmt::Debug for MultiRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiRecv").field("index", &self.index).finish()
    }
}
