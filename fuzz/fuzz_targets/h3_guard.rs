//! The HTTP/3 request-stream guard (first HEADERS frame, body frames, trailers): never panics,
//! and what h3 reads does not depend on how the stream's bytes arrived.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spooky_stages::adapters::h3::guard::scan_bytes;

fuzz_target!(|data: &[u8]| {
    let Some((&first, input)) = data.split_first() else {
        return;
    };
    let step = usize::from(first % 32) + 1;
    let limit = 1024;
    let whole = scan_bytes(input, input.len().max(1), limit);
    let split = scan_bytes(input, step, limit);
    assert_eq!(whole, split, "read sizes changed what h3 reads");
    if whole.1.is_none() {
        assert_eq!(whole.0, input, "nothing refused, nothing changed");
    }
});
