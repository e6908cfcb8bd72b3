//! A receive whose buffer the kernel picks, when data arrives, from a ring
//! of buffers the application provided (`IOSQE_BUFFER_SELECT`, Linux 5.19
//! for buffer rings): a waiting receive holds no buffer. Added for ringgate
//! (see FORK.md); io_uring only.

use std::io;

#[cfg(all(target_os = "linux", feature = "iouring"))]
use io_uring::{opcode, squeue, types};

use super::{super::shared_fd::SharedFd, Op, OpAble};
#[cfg(any(feature = "legacy", feature = "poll-io"))]
use crate::driver::ready::Direction;

pub(crate) struct RecvSelect {
    /// Holds a strong ref to the FD, preventing the file from being closed
    /// while the operation is in-flight.
    #[allow(unused)]
    fd: SharedFd,
    /// The most bytes one receive takes (at most a buffer's length).
    len: u32,
    /// The buffer ring's group id.
    pub(crate) group: u16,
}

impl Op<RecvSelect> {
    pub(crate) fn recv_select(fd: SharedFd, group: u16, len: u32) -> io::Result<Self> {
        Op::submit_with(RecvSelect { fd, len, group })
    }

    /// The bytes received and the id of the buffer they are in (none when
    /// the kernel took no buffer, as at the end of the stream).
    pub(crate) async fn received(self) -> io::Result<(usize, Option<u16>)> {
        let complete = self.await;
        let n = complete.meta.result?;
        Ok((n as usize, buffer_of(complete.meta.flags)))
    }
}

/// The buffer id a completion's flags carry (`IORING_CQE_F_BUFFER`).
pub(crate) fn buffer_of(flags: u32) -> Option<u16> {
    const F_BUFFER: u32 = 1;
    const BUFFER_SHIFT: u32 = 16;
    (flags & F_BUFFER != 0).then_some((flags >> BUFFER_SHIFT) as u16)
}

impl OpAble for RecvSelect {
    #[cfg(all(target_os = "linux", feature = "iouring"))]
    fn uring_op(&mut self) -> io_uring::squeue::Entry {
        opcode::Recv::new(types::Fd(self.fd.raw_fd()), std::ptr::null_mut(), self.len)
            .buf_group(self.group)
            .build()
            .flags(squeue::Flags::BUFFER_SELECT)
    }

    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    #[inline]
    fn legacy_interest(&self) -> Option<(Direction, usize)> {
        self.fd.registered_index().map(|idx| (Direction::Read, idx))
    }

    #[cfg(any(feature = "legacy", feature = "poll-io"))]
    fn legacy_call(&mut self) -> io::Result<u32> {
        Err(io::ErrorKind::Unsupported.into())
    }
}
