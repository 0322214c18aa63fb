//! The HTTP/1.1 framing guard (heads, fixed and chunked bodies, refusals): never panics, and
//! what hyper reads does not depend on how the client's bytes were split into reads.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use spooky_stages::adapters::tcp::h1_guard::{H1Guard, Refusals, SYNTHETIC};
use tokio::io::AsyncReadExt;

/// What hyper would read from `input` delivered `step` bytes per read, and the refusal.
fn through(
    input: &[u8],
    step: usize,
) -> (Vec<u8>, Option<(u64, spooky_stages::adapters::tcp::h1_guard::Refusal)>) {
    let reader = Pieces { data: input, step };
    let io = tokio::io::join(reader, tokio::io::sink());
    let refusals = Arc::new(Refusals::default());
    let mut guard = H1Guard::new(io, refusals.clone());
    let mut out = Vec::new();
    futures::executor::block_on(guard.read_to_end(&mut out)).expect("in-memory read");
    // A head takes more than one byte: its index is below the input's length.
    let why = (0..=input.len() as u64).find_map(|i| refusals.take_for(i).map(|r| (i, r)));
    (out, why)
}

/// A reader that hands out at most `step` bytes per read.
struct Pieces<'a> {
    data: &'a [u8],
    step: usize,
}

impl tokio::io::AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = self.step.min(self.data.len()).min(buf.remaining());
        buf.put_slice(&self.data[..n]);
        self.data = &self.data[n..];
        std::task::Poll::Ready(Ok(()))
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 32) + 1;
    let whole = through(input, input.len().max(1));
    let split = through(input, step);
    assert_eq!(whole, split, "read sizes changed what hyper reads");
    match whole.1 {
        // A refusal: everything before it, then the synthetic head, then nothing.
        Some(_) => assert!(whole.0.ends_with(SYNTHETIC)),
        None => assert_eq!(whole.0, input, "nothing refused, nothing changed"),
    }
});
