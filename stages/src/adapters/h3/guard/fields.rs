//! Field *names* of a QPACK field section (RFC 9204 §4.5) read without decoding values:
//! static-table references, literal names, Huffman-coded names by their first code. Enough to
//! check pseudo-header order, repeats and placement; anything needing the dynamic table is
//! left to h3.

use super::Refusal;

/// A QPACK/HPACK prefixed integer with an `n`-bit prefix (RFC 7541 §5.1) and its size.
fn prefixed(b: &[u8], n: u8) -> Option<(u64, usize)> {
    let max = (1u64 << n) - 1;
    let v = u64::from(*b.first()?) & max;
    if v < max {
        return Some((v, 1));
    }
    let mut v = v;
    let mut shift = 0u32;
    for (i, &x) in b.iter().enumerate().skip(1) {
        if shift > 56 {
            return None;
        }
        v = v.checked_add(u64::from(x & 0x7f) << shift)?;
        shift += 7;
        if x & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// Pseudo-header fields, as bits, for the repeat check.
const METHOD: u8 = 1;
const SCHEME: u8 = 2;
const AUTHORITY: u8 = 4;
const PATH: u8 = 8;
const STATUS: u8 = 16;
const PROTOCOL: u8 = 32;

enum Name {
    Regular,
    /// A pseudo-header: its bit, or 0 when not known (unknown names are h3's to refuse).
    Pseudo(u8),
}

/// The QPACK static table (RFC 9204 Appendix A) by what its names are.
fn static_name(index: u64) -> Option<Name> {
    Some(match index {
        0 => Name::Pseudo(AUTHORITY),
        1 => Name::Pseudo(PATH),
        15..=21 => Name::Pseudo(METHOD),
        22 | 23 => Name::Pseudo(SCHEME),
        24..=28 | 63..=71 => Name::Pseudo(STATUS),
        2..=98 => Name::Regular,
        _ => return None,
    })
}

fn literal_name(name: &[u8], huffman: bool) -> Name {
    if huffman {
        // ':' is the 7-bit Huffman code 1011100 (RFC 7541 Appendix B); codes are prefix-free.
        return match name.first() {
            Some(b) if b >> 1 == 0b101_1100 => Name::Pseudo(0),
            _ => Name::Regular,
        };
    }
    match name {
        b":method" => Name::Pseudo(METHOD),
        b":scheme" => Name::Pseudo(SCHEME),
        b":authority" => Name::Pseudo(AUTHORITY),
        b":path" => Name::Pseudo(PATH),
        b":status" => Name::Pseudo(STATUS),
        b":protocol" => Name::Pseudo(PROTOCOL),
        [b':', ..] => Name::Pseudo(0),
        _ => Name::Regular,
    }
}

/// Skips a string literal with an `n`-bit length prefix; the bytes after it.
fn skip_string(b: &[u8], n: u8) -> Option<&[u8]> {
    let (len, used) = prefixed(b, n)?;
    let len = usize::try_from(len).ok()?;
    b.get(used.checked_add(len)?..)
}

/// Checks the order and uniqueness of pseudo-headers in a request's QPACK field section, and
/// that it holds no response pseudo-header. `Ok` also
/// when the section cannot be read here (h3 reads it then).
pub(super) fn check_fields(block: &[u8]) -> Result<(), Refusal> {
    let Some(fields) = fields_after_prefix(block) else {
        return Ok(());
    };
    let mut b = fields;
    let mut regular = false;
    let mut seen = 0u8;
    while let Some(&first) = b.first() {
        let (name, rest) = match field_line(b, first) {
            Some(x) => x,
            None => return Ok(()),
        };
        b = rest;
        match name {
            Name::Regular => regular = true,
            Name::Pseudo(STATUS) => return Err(Refusal::ResponsePseudoInRequest),
            Name::Pseudo(_) if regular => return Err(Refusal::PseudoAfterField),
            Name::Pseudo(bit) if bit & seen != 0 => return Err(Refusal::RepeatedPseudo),
            Name::Pseudo(bit) => seen |= bit,
        }
    }
    Ok(())
}

/// The field lines after the section prefix, if the section uses no dynamic table.
fn fields_after_prefix(block: &[u8]) -> Option<&[u8]> {
    let (required_insert_count, n) = prefixed(block, 8)?;
    if required_insert_count != 0 {
        return None;
    }
    let (_, m) = prefixed(block.get(n..)?, 7)?;
    block.get(n + m..)
}

/// One field line's name and the bytes after the line (RFC 9204 §4.5).
fn field_line(b: &[u8], first: u8) -> Option<(Name, &[u8])> {
    if first & 0x80 != 0 {
        // Indexed field line: static only.
        if first & 0x40 == 0 {
            return None;
        }
        let (index, n) = prefixed(b, 6)?;
        Some((static_name(index)?, &b[n..]))
    } else if first & 0x40 != 0 {
        // Literal field line with name reference: static only; then the value.
        if first & 0x10 == 0 {
            return None;
        }
        let (index, n) = prefixed(b, 4)?;
        Some((static_name(index)?, skip_string(&b[n..], 7)?))
    } else if first & 0x20 != 0 {
        // Literal field line with literal name; then the value.
        let huffman = first & 0x08 != 0;
        let (len, n) = prefixed(b, 3)?;
        let end = n.checked_add(usize::try_from(len).ok()?)?;
        let name = b.get(n..end)?;
        Some((literal_name(name, huffman), skip_string(&b[end..], 7)?))
    } else {
        // Post-base references need the dynamic table.
        None
    }
}

/// Whether a QPACK field section (readable without the dynamic table) names a pseudo-header.
pub(super) fn has_pseudo(block: &[u8]) -> bool {
    let Some(mut b) = fields_after_prefix(block) else {
        return false;
    };
    while let Some(&first) = b.first() {
        match field_line(b, first) {
            Some((Name::Pseudo(_), _)) => return true,
            Some((Name::Regular, rest)) => b = rest,
            None => return false,
        }
    }
    false
}
