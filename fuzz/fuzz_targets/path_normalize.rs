//! Path normalization: never panics; its output starts with `/`, holds no dot segment and (when
//! merging) no `//`, and normalizing it again changes nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use spooky_stages::http::path::{EncodedSlashes, MergeSlashes, Rules, normalize};

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let Ok(path) = std::str::from_utf8(rest) else {
        return;
    };
    let rules = Rules {
        merge_slashes: if first & 1 == 0 {
            MergeSlashes::Merge
        } else {
            MergeSlashes::Keep
        },
        encoded_slashes: if first & 2 == 0 {
            EncodedSlashes::Reject
        } else {
            EncodedSlashes::Keep
        },
    };
    let Ok(once) = normalize(path, rules) else {
        return;
    };
    assert!(once.starts_with('/'));
    for seg in once.split('/') {
        assert!(
            seg != "." && seg != "..",
            "dot segment in {once:?} (from {path:?})"
        );
    }
    if rules.merge_slashes == MergeSlashes::Merge {
        assert!(!once.contains("//"), "// in {once:?} (from {path:?})");
    }
    let twice = normalize(&once, rules).expect("a normal path stays valid");
    assert_eq!(once, twice, "normalizing twice changed {path:?}");
});
