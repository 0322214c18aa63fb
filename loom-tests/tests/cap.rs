//! loom models of `Cap`: the inflight cap and its permits.
#![cfg(loom)]

use loom::future::block_on;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::thread;
use spooky_sync::{Cap, Closed, TryAcquireError};

/// Holders of a permit, checked against the limit on every entry.
fn enter(holders: &AtomicUsize, limit: usize) {
    let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
    assert!(now <= limit, "{now} holders with a limit of {limit}");
}

#[test]
fn cap_never_exceeded() {
    loom::model(|| {
        let cap = Cap::new(1);
        let holders = Arc::new(AtomicUsize::new(0));
        let threads: Vec<_> = (0..2)
            .map(|_| {
                let (cap, holders) = (cap.clone(), holders.clone());
                thread::spawn(move || {
                    let permit = block_on(cap.acquire()).expect("open");
                    enter(&holders, 1);
                    holders.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                })
            })
            .collect();
        if let Ok(p) = cap.try_acquire() {
            enter(&holders, 1);
            holders.fetch_sub(1, Ordering::SeqCst);
            drop(p);
        }
        threads.into_iter().for_each(|t| t.join().expect("thread"));
        assert_eq!(cap.in_use(), 0);
        assert_eq!(cap.waiting(), 0);
    });
}

#[test]
fn permit_released_on_drop() {
    loom::model(|| {
        let cap = Cap::new(3);
        let t = {
            let cap = cap.clone();
            thread::spawn(move || {
                let _a = cap.try_acquire().expect("free");
                let _b = cap.try_acquire().expect("free");
            })
        };
        let _ = cap.try_acquire();
        t.join().expect("thread");
        assert_eq!(cap.in_use(), 0);
    });
}

#[test]
fn permit_released_on_cancel() {
    // A waiter is cancelled (its future dropped) while the holder releases: whether the slot was
    // already handed to the waiter or not, it must come back.
    loom::model(|| {
        let cap = Cap::new(1);
        let held = cap.try_acquire().expect("free");
        let waiter = {
            let cap = cap.clone();
            thread::spawn(move || {
                let mut fut = Box::pin(cap.acquire());
                // Poll once to queue up, then cancel.
                let _ = block_on(futures_poll_once(fut.as_mut()));
                drop(fut);
            })
        };
        drop(held);
        waiter.join().expect("thread");
        assert_eq!(cap.in_use(), 0);
        assert_eq!(cap.waiting(), 0);
        assert!(cap.try_acquire().is_ok());
    });
}

#[test]
fn close_wakes_all_waiters() {
    loom::model(|| {
        let cap = Cap::new(1);
        let held = cap.try_acquire().expect("free");
        let waiters: Vec<_> = (0..2)
            .map(|_| {
                let cap = cap.clone();
                thread::spawn(move || block_on(cap.acquire()).map(drop))
            })
            .collect();
        cap.close();
        for w in waiters {
            assert_eq!(w.join().expect("thread"), Err(Closed));
        }
        drop(held);
        assert_eq!(cap.in_use(), 0);
    });
}

#[test]
fn acquire_after_close_fails() {
    loom::model(|| {
        let cap = Cap::new(2);
        let closer = {
            let cap = cap.clone();
            thread::spawn(move || cap.close())
        };
        let before = cap.try_acquire();
        closer.join().expect("thread");
        assert_eq!(cap.try_acquire().err(), Some(TryAcquireError::Closed));
        assert!(block_on(cap.acquire()).is_err());
        drop(before);
        assert_eq!(cap.in_use(), 0);
    });
}

/// Polls a future once, reporting whether it finished.
fn futures_poll_once<F: std::future::Future + Unpin>(
    mut f: F,
) -> impl std::future::Future<Output = bool> {
    std::future::poll_fn(move |cx| {
        std::task::Poll::Ready(std::pin::Pin::new(&mut f).poll(cx).is_ready())
    })
}

#[test]
fn a_changing_limit_never_grants_past_it() {
    loom::model(|| {
        let cap = Cap::new(1);
        let holders = Arc::new(AtomicUsize::new(0));
        let first = cap.try_acquire().expect("free");
        // A waiter, while the limit is lowered to zero and raised back to one concurrently.
        let waiter = {
            let (cap, holders) = (cap.clone(), holders.clone());
            thread::spawn(move || {
                let permit = block_on(cap.acquire()).expect("open");
                let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
                assert!(now <= 1, "{now} holders");
                holders.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
            })
        };
        let setter = {
            let cap = cap.clone();
            thread::spawn(move || {
                cap.set_limit(0);
                cap.set_limit(1);
            })
        };
        let now = holders.fetch_add(1, Ordering::SeqCst) + 1;
        assert!(now <= 1, "{now} holders");
        holders.fetch_sub(1, Ordering::SeqCst);
        drop(first);
        setter.join().expect("thread");
        waiter.join().expect("thread");
        assert_eq!(cap.in_use(), 0);
        assert_eq!(cap.waiting(), 0);
    });
}
