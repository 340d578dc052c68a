//! [`OutOfLine`]: a future polled by a function of its own, for code size.
//!
//! An `async fn` awaited in several places is usually inlined into each
//! caller's state machine; in a firmware that is one copy per call site.
//! Awaited through `OutOfLine`, its poll is one function that every caller
//! calls. It also pays where `async fn`s nest deep (the server's slot, its
//! connection, its loop): inlined, every await point of the innermost one
//! resumes through all the outer ones' state, a cost paid per await.

use core::future::Future;
use core::pin::Pin;
use core::task::{Context, Poll};

/// A pinned future whose poll is never inlined into the caller's.
pub(crate) struct OutOfLine<'p, F>(Pin<&'p mut F>);

impl<'p, F: Future> OutOfLine<'p, F> {
    /// Wraps a future pinned by the caller (`core::pin::pin!`).
    pub(crate) fn new(future: Pin<&'p mut F>) -> Self {
        Self(future)
    }
}

impl<F: Future> Future for OutOfLine<'_, F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}
