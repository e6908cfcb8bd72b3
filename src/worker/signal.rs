//! Small synchronisation pieces for one worker's tasks and for the one
//! cross-thread signal a worker needs today (stop).
//!
//! - [`Notify`]: single-threaded "wake everyone waiting for a condition".
//! - [`StopSignal`]: set by any thread, awaited by the worker (monoio's `sync`
//!   feature makes a task's waker callable from another thread).
//! - [`race`]: poll two futures, return the first to finish.
//! - [`CatchUnwind`]: keeps a panic in one connection from taking the worker down.
//! - [`boxed`]: a future built in its box, not built on the stack and copied.

use std::any::Any;
use std::cell::RefCell;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Waker};

use atomic_waker::AtomicWaker;
use slab::Slab;

/// Wakes every task waiting on a condition when the condition may have changed.
#[derive(Default)]
pub struct Notify {
    waiters: RefCell<Slab<Waker>>,
}

impl Notify {
    /// Wakes all current waiters; each re-checks its own condition.
    pub fn notify_all(&self) {
        for (_, waker) in self.waiters.borrow().iter() {
            waker.wake_by_ref();
        }
    }

    /// Resolves once `condition()` holds, re-checking after each notification.
    pub fn wait_until<F: Fn() -> bool>(&self, condition: F) -> WaitUntil<'_, F> {
        WaitUntil {
            notify: self,
            condition,
            key: None,
        }
    }
}

pub struct WaitUntil<'a, F: Fn() -> bool> {
    notify: &'a Notify,
    condition: F,
    key: Option<usize>,
}

impl<F: Fn() -> bool> Future for WaitUntil<'_, F> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if (this.condition)() {
            if let Some(key) = this.key.take() {
                this.notify.waiters.borrow_mut().remove(key);
            }
            return Poll::Ready(());
        }
        let mut waiters = this.notify.waiters.borrow_mut();
        match this.key {
            Some(key) => {
                if !waiters[key].will_wake(cx.waker()) {
                    waiters[key] = cx.waker().clone();
                }
            }
            None => this.key = Some(waiters.insert(cx.waker().clone())),
        }
        Poll::Pending
    }
}

impl<F: Fn() -> bool> Drop for WaitUntil<'_, F> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.notify.waiters.borrow_mut().remove(key);
        }
    }
}

// Holds only a shared reference, the condition and a slab key: nothing self-referential.
impl<F: Fn() -> bool> Unpin for WaitUntil<'_, F> {}

/// A stop request from another thread (the main thread or a [`crate::Handle`]).
#[derive(Default)]
pub struct StopSignal {
    stopped: AtomicBool,
    waker: AtomicWaker,
}

impl StopSignal {
    /// Callable from any thread, any number of times.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        self.waker.wake();
    }

    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    /// Resolves once [`StopSignal::stop`] was called.
    pub async fn stopped(&self) {
        std::future::poll_fn(|cx| {
            self.waker.register(cx.waker());
            if self.is_stopped() {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }
}

/// Which of two raced futures finished first.
pub enum Either<A, B> {
    Left(A),
    Right(B),
}

pin_project_lite::pin_project! {
    /// Two futures polled in turn until one finishes ([`race`]). A plain
    /// struct, not an `async fn`: an `async fn` would hold both futures
    /// twice (as its arguments and as its pinned locals), and every idle
    /// connection waits in a race.
    pub struct Race<A, B> {
        #[pin]
        a: A,
        #[pin]
        b: B,
    }
}

/// Polls `a` then `b` until one finishes; the other is dropped (monoio
/// cancels a dropped in-flight io_uring operation).
pub fn race<A: Future, B: Future>(a: A, b: B) -> Race<A, B> {
    Race { a, b }
}

impl<A: Future, B: Future> Future for Race<A, B> {
    type Output = Either<A::Output, B::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(v) = this.a.poll(cx) {
            return Poll::Ready(Either::Left(v));
        }
        if let Poll::Ready(v) = this.b.poll(cx) {
            return Poll::Ready(Either::Right(v));
        }
        Poll::Pending
    }
}

pin_project_lite::pin_project! {
    /// Runs a future, turning a panic inside it into an `Err` instead of
    /// unwinding through the worker's event loop. The future is held in
    /// place (a connection task holds it once, with no box of its own).
    pub struct CatchUnwind<F> {
        #[pin]
        inner: F,
    }
}

impl<F: Future> CatchUnwind<F> {
    pub fn new(future: F) -> Self {
        CatchUnwind { inner: future }
    }
}

impl<F: Future> Future for CatchUnwind<F> {
    type Output = Result<F::Output, Box<dyn Any + Send>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let inner = self.project().inner;
        match std::panic::catch_unwind(AssertUnwindSafe(move || inner.poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Err(panic) => Poll::Ready(Err(panic)),
        }
    }
}

/// `Box::pin(make())`, with the box allocated first so that the compiler
/// can build the future in it. `Box::pin(f)` evaluates `f` on the stack and
/// then copies it: a future's size is that of its largest state, so a
/// request's exchange (KiB) was copied whole, though only its arguments had
/// been written. Used where a request boxes its next stage.
#[inline(always)]
pub fn boxed<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let mut slot = Box::<F>::new_uninit();
    slot.write(make());
    // SAFETY: the slot was written on the line above.
    Box::into_pin(unsafe { slot.assume_init() })
}

/// A readable message from a panic payload.
pub fn panic_message(panic: &(dyn Any + Send)) -> &str {
    if let Some(s) = panic.downcast_ref::<&str>() {
        s
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s
    } else {
        "non-string panic"
    }
}
