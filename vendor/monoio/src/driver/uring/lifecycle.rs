//! Uring state lifecycle.
//! Partly borrow from tokio-uring.

use std::{
    collections::VecDeque,
    io,
    task::{Context, Poll, Waker},
};

use crate::{
    driver::op::{recv_select::RecvSelect, CompletionMeta},
    utils::slab::Ref,
};

std::thread_local! {
    /// Provided buffers the kernel filled for operations nobody waits for
    /// any more (dropped before or after they completed): (group, id), for
    /// the application to give back to their ring (`crate::buf_ring`).
    pub(crate) static ORPHANED: std::cell::RefCell<Vec<(u16, u16)>> =
        const { std::cell::RefCell::new(Vec::new()) };
    /// Operations dropped while in flight (`Ignored`, `MultiIgnored`) whose
    /// last completion has not come: each keeps what it holds (a file, for
    /// a close or a cancelled receive) until then.
    pub(crate) static ABANDONED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// Forgets this thread's abandoned operations and orphaned buffers: its
/// io_uring closing ends them all, with the buffer rings they came from, so
/// a runtime started on the thread later begins with none (one ended with
/// operations still abandoned made the next one wait for them).
pub(crate) fn forget_thread_state() {
    ORPHANED.with(|o| o.borrow_mut().clear());
    ABANDONED.with(|n| n.set(0));
}

fn abandoned(delta: isize) {
    ABANDONED.with(|n| n.set(n.get().saturating_add_signed(delta)));
}

/// Keeps a provided buffer an abandoned receive took.
fn orphan(group: Option<u16>, flags: u32) {
    if let (Some(group), Some(id)) = (group, crate::driver::op::recv_select::buffer_of(flags)) {
        ORPHANED.with(|o| o.borrow_mut().push((group, id)));
    }
}

pub(crate) enum Lifecycle {
    /// The operation has been submitted to uring and is currently in-flight
    Submitted,

    /// The submitter is waiting for the completion of the operation
    Waiting(Waker),

    /// The submitter no longer has interest in the operation result. The state
    /// must be passed to the driver and held until the operation completes.
    #[allow(dead_code)]
    Ignored(Box<dyn std::any::Any>),

    /// The operation has completed.
    Completed(io::Result<u32>, u32),

    /// A multishot operation (ringgate, see FORK.md): its completions
    /// queue here until taken.
    Multi(Multi),

    /// A multishot operation nobody takes completions from any more, held
    /// (with its data, which keeps its file open) until its last
    /// completion; provided buffers its completions carry are orphaned.
    MultiIgnored {
        group: Option<u16>,
        #[allow(dead_code)]
        data: Box<dyn std::any::Any>,
    },
}

/// A completion's result and flags.
type Cqe = (io::Result<u32>, u32);

/// A multishot operation's state.
pub(crate) struct Multi {
    waker: Option<Waker>,
    /// The oldest completion not taken, then the others in order: most of
    /// the time there is at most one, held without an allocation (every
    /// armed receive of an idle connection has one of these).
    first: Option<Cqe>,
    queue: VecDeque<Cqe>,
    /// Its last completion (without `IORING_CQE_F_MORE`) came.
    ended: bool,
    /// A cancel was asked for (too many completions held).
    cancelling: bool,
    /// The provided-buffer group its completions take buffers from.
    group: Option<u16>,
    /// Completions held beyond which it is cancelled.
    held_max: usize,
}

impl Multi {
    fn push(&mut self, cqe: Cqe) {
        if self.first.is_none() && self.queue.is_empty() {
            self.first = Some(cqe);
        } else {
            self.queue.push_back(cqe);
        }
    }

    fn pop(&mut self) -> Option<Cqe> {
        if let Some(cqe) = self.first.take() {
            return Some(cqe);
        }
        let cqe = self.queue.pop_front();
        if self.queue.is_empty() && self.queue.capacity() > 0 {
            // A burst's queue goes with it.
            self.queue = VecDeque::new();
        }
        cqe
    }

    fn held(&self) -> usize {
        usize::from(self.first.is_some()) + self.queue.len()
    }

    pub(crate) fn new(group: Option<u16>, held_max: usize) -> Multi {
        Multi {
            waker: None,
            first: None,
            queue: VecDeque::new(),
            ended: false,
            cancelling: false,
            group,
            held_max: held_max.max(1),
        }
    }
}

/// `IORING_CQE_F_MORE`: more completions follow for this operation.
fn more(flags: u32) -> bool {
    io_uring::cqueue::more(flags)
}

impl<'a> Ref<'a, Lifecycle> {
    /// Records a completion; true when the operation (multishot) holds too
    /// many completions and should be cancelled.
    pub(crate) fn complete(mut self, result: io::Result<u32>, flags: u32) -> bool {
        let ref_mut = &mut *self;
        match ref_mut {
            Lifecycle::Multi(m) => {
                m.push((result, flags));
                if !more(flags) {
                    m.ended = true;
                }
                if let Some(waker) = m.waker.take() {
                    waker.wake();
                }
                if !m.ended && !m.cancelling && m.held() >= m.held_max {
                    m.cancelling = true;
                    return true;
                }
            }
            Lifecycle::MultiIgnored { group, .. } => {
                orphan(*group, flags);
                if !more(flags) {
                    self.remove();
                    abandoned(-1);
                }
            }
            Lifecycle::Submitted => {
                *ref_mut = Lifecycle::Completed(result, flags);
            }
            Lifecycle::Waiting(_) => {
                let old = std::mem::replace(ref_mut, Lifecycle::Completed(result, flags));
                match old {
                    Lifecycle::Waiting(waker) => {
                        waker.wake();
                    }
                    _ => unsafe { std::hint::unreachable_unchecked() },
                }
            }
            Lifecycle::Ignored(data) => {
                let group = data.downcast_ref::<RecvSelect>().map(|r| r.group);
                orphan(group, flags);
                self.remove();
                abandoned(-1);
            }
            Lifecycle::Completed(..) => unsafe { std::hint::unreachable_unchecked() },
        }
        false
    }

    /// The next completion of a multishot operation; `None` once its last
    /// one was taken (the slot is then freed).
    pub(crate) fn poll_multi(mut self, cx: &mut Context<'_>) -> Poll<Option<(io::Result<u32>, u32)>> {
        let Lifecycle::Multi(m) = &mut *self else {
            return Poll::Ready(None);
        };
        if let Some(completion) = m.pop() {
            return Poll::Ready(Some(completion));
        }
        if m.ended {
            self.remove();
            return Poll::Ready(None);
        }
        match &m.waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            _ => m.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    /// Drops a multishot operation's interest: buffers of completions not
    /// taken are orphaned; true when it had ended (the slot is freed),
    /// false when it goes on until cancelled (the slot then keeps `data`).
    pub(crate) fn drop_multi<T: 'static>(mut self, data: &mut Option<T>) -> bool {
        let Lifecycle::Multi(m) = &mut *self else {
            return true;
        };
        while let Some((_, flags)) = m.pop() {
            orphan(m.group, flags);
        }
        if m.ended {
            self.remove();
            return true;
        }
        let group = m.group;
        let data: Box<dyn std::any::Any> = match data.take() {
            Some(data) => Box::new(data),
            None => Box::new(()),
        };
        *self = Lifecycle::MultiIgnored { group, data };
        abandoned(1);
        false
    }

    #[allow(clippy::needless_pass_by_ref_mut)]
    pub(crate) fn poll_op(mut self, cx: &mut Context<'_>) -> Poll<CompletionMeta> {
        let ref_mut = &mut *self;
        match ref_mut {
            Lifecycle::Submitted => {
                *ref_mut = Lifecycle::Waiting(cx.waker().clone());
                return Poll::Pending;
            }
            Lifecycle::Waiting(waker) => {
                if !waker.will_wake(cx.waker()) {
                    *ref_mut = Lifecycle::Waiting(cx.waker().clone());
                }
                return Poll::Pending;
            }
            _ => {}
        }

        match self.remove() {
            Lifecycle::Completed(result, flags) => Poll::Ready(CompletionMeta { result, flags }),
            _ => unsafe { std::hint::unreachable_unchecked() },
        }
    }

    // return if the op must has been finished
    pub(crate) fn drop_op<T: 'static>(mut self, data: &mut Option<T>) -> bool {
        let ref_mut = &mut *self;
        match ref_mut {
            Lifecycle::Submitted | Lifecycle::Waiting(_) => {
                if let Some(data) = data.take() {
                    *ref_mut = Lifecycle::Ignored(Box::new(data));
                } else {
                    *ref_mut = Lifecycle::Ignored(Box::new(())); // () is a ZST, so it does not
                                                                 // allocate
                };
                abandoned(1);
                return false;
            }
            Lifecycle::Completed(_, flags) => {
                let flags = *flags;
                let any: &dyn std::any::Any = &*data;
                let group = any
                    .downcast_ref::<Option<RecvSelect>>()
                    .and_then(|r| r.as_ref().map(|r| r.group));
                orphan(group, flags);
                self.remove();
            }
            Lifecycle::Ignored(..) | Lifecycle::Multi(_) | Lifecycle::MultiIgnored { .. } => unsafe {
                std::hint::unreachable_unchecked()
            },
        }
        true
    }
}
