//! Unit tests of the HTTP/3 guard: field checks, frame finding, and the stream scan at every
//! read size.

use super::fields::check_fields;
use super::scan::{BAD_TRAILERS, Found, first_headers};
use super::*;

/// A field section of literal names (no Huffman), as a peer might write it.
fn section(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0, 0];
    for (n, v) in fields {
        // Name length: 3-bit prefix, then one continuation byte (names here are short).
        if n.len() < 7 {
            b.push(0x20 | n.len() as u8);
        } else {
            b.push(0x27);
            b.push((n.len() - 7) as u8);
        }
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

const GOOD: [(&str, &str); 4] = [
    (":method", "GET"),
    (":scheme", "https"),
    (":authority", "localhost"),
    (":path", "/"),
];

#[test]
fn order_and_repeats() {
    let ok = [&GOOD[..], &[("x-a", "1")]].concat();
    assert_eq!(check_fields(&section(&ok)), Ok(()));
    let after = [&GOOD[..1], &[("x-a", "1")], &GOOD[1..]].concat();
    assert_eq!(
        check_fields(&section(&after)),
        Err(Refusal::PseudoAfterField)
    );
    let twice = [&GOOD[..], &[(":path", "/other")]].concat();
    assert_eq!(check_fields(&section(&twice)), Err(Refusal::RepeatedPseudo));
    // Static references: 0xd1 = indexed static 17 (:method GET), 0xc1 = :path /,
    // 0x5f 0x0e = literal with static name 15+14 = 29 (accept, a regular name), value "x".
    let statics = [0, 0, 0xd1, 0xc1, 0x5f, 0x0e, 0x01, b'x', 0xc1];
    assert_eq!(check_fields(&statics), Err(Refusal::PseudoAfterField));
    let statics_twice = [0, 0, 0xd1, 0xd1];
    assert_eq!(check_fields(&statics_twice), Err(Refusal::RepeatedPseudo));
    // A Huffman-coded literal name that starts with ':' (1011100 then padding).
    let huffman = [0, 0, 0x5f, 0x0e, 0x01, b'x', 0x29, 0xb9, 0x00];
    assert_eq!(check_fields(&huffman), Err(Refusal::PseudoAfterField));
}

#[test]
fn what_cannot_be_read_is_left_to_h3() {
    // A dynamic-table reference in the prefix.
    assert_eq!(check_fields(&[0x01, 0x00, 0x80]), Ok(()));
    // Truncated.
    assert_eq!(check_fields(&[0x00, 0x00, 0x2f]), Ok(()));
}

#[test]
fn frames() {
    let block = section(&GOOD);
    let mut stream = vec![0x21, 0x01, 0xff]; // a reserved frame type, one byte
    stream.push(0x01);
    stream.push(block.len() as u8);
    stream.extend_from_slice(&block);
    match first_headers(&stream) {
        Found::Headers { frame, start, end } => {
            assert_eq!(&stream[start..end], &block[..]);
            assert_eq!(frame, 3);
        }
        _ => panic!("HEADERS not found"),
    }
    assert!(matches!(first_headers(&stream[..4]), Found::NeedMore));
    assert!(matches!(first_headers(&[0x00, 0x01, 0x00]), Found::Other));
}

fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![kind];
    match payload.len() {
        n @ 0..64 => f.push(n as u8),
        n => f.extend_from_slice(&(0x4000 | n as u16).to_be_bytes()),
    }
    f.extend_from_slice(payload);
    f
}

#[test]
fn trailers_with_pseudo_headers_are_replaced_whatever_the_read_sizes() {
    let head = frame(0x01, &section(&GOOD));
    // DATA whose payload looks like a HEADERS frame with a pseudo-header: only data.
    let decoy = frame(0x01, &section(&[(":path", "/x")]));
    let good_trailers = frame(0x01, &section(&[("x-t", "1")]));
    let bad_trailers = frame(0x01, &section(&[(":path", "/other")]));
    let mut good = head.clone();
    good.extend(frame(0x00, &decoy));
    good.extend(frame(0x21, b"grease"));
    good.extend(frame(0x00, b"hello"));
    good.extend(&good_trailers);
    let mut bad = good[..good.len() - good_trailers.len()].to_vec();
    bad.extend(&bad_trailers);
    let mut fixed = good[..good.len() - good_trailers.len()].to_vec();
    fixed.extend(BAD_TRAILERS);
    for step in [1, 2, 3, 5, 8, 64, 4096] {
        assert_eq!(
            scan_bytes(&good, step, 4096),
            (good.clone(), None),
            "step {step}"
        );
        assert_eq!(
            scan_bytes(&bad, step, 4096),
            (fixed.clone(), Some(Refusal::PseudoInTrailers)),
            "step {step}"
        );
    }
}

#[test]
fn status_in_a_request_is_refused() {
    let with_status = [&GOOD[..], &[(":status", "200")]].concat();
    assert_eq!(
        check_fields(&section(&with_status)),
        Err(Refusal::ResponsePseudoInRequest)
    );
}

/// Found by fuzzing: whether a head was too large to check depended on how much of the
/// stream had arrived, so the same bytes were refused or passed by their read sizes. The
/// limit now applies to where the frame ends.
#[test]
fn the_limit_is_decided_by_the_frame_not_by_the_reads() {
    let long = "v".repeat(40);
    let after = [&GOOD[..1], &[("x-long", long.as_str())], &GOOD[1..]].concat();
    let stream = frame(0x01, &section(&after));
    let limit = stream.len() - 1;
    for step in [1, 7, stream.len()] {
        assert_eq!(
            scan_bytes(&stream, step, limit),
            (stream.clone(), None),
            "step {step}"
        );
    }
    let mut trailers = frame(0x01, &section(&GOOD));
    let head_len = trailers.len();
    trailers.extend(frame(
        0x01,
        &section(&[(":path", long.as_str()), ("x-pad", long.as_str())]),
    ));
    let limit = trailers.len() - head_len - 1;
    assert!(limit >= head_len);
    for step in [1, 3, trailers.len()] {
        assert_eq!(
            scan_bytes(&trailers, step, limit),
            (trailers.clone(), None),
            "step {step}"
        );
    }
}
