//! Property tests of the HTTP/1.1 codec on arbitrary network input: it never panics, never
//! reads past what it was given, and what it accepts is well-formed.
#![allow(clippy::unwrap_used)]

use pier_h1::framing::{ChunkedDecoder, Decoded, RequestFraming};
use pier_h1::head::{parse_request, parse_response, HeadLimits};
use proptest::prelude::*;

const LIMITS: HeadLimits = HeadLimits {
    max_line: 512,
    max_head: 2048,
    max_headers: 32,
};

/// Bytes that look like HTTP often enough to reach deep into the parser.
fn http_ish() -> impl Strategy<Value = Vec<u8>> {
    let pieces = prop::sample::select(vec![
        &b"GET "[..],
        b"POST ",
        b"/",
        b"/a?b",
        b" HTTP/1.1",
        b" HTTP/1.0",
        b"HTTP/1.1 200 OK",
        b"\r\n",
        b"\n",
        b"\r",
        b"Host: a.test",
        b"Content-Length: 5",
        b"Transfer-Encoding: chunked",
        b": ",
        b" ",
        b"\t",
        b"\0",
        b"x",
        b"0\r\n\r\n",
        b"5\r\nhello\r\n",
        b";ext",
        b"\xff",
    ]);
    prop::collection::vec(pieces, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn request_parser_never_panics(input in prop_oneof![http_ish(), prop::collection::vec(any::<u8>(), 0..600)]) {
        if let Ok(Some((len, parts))) = parse_request(&input, &LIMITS) {
            prop_assert!(len <= input.len());
            prop_assert!(input[..len].ends_with(b"\r\n\r\n"));
            let head = parts.into_head(bytes::Bytes::copy_from_slice(&input[..len]));
            // Accepted names are tokens, values carry no CR, LF or NUL.
            for h in &head.headers {
                prop_assert!(!head.name(h).is_empty());
                prop_assert!(!head.value(h).iter().any(|&b| b == b'\r' || b == b'\n' || b == 0));
            }
            let _ = RequestFraming::of(&head);
        }
    }

    #[test]
    fn response_parser_never_panics(input in prop_oneof![http_ish(), prop::collection::vec(any::<u8>(), 0..600)]) {
        if let Ok(Some((len, _))) = parse_response(&input, &LIMITS) {
            prop_assert!(len <= input.len());
        }
    }

    #[test]
    fn chunked_decoder_never_panics_and_data_is_in_bounds(
        input in prop_oneof![http_ish(), prop::collection::vec(any::<u8>(), 0..600)],
        split in 1usize..64,
    ) {
        let mut d = ChunkedDecoder::default();
        'outer: for piece in input.chunks(split) {
            let mut pos = 0;
            while pos < piece.len() {
                match d.step(&piece[pos..]) {
                    Err(_) => break 'outer,
                    Ok((used, ev)) => {
                        prop_assert!(used <= piece.len() - pos);
                        if let Decoded::Data { start, len } = ev {
                            prop_assert!(start + len <= piece.len() - pos);
                        }
                        if ev == Decoded::Done { break 'outer; }
                        prop_assert!(used > 0 || ev != Decoded::NeedMore || pos == piece.len());
                        pos += used;
                    }
                }
            }
        }
    }
}
