//! Request heads off the network: parsing never panics; a head read in pieces (through the
//! `HeadGate` a connection uses) is read exactly as the whole one; and a head pier accepts is
//! forwarded as one complete canonical HTTP/1.1 request that frames its body the same way (no
//! smuggling through the rewrite), keeps the method and target, and keeps the client's
//! end-to-end fields in their order.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use pier_h1::framing::{BodyKind, RequestFraming};
use pier_h1::head::{parse_request, HeadGate, Known, RequestHead, Version};
use pier_h1::rewrite::{write_request_head, Forwarding};
use pier_routes::RequestHost;

mod common;
use common::{check_pieces, text, LIMITS, WIDE};

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, data)) = input.split_first() else {
        return;
    };
    let whole = parse_request(data, &LIMITS);

    // The same bytes arriving in pieces of 1-8 bytes.
    let mut gate = HeadGate::default();
    check_pieces(data, usize::from(knobs & 7) + 1, &whole, |buf, spare| {
        gate.request(buf, &LIMITS, spare)
    });

    let Ok(Some((n, parts))) = whole else {
        return;
    };
    let head = parts.into_head(Bytes::copy_from_slice(&data[..n]));
    let Ok(framing) = RequestFraming::of(&head) else {
        return;
    };
    // Only what `serve` would forward: an origin-form target and a usable host.
    if head.target().first() != Some(&b'/') {
        return;
    }
    let host = framing
        .host
        .map(|h| head.value(&h).to_vec())
        .unwrap_or_default();
    if RequestHost::parse(&host).is_err() {
        return;
    }
    let trusted = knobs & 0x10 != 0;
    let fwd = Forwarding {
        client_ip: b"192.0.2.7",
        listener_port: 8080,
        trusted,
        target: head.target(),
        host: &host,
        request_id: b"0123456789abcdef",
        body: framing.body,
        explicit_zero_length: framing.length == Some(0),
        request_start_ms: (knobs & 0x20 != 0).then_some(1_700_000_000_000),
        via: if knobs & 0x40 != 0 { "" } else { "pier" },
        proto: "http",
        upgrade: None,
    };
    let mut out = Vec::new();
    write_request_head(&mut out, &head, &framing.conn, &fwd);

    let again = parse_request(&out, &WIDE);
    let Ok(Some((m, parts2))) = again else {
        panic!("forwarded head does not parse: {again:?}\n{}", text(&out));
    };
    assert_eq!(m, out.len(), "forwarded head has bytes after its end");
    let fwd_head = parts2.into_head(Bytes::from(out.clone()));
    assert_eq!(fwd_head.version, Version::Http11);
    assert_eq!(fwd_head.method(), head.method());
    assert_eq!(fwd_head.target(), head.target());
    for h in &fwd_head.headers {
        assert!(h.line().is_some(), "field not canonical in\n{}", text(&out));
    }
    let f2 = RequestFraming::of(&fwd_head)
        .unwrap_or_else(|e| panic!("forwarded head refused: {e:?}\n{}", text(&out)));
    assert_eq!(f2.body, framing.body, "body framing changed");
    if framing.body == BodyKind::None {
        assert!(f2.length.is_none_or(|l| l == 0));
    }
    let sent_host = f2.host.map(|h| fwd_head.value(&h).to_vec());
    assert_eq!(sent_host.as_deref(), Some(&host[..]), "Host");

    // The client's end-to-end fields, in order, are a subsequence of what was sent.
    let passed = |h: &RequestHead, p: &pier_h1::head::HeaderPos| {
        !(p.kind.is_hop_by_hop()
            || p.kind.is_forwarded()
            || matches!(
                p.kind,
                Known::Host | Known::XRequestId | Known::XRequestStart
            ))
            && !framing
                .conn
                .listed
                .iter()
                .any(|t| head.value(t).eq_ignore_ascii_case(h.name(p)))
    };
    let mut sent = fwd_head
        .headers
        .iter()
        .map(|p| (fwd_head.name(p), fwd_head.value(p)));
    for p in head.headers.iter().filter(|p| passed(&head, p)) {
        let want = (head.name(p), head.value(p));
        assert!(
            sent.any(|s| s == want),
            "field {:?} lost or reordered in\n{}",
            String::from_utf8_lossy(want.0),
            text(&out)
        );
    }
});
