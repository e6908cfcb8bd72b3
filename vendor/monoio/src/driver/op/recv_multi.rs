//! A multishot receive on a provided-buffer ring (`IORING_RECV_MULTISHOT`
//! with `IOSQE_BUFFER_SELECT`, Linux 6.0): one submission keeps receiving,
//! each time data arrives into a buffer the kernel takes from the ring,
//! until it fails, the peer closes, the ring is empty (`ENOBUFS`) or it is
//! cancelled. Added for ringgate (see FORK.md); io_uring only.

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
    pub(crate) fn arm(fd: SharedFd, group: u16, held_max: usize) -> io::Result<MultiRecv> {
        let driver = CURRENT.with(|inner| match inner {
            Inner::Uring(this) => Ok(this.clone()),
            #[allow(unreachable_patterns)]
            _ => Err(io::Error::from(io::ErrorKind::Unsupported)),
        })?;
        let sqe = opcode::RecvMulti::new(types::Fd(fd.raw_fd()), group).build();
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

impl std::fmt::Debug for MultiRecv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MultiRecv").field("index", &self.index).finish()
    }
}
