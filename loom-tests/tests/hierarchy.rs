//! loom models of the hierarchical acquire (global → upstream → backend).
#![cfg(loom)]

use loom::thread;
use spooky_sync::{Cap, TryAcquireError, try_acquire_all};

#[test]
fn hierarchy_all_or_nothing() {
    // Two exchanges race for global(2) → upstream(2) → backend(1): exactly the caps of the
    // winner are held, and the loser leaks nothing at the levels it did get.
    loom::model(|| {
        let (g, u, b) = (Cap::new(2), Cap::new(2), Cap::new(1));
        let t = {
            let (g, u, b) = (g.clone(), u.clone(), b.clone());
            thread::spawn(move || try_acquire_all(&[&g, &u, &b]).map(|s| s.len()))
        };
        let mine = try_acquire_all(&[&g, &u, &b]);
        let theirs = t.join().expect("thread");
        let won = usize::from(mine.is_ok()) + usize::from(theirs.is_ok());
        assert!(won >= 1, "one of them must win");
        assert_eq!(g.in_use(), usize::from(mine.is_ok()));
        if let Err(e) = &mine {
            assert_eq!((e.level, e.error), (2, TryAcquireError::Full));
        }
        drop(mine);
        assert_eq!((g.in_use(), u.in_use(), b.in_use()), (0, 0, 0));
    });
}
