//! loom models of `Drain`.
#![cfg(loom)]

use loom::future::block_on;
use loom::thread;
use spooky_sync::Drain;

#[test]
fn drain_completes_after_last_permit() {
    loom::model(|| {
        let drain = Drain::new();
        let guards: Vec<_> = (0..2).map(|_| drain.enter().expect("open")).collect();
        let threads: Vec<_> = guards
            .into_iter()
            .map(|g| thread::spawn(move || drop(g)))
            .collect();
        drain.close();
        block_on(drain.wait());
        // Never before: once wait returned, nothing is live.
        assert_eq!(drain.live(), 0);
        threads.into_iter().for_each(|t| t.join().expect("thread"));
    });
}

#[test]
fn drain_refuses_entry_after_close() {
    loom::model(|| {
        let drain = Drain::new();
        let closer = {
            let d = drain.clone();
            thread::spawn(move || d.close())
        };
        let early = drain.enter();
        closer.join().expect("thread");
        assert!(drain.enter().is_err());
        drop(early);
        block_on(drain.wait());
        assert_eq!(drain.live(), 0);
    });
}
