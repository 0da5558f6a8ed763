//! The chunked decoder on bodies off the network: never panics, and reads the same body, the
//! same trailers and the same end (or the same refusal) whether the bytes come at once or in
//! pieces of any size.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_h1::framing::{trailer_fields, ChunkError, ChunkedDecoder, Decoded};

#[derive(Debug, PartialEq)]
enum End {
    Done { consumed: usize },
    NeedMore,
    Refused(ChunkError),
}

fn decode(data: &[u8], piece: usize) -> (Vec<u8>, End, Vec<u8>) {
    let mut d = ChunkedDecoder::default();
    let mut body = Vec::new();
    let mut fed = 0;
    let mut off = 0;
    loop {
        if off == fed {
            if fed == data.len() {
                return (body, End::NeedMore, d.trailers().to_vec());
            }
            fed = (fed + piece).min(data.len());
        }
        match d.step(&data[off..fed]) {
            Ok((used, Decoded::Data { start, len })) => {
                assert!(start + len <= used && used <= fed - off);
                body.extend_from_slice(&data[off + start..off + start + len]);
                off += used;
            }
            Ok((used, Decoded::NeedMore)) => {
                assert_eq!(used, fed - off, "NeedMore leaves input unread");
                off += used;
            }
            Ok((used, Decoded::Done)) => {
                assert!(d.is_done());
                return (
                    body,
                    End::Done {
                        consumed: off + used,
                    },
                    d.trailers().to_vec(),
                );
            }
            Err(e) => return (body, End::Refused(e), Vec::new()),
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, data)) = input.split_first() else {
        return;
    };
    let (body, end, trailers) = decode(data, data.len().max(1));
    let piece = usize::from(knobs % 13) + 1;
    let (body2, end2, trailers2) = decode(data, piece);
    assert_eq!(end, end2);
    if !matches!(end, End::Refused(_)) {
        assert_eq!(body, body2);
        assert_eq!(trailers, trailers2);
    }
    if let End::Done { consumed } = end {
        assert!(consumed <= data.len());
        for (name, line) in trailer_fields(&trailers) {
            assert!(!name.is_empty());
            assert!(line.starts_with(name));
            assert!(!line.contains(&b'\r') && !line.contains(&b'\n'));
        }
    }
});
