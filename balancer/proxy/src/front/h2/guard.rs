//! A watch on the frames an HTTP/2 client sends, for the floods the protocol allows.
//!
//! The `h2` crate enforces the protocol and several limits itself (concurrent streams, header
//! list size, pending-accept resets, locally caused resets, the framing-overhead budget of
//! DATA frames). What it does not bound is the rate of cheap control frames: a client that
//! sends PING, SETTINGS, PRIORITY, RST_STREAM or empty DATA/HEADERS frames in a loop makes
//! the server work (and answer) for nothing, and a header block split into many CONTINUATION
//! frames ties up the decoder. [`FrameGuard`] sits between the socket and `h2`, reads the
//! 9-byte frame headers as the bytes pass (no copy, no parse of payloads), and raises an alarm
//! when a client goes over `control_frame_rate` per second or `max_header_frames` frames in one
//! header block. The connection then ends with GOAWAY `ENHANCE_YOUR_CALM`; other connections
//! are not affected.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE_LEN: usize = 24;
const FRAME_HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;

/// Which limit a client went over.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Abuse {
    ControlFlood,
    ContinuationFlood,
}

impl Abuse {
    pub fn name(self) -> &'static str {
        match self {
            Abuse::ControlFlood => "control-frame-flood",
            Abuse::ContinuationFlood => "continuation-flood",
        }
    }
}

/// Shared between the guard (in the I/O path) and the connection driver.
#[derive(Default)]
pub struct Alarm {
    pub notify: tokio::sync::Notify,
    raised: std::sync::OnceLock<Abuse>,
}

impl Alarm {
    pub fn raised(&self) -> Option<Abuse> {
        self.raised.get().copied()
    }
    fn raise(&self, why: Abuse) {
        if self.raised.set(why).is_ok() {
            self.notify.notify_one();
        }
    }
}

/// Counts frames by their headers.
#[derive(Debug)]
pub struct FrameCounter {
    preface_left: usize,
    header: [u8; FRAME_HEADER_LEN],
    header_len: usize,
    payload_left: usize,
    block_frames: u32,
    window_start: Instant,
    control: u32,
    rate: u32,
    max_block_frames: u32,
}

impl FrameCounter {
    pub fn new(control_frame_rate: u32, max_header_frames: u32) -> Self {
        FrameCounter {
            preface_left: PREFACE_LEN,
            header: [0; FRAME_HEADER_LEN],
            header_len: 0,
            payload_left: 0,
            block_frames: 0,
            window_start: Instant::now(),
            control: 0,
            rate: control_frame_rate,
            max_block_frames: max_header_frames,
        }
    }

    /// Feeds bytes as they arrive; returns an abuse as soon as one is seen.
    pub fn feed(&mut self, mut data: &[u8]) -> Option<Abuse> {
        if self.preface_left > 0 {
            let n = self.preface_left.min(data.len());
            self.preface_left -= n;
            data = &data[n..];
        }
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = self.payload_left.min(data.len());
                self.payload_left -= n;
                data = &data[n..];
                continue;
            }
            let n = (FRAME_HEADER_LEN - self.header_len).min(data.len());
            self.header[self.header_len..self.header_len + n].copy_from_slice(&data[..n]);
            self.header_len += n;
            data = &data[n..];
            if self.header_len == FRAME_HEADER_LEN {
                self.header_len = 0;
                let h = self.header;
                let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
                self.payload_left = len;
                if let Some(abuse) = self.frame(h[3], h[4], len) {
                    return Some(abuse);
                }
            }
        }
        None
    }

    fn frame(&mut self, kind: u8, flags: u8, len: usize) -> Option<Abuse> {
        let control = match kind {
            PING | SETTINGS | PRIORITY | RST_STREAM => true,
            // Empty DATA that does not end the stream moves nothing.
            DATA => len == 0 && flags & END_STREAM == 0,
            HEADERS => {
                self.block_frames = 1;
                // Empty trailers that do not end the stream are as useless as empty DATA.
                len == 0 && flags & END_STREAM == 0
            }
            CONTINUATION => {
                self.block_frames += 1;
                if self.block_frames > self.max_block_frames {
                    return Some(Abuse::ContinuationFlood);
                }
                len == 0
            }
            _ => false,
        };
        if control {
            let now = Instant::now();
            if now.duration_since(self.window_start) >= Duration::from_secs(1) {
                self.window_start = now;
                self.control = 0;
            }
            self.control += 1;
            if self.control > self.rate {
                return Some(Abuse::ControlFlood);
            }
        }
        None
    }
}

/// The client's I/O as `h2` sees it: bytes read before the hand-over first (an h2c preface
/// found by the HTTP/1 reader), every byte counted by a [`FrameCounter`].
pub struct FrameGuard<S> {
    inner: S,
    prefix: BytesMut,
    counter: FrameCounter,
    alarm: Arc<Alarm>,
}

impl<S> FrameGuard<S> {
    pub fn new(inner: S, prefix: BytesMut, counter: FrameCounter, alarm: Arc<Alarm>) -> Self {
        FrameGuard {
            inner,
            prefix,
            counter,
            alarm,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for FrameGuard<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.alarm.raised().is_some() {
            // Nothing more is read from an abusive client; the driver sends GOAWAY and closes.
            return Poll::Pending;
        }
        let before = buf.filled().len();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
        } else {
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => return other,
            }
        }
        if let Some(abuse) = this.counter.feed(&buf.filled()[before..]) {
            this.alarm.raise(abuse);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for FrameGuard<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let len = payload.len();
        let mut f = vec![
            (len >> 16) as u8,
            (len >> 8) as u8,
            len as u8,
            kind,
            flags,
            0,
            0,
            0,
            1,
        ];
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn ping_flood_is_seen_across_split_reads() {
        let mut c = FrameCounter::new(10, 4);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..11 {
            bytes.extend(frame(PING, 0, &[0; 8]));
        }
        // Fed one byte at a time: headers split anywhere are still read right.
        let mut seen = None;
        for b in bytes.chunks(1) {
            if let Some(a) = c.feed(b) {
                seen = Some(a);
                break;
            }
        }
        assert_eq!(seen, Some(Abuse::ControlFlood));
    }

    #[test]
    fn data_and_payload_bytes_are_not_counted() {
        let mut c = FrameCounter::new(2, 4);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        // A payload that looks like PING frame headers must be skipped, not parsed.
        let fake: Vec<u8> = (0..50).flat_map(|_| frame(PING, 0, &[])).collect();
        for _ in 0..100 {
            bytes.extend(frame(DATA, 0, &fake));
        }
        bytes.extend(frame(DATA, END_STREAM, &[]));
        assert_eq!(c.feed(&bytes), None);
    }

    #[test]
    fn continuation_flood_is_seen() {
        let mut c = FrameCounter::new(1000, 3);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        bytes.extend(frame(HEADERS, 0, b"x"));
        bytes.extend(frame(CONTINUATION, 0, b"x"));
        bytes.extend(frame(CONTINUATION, 0, b"x"));
        assert_eq!(c.feed(&bytes), None);
        assert_eq!(
            c.feed(&frame(CONTINUATION, 0, b"x")),
            Some(Abuse::ContinuationFlood)
        );
    }

    #[test]
    fn empty_data_without_end_stream_counts() {
        let mut c = FrameCounter::new(5, 4);
        let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        for _ in 0..6 {
            bytes.extend(frame(DATA, 0, &[]));
        }
        assert_eq!(c.feed(&bytes), Some(Abuse::ControlFlood));
    }
}
