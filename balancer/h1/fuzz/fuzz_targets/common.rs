//! What the head targets share: limits, and reading a head whole and in pieces.

use pier_h1::head::{HeadError, HeadLimits, HeaderList};

pub const LIMITS: HeadLimits = HeadLimits {
    max_line: 2048,
    max_head: 8192,
    max_headers: 64,
};
/// For the heads pier writes, which gain fields of pier's own.
pub const WIDE: HeadLimits = HeadLimits {
    max_line: 1 << 20,
    max_head: 1 << 20,
    max_headers: 1024,
};

pub type Parsed<P> = Result<Option<(usize, P)>, HeadError>;

/// Feeds `data` to `parse` (a `HeadGate` reading with its field list) `piece` bytes more at a
/// time, as reads would, until it answers or the input ends; then checks the answer against
/// `whole`, the parse of all of `data` at once.
pub fn check_pieces<P: std::fmt::Debug>(
    data: &[u8],
    piece: usize,
    whole: &Parsed<P>,
    mut parse: impl FnMut(&[u8], &mut HeaderList) -> Parsed<P>,
) {
    let mut spare = HeaderList::new();
    let mut end = 0;
    let gated = loop {
        end = (end + piece).min(data.len());
        let r = parse(&data[..end], &mut spare);
        if !matches!(r, Ok(None)) || end == data.len() {
            break r;
        }
    };
    match (whole, &gated) {
        (Ok(Some((a, pa))), Ok(Some((b, pb)))) => {
            assert_eq!(a, b, "head length");
            assert_eq!(format!("{pa:?}"), format!("{pb:?}"), "parts");
        }
        (Ok(None), Ok(None)) => {}
        // Over a limit is seen as soon as the bytes are in, so read in pieces it can come
        // before a malformation that the whole input shows first.
        (Err(a), Err(b)) if !a.is_limit() && !b.is_limit() => assert_eq!(a, b, "refusal"),
        (Err(_), Err(_)) => {}
        // A malformed head that has not ended yet is refused once it ends, or is over a
        // limit: until then the gate waits without parsing again.
        (Err(_), Ok(None)) => {}
        (w, g) => panic!("whole {w:?} but in pieces {g:?}"),
    }
}

/// The head as text, for assertion messages.
pub fn text(head: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(head)
}
