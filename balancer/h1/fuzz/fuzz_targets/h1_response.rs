//! Response heads from backends: parsing never panics; a head read in pieces is read as the
//! whole one; and a final answer pier accepts is written for the client as one complete
//! canonical head that frames the body the way pier will send it, keeps the status and the
//! backend's end-to-end fields in their order, and says the connection's fate.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pier_h1::framing::{BodyKind, ResponseFraming};
use pier_h1::head::{parse_response, HeadGate, HeaderPos, Known, Version};
use pier_h1::rewrite::{client_framing, write_response_head, ClientFraming};

mod common;
use common::{check_pieces, text, LIMITS, WIDE};

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, data)) = input.split_first() else {
        return;
    };
    let whole = parse_response(data, &LIMITS);

    let mut gate = HeadGate::default();
    check_pieces(data, usize::from(knobs & 7) + 1, &whole, |buf, spare| {
        gate.response(buf, &LIMITS, spare)
    });

    let Ok(Some((n, parts))) = whole else {
        return;
    };
    let head = parts.into_head(Bytes::copy_from_slice(&data[..n]));
    // 1xx answers take another path (interim heads, or a tunnel after 101).
    if head.status < 200 {
        return;
    }
    let head_request = knobs & 0x08 != 0;
    let Ok(framing) = ResponseFraming::of(&head, head_request) else {
        return;
    };
    let client = if knobs & 0x10 != 0 {
        Version::Http10
    } else {
        Version::Http11
    };
    let keep_alive = knobs & 0x20 != 0;
    let hsts = (knobs & 0x40 != 0).then_some("max-age=63072000");
    let out_framing = client_framing(framing.body, client);
    let mut out = Vec::new();
    write_response_head(
        &mut out,
        &head,
        &framing,
        out_framing,
        client,
        keep_alive,
        head_request,
        "pier",
        hsts,
    );

    let again = parse_response(&out, &WIDE);
    let Ok(Some((m, parts2))) = again else {
        panic!("written head does not parse: {again:?}\n{}", text(&out));
    };
    assert_eq!(m, out.len(), "written head has bytes after its end");
    let sent = parts2.into_head(Bytes::from(out.clone()));
    assert_eq!(sent.status, head.status);
    assert_eq!(sent.version, Version::Http11);
    for h in &sent.headers {
        assert!(h.line().is_some(), "field not canonical in\n{}", text(&out));
    }
    let f2 = ResponseFraming::of(&sent, head_request)
        .unwrap_or_else(|e| panic!("written head refused: {e:?}\n{}", text(&out)));
    let expected = match out_framing {
        ClientFraming::NoBody => BodyKind::None,
        ClientFraming::Length(n) => BodyKind::Length(n),
        ClientFraming::Chunked => BodyKind::Chunked,
        ClientFraming::Close => BodyKind::UntilClose,
    };
    assert_eq!(f2.body, expected, "body framing\n{}", text(&out));
    assert_eq!(f2.conn.close, !keep_alive, "Connection: close");
    if client == Version::Http10 && keep_alive {
        assert!(f2.conn.keep_alive, "Connection: keep-alive for HTTP/1.0");
    }

    let passed = |p: &HeaderPos| {
        !p.kind.is_hop_by_hop()
            && !framing
                .conn
                .listed
                .iter()
                .any(|t| head.value(t).eq_ignore_ascii_case(head.name(p)))
    };
    let mut written = sent.headers.iter().map(|p| (sent.name(p), sent.value(p)));
    for p in head.headers.iter().filter(|p| passed(p)) {
        let want = (head.name(p), head.value(p));
        assert!(
            written.any(|s| s == want),
            "field {:?} lost or reordered in\n{}",
            String::from_utf8_lossy(want.0),
            text(&out)
        );
    }
    if hsts.is_some() {
        assert!(sent.first(Known::StrictTransportSecurity).is_some());
    }
});
