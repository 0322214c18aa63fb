//! loom model of the first-wins latch used by hedging.
#![cfg(loom)]

use loom::thread;
use spooky_sync::{Latch, Race};

#[test]
fn first_wins_exactly_once() {
    loom::model(|| {
        let latch = Latch::new();
        let threads: Vec<_> = (0..3)
            .map(|i| {
                let l = latch.clone();
                thread::spawn(move || l.try_win(i))
            })
            .collect();
        let results: Vec<Race> = threads
            .into_iter()
            .map(|t| t.join().expect("thread"))
            .collect();
        let winners: Vec<usize> = results
            .iter()
            .enumerate()
            .filter(|(_, r)| **r == Race::Won)
            .map(|(i, _)| i)
            .collect();
        assert_eq!(winners.len(), 1);
        assert_eq!(latch.winner(), Some(winners[0]));
        for r in &results {
            if let Race::Lost { winner } = r {
                assert_eq!(*winner, winners[0]);
            }
        }
    });
}
