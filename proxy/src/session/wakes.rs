//! Which of a session's event sources woke it.
//!
//! A session waits on up to six things at once: reading and writing each of its two sockets, the
//! server's phase (for shutdown) and, with the cache, an identical miss in flight. Polling all of
//! them on every wake-up is what `select!` does, and each socket polled while idle takes a lock in
//! tokio's I/O driver to re-register a waker that is still registered. A round trip wakes a session
//! twice, once per side, so most of those polls found nothing. Here each source is polled with a
//! waker of its own that marks it due before waking the session's task, and the event loop polls
//! only sources that are due: those that woke it, and those that have not parked since they last
//! reported something.

use std::future::Future;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use atomic_waker::AtomicWaker;

/// One of a session's event sources, as a bit of the due set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Source(u8);

impl Source {
    /// Reading from the client.
    pub const CLIENT_READ: Source = Source(1);
    /// Writing to the client.
    pub const CLIENT_WRITE: Source = Source(1 << 1);
    /// Reading from the upstream.
    pub const UPSTREAM_READ: Source = Source(1 << 2);
    /// Writing to the upstream.
    pub const UPSTREAM_WRITE: Source = Source(1 << 3);
    /// The server's phase.
    pub const PHASE: Source = Source(1 << 4);

    const ALL: [Source; 5] = [
        Source::CLIENT_READ,
        Source::CLIENT_WRITE,
        Source::UPSTREAM_READ,
        Source::UPSTREAM_WRITE,
        Source::PHASE,
    ];

    fn index(self) -> usize {
        self.0.trailing_zeros() as usize
    }
}

/// The due set of one session and the wakers that fill it.
pub struct Wakes {
    shared: Arc<Shared>,
    /// One per [`Source`], by bit number.
    wakers: [Waker; Source::ALL.len()],
}

struct Shared {
    /// Sources that may have something to report.
    due: AtomicU8,
    /// The session task's own waker, which every source waker passes the wake-up on to.
    task: AtomicWaker,
}

/// The waker a source is polled with: it marks `bits` due and wakes the task.
struct SourceWaker {
    shared: Arc<Shared>,
    bits: u8,
}

impl Wake for SourceWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.shared.due.fetch_or(self.bits, Ordering::AcqRel);
        self.shared.task.wake();
    }
}

impl Wakes {
    /// Every source starts due: none has parked yet.
    ///
    /// A TLS side drives one state machine from both halves, and either half may wait on the socket
    /// in the other direction (a read can need a write, during a key update). The socket keeps one
    /// waker per direction, so one half's waker can replace the other's; on such a side reading and
    /// writing therefore share one waker that marks both due.
    pub fn new(client_tls: bool, upstream_tls: bool) -> Wakes {
        let shared = Arc::new(Shared {
            due: AtomicU8::new(u8::MAX),
            task: AtomicWaker::new(),
        });
        let bits = |source: Source| {
            let side = match source {
                Source::CLIENT_READ | Source::CLIENT_WRITE if client_tls => {
                    Source::CLIENT_READ.0 | Source::CLIENT_WRITE.0
                }
                Source::UPSTREAM_READ | Source::UPSTREAM_WRITE if upstream_tls => {
                    Source::UPSTREAM_READ.0 | Source::UPSTREAM_WRITE.0
                }
                _ => source.0,
            };
            Waker::from(Arc::new(SourceWaker {
                shared: Arc::clone(&shared),
                bits: side,
            }))
        };
        Wakes {
            wakers: Source::ALL.map(bits),
            shared,
        }
    }

    /// Records the task's waker for the source wakers to pass the next wake-up on to; called on every
    /// poll of the event loop. Wake-ups while the task is busy elsewhere only mark sources due: the
    /// loop looks at them when it next polls.
    pub fn register(&self, task: &Waker) {
        self.shared.task.register(task);
    }

    /// Polls `future` for `source` once, with the source's waker, if the source is due; `Pending` if
    /// it is not. The source stays due when the future is ready (it has not parked)
    /// and stops being due when it is pending, until its waker fires. The futures polled so must be
    /// cancel-safe and leave nothing behind when dropped but the waker registered with the socket or
    /// watch they wait on.
    pub fn poll<F: Future>(&self, source: Source, future: F) -> Poll<F::Output> {
        // Cleared before the poll: a wake-up that arrives during it marks the source due again.
        if self.shared.due.fetch_and(!source.0, Ordering::AcqRel) & source.0 == 0 {
            return Poll::Pending;
        }
        let waker = &self.wakers[source.index()];
        let polled = std::pin::pin!(future).poll(&mut Context::from_waker(waker));
        if polled.is_ready() {
            self.keep(source);
        }
        polled
    }

    /// Marks `source` due, so that the next wait polls it whether or not its waker fired.
    pub fn keep(&self, source: Source) {
        self.shared.due.fetch_or(source.0, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use std::future::{pending, poll_fn, ready};

    use super::*;

    /// Counts the wake-ups it is given.
    #[derive(Default)]
    struct Counter(std::sync::atomic::AtomicUsize);

    impl Wake for Counter {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Polls `source` with a future that stays pending and hands out the waker it was polled with.
    fn park(wakes: &Wakes, source: Source) -> Waker {
        let mut parked = None;
        let polled = wakes.poll(
            source,
            poll_fn(|cx| {
                parked = Some(cx.waker().clone());
                Poll::<()>::Pending
            }),
        );
        assert!(polled.is_pending());
        parked.expect("a due source is polled")
    }

    #[test]
    fn a_source_is_polled_until_it_parks_and_again_once_woken() {
        let wakes = Wakes::new(false, false);
        let task = Arc::new(Counter::default());
        wakes.register(&Waker::from(Arc::clone(&task)));
        for source in Source::ALL {
            assert_eq!(wakes.poll(source, ready(1)), Poll::Ready(1), "starts due");
            assert_eq!(wakes.poll(source, ready(2)), Poll::Ready(2), "stays due");
        }
        let upstream = park(&wakes, Source::UPSTREAM_READ);
        assert!(wakes.poll(Source::UPSTREAM_READ, ready(())).is_pending());
        assert!(wakes.poll(Source::CLIENT_READ, ready(())).is_ready());
        upstream.wake();
        assert_eq!(task.0.load(Ordering::Relaxed), 1, "the task is woken");
        assert!(wakes
            .poll(Source::UPSTREAM_READ, pending::<()>())
            .is_pending());
        assert!(wakes.poll(Source::UPSTREAM_READ, ready(())).is_pending());
        wakes.keep(Source::UPSTREAM_READ);
        assert!(wakes.poll(Source::UPSTREAM_READ, ready(())).is_ready());
    }

    #[test]
    fn a_tls_side_wakes_both_its_directions() {
        let wakes = Wakes::new(true, false);
        let client = park(&wakes, Source::CLIENT_READ);
        park(&wakes, Source::CLIENT_WRITE);
        let upstream = park(&wakes, Source::UPSTREAM_READ);
        park(&wakes, Source::UPSTREAM_WRITE);
        client.wake();
        upstream.wake();
        assert!(wakes.poll(Source::CLIENT_WRITE, ready(())).is_ready());
        assert!(wakes.poll(Source::UPSTREAM_READ, ready(())).is_ready());
        assert!(wakes.poll(Source::UPSTREAM_WRITE, ready(())).is_pending());
    }
}
