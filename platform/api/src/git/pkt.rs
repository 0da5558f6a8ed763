//! The few pkt-lines the server reads or writes itself (git's `Documentation/gitprotocol-
//! common.txt`): a push's first line, to know whether it updates anything and whether the
//! client takes progress messages, and one progress message (side-band channel 2), which git
//! shows as a `remote:` line.

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::error::ApiError;

/// Largest pkt-line: four hex digits of length, then at most 65516 bytes.
const MAX_PKT: usize = 65520;

/// What the first pkt-line of a push's request says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FirstLine {
    /// A flush: the push updates nothing (git's probe of a large push, to check credentials).
    Flush,
    /// Ref updates; `sideband`: the client asked for progress messages (`side-band-64k` or
    /// `side-band`).
    Updates { sideband: bool },
    /// Something else (a shallow line first, a compressed body, a malformed line): updates
    /// as far as the server knows, with no message of its own.
    Unknown,
}

/// Reads `buf` as the start of a push's request; `None` while it holds too little to tell.
pub fn parse_first(buf: &[u8]) -> Option<FirstLine> {
    let len = buf.get(..4)?;
    let Some(len) = std::str::from_utf8(len)
        .ok()
        .and_then(|l| usize::from_str_radix(l, 16).ok())
    else {
        return Some(FirstLine::Unknown);
    };
    if len == 0 {
        return Some(FirstLine::Flush);
    }
    if !(5..=MAX_PKT).contains(&len) {
        return Some(FirstLine::Unknown);
    }
    let line = buf.get(4..len)?;
    // `old new ref\0capabilities`
    let Some(nul) = line.iter().position(|b| *b == 0) else {
        return Some(FirstLine::Unknown);
    };
    let caps = String::from_utf8_lossy(&line[nul + 1..]);
    let sideband = caps
        .split(' ')
        .map(|c| c.trim_end_matches('\n'))
        .any(|c| c == "side-band-64k" || c == "side-band");
    Some(FirstLine::Updates { sideband })
}

/// Reads the body until its first pkt-line is whole (or it ends), keeping what was read in
/// `buf` for `git http-backend`.
pub async fn read_first(body: &mut Incoming, buf: &mut Vec<u8>) -> Result<FirstLine, ApiError> {
    loop {
        if let Some(first) = parse_first(buf) {
            return Ok(first);
        }
        if buf.len() > MAX_PKT {
            return Ok(FirstLine::Unknown);
        }
        let Some(frame) = body.frame().await else {
            // An empty body updates nothing either.
            return Ok(if buf.is_empty() {
                FirstLine::Flush
            } else {
                FirstLine::Unknown
            });
        };
        let frame =
            frame.map_err(|e| ApiError::BadRequest(format!("cannot read the push: {e}")))?;
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
        }
    }
}

/// A progress message on side-band channel 2: git prints it as `remote: TEXT`.
pub fn progress(text: &str) -> Bytes {
    let mut line = text.as_bytes().to_vec();
    line.truncate(990);
    if line.last() != Some(&b'\n') {
        line.push(b'\n');
    }
    let mut out = format!("{:04x}", line.len() + 5).into_bytes();
    out.push(2);
    out.extend_from_slice(&line);
    Bytes::from(out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn pkt(payload: &[u8]) -> Vec<u8> {
        let mut v = format!("{:04x}", payload.len() + 4).into_bytes();
        v.extend_from_slice(payload);
        v
    }

    #[test]
    fn first_lines() {
        let zero = "0".repeat(40);
        let new = "a".repeat(40);
        let update =
            format!("{zero} {new} refs/heads/main\0report-status side-band-64k agent=git/2.47.3\n");
        let whole = pkt(update.as_bytes());
        assert_eq!(
            parse_first(&whole),
            Some(FirstLine::Updates { sideband: true })
        );
        // Cut anywhere before its end: not known yet.
        for cut in 0..whole.len() {
            assert_eq!(parse_first(&whole[..cut]), None, "cut at {cut}");
        }
        let quiet = pkt(format!("{zero} {new} refs/heads/main\0report-status\n").as_bytes());
        assert_eq!(
            parse_first(&quiet),
            Some(FirstLine::Updates { sideband: false })
        );
        assert_eq!(parse_first(b"0000"), Some(FirstLine::Flush));
        assert_eq!(parse_first(b"zz00rest"), Some(FirstLine::Unknown));
        assert_eq!(parse_first(b"0003"), Some(FirstLine::Unknown));
        assert_eq!(
            parse_first(&pkt(b"shallow 1234\n")),
            Some(FirstLine::Unknown)
        );
    }

    #[test]
    fn progress_is_a_channel_2_packet() {
        let p = progress("-----> Waiting");
        assert_eq!(&p[..], b"0014\x02-----> Waiting\n");
        assert_eq!(progress(&"x".repeat(5000)).len(), 4 + 1 + 991);
    }
}
