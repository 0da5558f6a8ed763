//! The HTTP/1.1 connection loop: fill the pipeline from pre-built request heads, write, read
//! into one reused buffer, parse responses in order and match each to the oldest outstanding
//! request. One task per connection on its thread's current-thread runtime, with one timer
//! that is only re-armed when it fires or must fire earlier (not once per request).

use std::collections::VecDeque;
use std::future::{poll_fn, Future};
use std::io;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::engine::{connect, Conn, ThreadCtx};
use crate::h1::parse::{ResponseParser, Step, MAX_HEAD};
use crate::schedule::SEND_SLACK;
use crate::stats::ErrorKind;
use crate::transport::{PlainTcp, TokioIo, Transport};

/// Initial read buffer; it only grows for a response head that does not fit.
const READ_BUF: usize = 16 * 1024;

/// One request written (or queued for writing) and not yet answered.
#[derive(Debug, Clone, Copy)]
struct Inflight {
    /// When the request was due (open model) or sent (closed model).
    due: Instant,
    /// Latency is measured from here: the due time, or the send if that came earlier.
    start: Instant,
    sent: Instant,
    host: usize,
}

/// State that survives reconnects.
struct ConnState {
    buf: Vec<u8>,
    wbuf: Vec<u8>,
    inflight: VecDeque<Inflight>,
    /// Open model: a due time claimed from the schedule but not sent yet.
    pending: Option<Instant>,
    /// Requests the server announced it would not process (pipelined behind a
    /// `Connection: close` answer): sent again, first thing, on the next connection.
    retry: VecDeque<Inflight>,
}

enum Outcome {
    /// The run is over; this many requests were still unanswered.
    Ended(u64),
    Reconnect,
}

enum Event {
    WriteError,
    Read(io::Result<usize>),
    Timer,
}

/// Runs one connection slot until the end of the run, reconnecting as needed. Returns the
/// number of requests in flight when the run ended.
pub(crate) async fn run(ctx: &ThreadCtx, conn: usize) -> u64 {
    let sh = &*ctx.sh;
    let depth = match sh.cfg.protocol {
        crate::config::Protocol::Http1 { pipeline } => pipeline,
        crate::config::Protocol::Http2 { .. } => 1,
    };
    let mut st = ConnState {
        buf: vec![0; READ_BUF],
        wbuf: Vec::with_capacity(1024),
        inflight: VecDeque::with_capacity(depth),
        pending: None,
        retry: VecDeque::new(),
    };
    let mut backoff = Duration::from_millis(5);
    loop {
        if Instant::now() >= sh.end {
            return st.retry.len() as u64;
        }
        let outcome = match connect(ctx, ctx.sni_host(conn)).await {
            Ok(Conn::Plain(tcp)) => match PlainTcp::new(tcp) {
                Ok(t) => drive(ctx, conn, depth, t, &mut st).await,
                Err(e) => {
                    ctx.connect_failed(&e);
                    Outcome::Reconnect
                }
            },
            Ok(Conn::Tls(tls)) => drive(ctx, conn, depth, TokioIo(*tls), &mut st).await,
            Ok(Conn::Ended) => return st.retry.len() as u64,
            Err(e) => {
                ctx.connect_failed(&e);
                // Back off so a refused port does not turn into a connect() busy loop.
                let wake = (Instant::now() + backoff).min(sh.end);
                tokio::time::sleep_until(wake.into()).await;
                backoff = (backoff * 2).min(Duration::from_millis(500));
                continue;
            }
        };
        backoff = Duration::from_millis(5);
        match outcome {
            Outcome::Ended(n) => return n,
            Outcome::Reconnect => ctx.recorder.borrow_mut().reconnect(Instant::now()),
        }
    }
}

/// Fails every outstanding request of a broken connection with `kind`.
fn fail_all(ctx: &ThreadCtx, st: &mut ConnState, kind: ErrorKind) {
    let mut rec = ctx.recorder.borrow_mut();
    for f in st.inflight.drain(..) {
        rec.error(f.due, kind, Some(f.host));
    }
}

async fn drive<T: Transport>(
    ctx: &ThreadCtx,
    conn: usize,
    depth: usize,
    mut io: T,
    st: &mut ConnState,
) -> Outcome {
    let sh = &*ctx.sh;
    let timeout = sh.cfg.timeout;
    let is_head = sh.requests.is_head;
    let mut parser = ResponseParser::new();
    let (mut rstart, mut rend) = (0usize, 0usize);
    let mut wpos = 0usize;
    let mut need_flush = false;
    st.wbuf.clear();
    let timer = tokio::time::sleep_until(sh.end.into());
    tokio::pin!(timer);
    let mut timer_at = sh.end;

    loop {
        let now = Instant::now();
        if now >= sh.end {
            return Outcome::Ended((st.inflight.len() + st.retry.len()) as u64);
        }
        let mut next_send = None;
        // Closed model: a pipelined connection writes its next batch once the last one is
        // answered, as wrk's pipelining does. Refilling each answered slot at once would cost
        // a write (and, over loopback, the server's receive path) per answer instead of per
        // batch: measured at -c50 --pipeline 16, about twice the CPU per request.
        let refill = ctx.schedule.is_some() || st.inflight.is_empty();
        while refill && st.inflight.len() < depth {
            if let Some(mut again) = st.retry.pop_front() {
                // Keeps its due time and start: the detour shows in its latency.
                sh.requests.write_request(again.host, &mut st.wbuf);
                again.sent = now;
                st.inflight.push_back(again);
                continue;
            }
            let due = match &ctx.schedule {
                None => now,
                Some(s) => {
                    let due = match st.pending.take().or_else(|| s.claim()) {
                        Some(t) => t,
                        None => break,
                    };
                    if due > now + SEND_SLACK {
                        st.pending = Some(due);
                        next_send = Some(due - SEND_SLACK);
                        break;
                    }
                    s.mark_sent(due);
                    due
                }
            };
            let host = ctx.next_host(conn);
            sh.requests.write_request(host, &mut st.wbuf);
            st.inflight.push_back(Inflight {
                due,
                start: due.min(now),
                sent: now,
                host,
            });
        }

        let mut deadline = sh.end;
        if let (Some(t), Some(front)) = (timeout, st.inflight.front()) {
            deadline = deadline.min(front.sent + t);
        }
        if let Some(t) = next_send {
            deadline = deadline.min(t);
        }
        if deadline < timer_at {
            timer.as_mut().reset(deadline.into());
            timer_at = deadline;
        }

        if rend == st.buf.len() {
            // Only reached when a partial head fills the buffer (compaction ran below).
            if st.buf.len() > MAX_HEAD {
                fail_all(ctx, st, ErrorKind::Protocol);
                return Outcome::Reconnect;
            }
            let grown = st.buf.len() * 2;
            st.buf.resize(grown, 0);
        }

        // Writes, the flush and the read are all driven from one poll so that a request and
        // the wait for its answer cost one wake-up, not one per step.
        let mut written = 0usize;
        let event = poll_fn(|cx| {
            while wpos < st.wbuf.len() {
                match io.poll_write(cx, &st.wbuf[wpos..]) {
                    Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => {
                        return Poll::Ready(Event::WriteError)
                    }
                    Poll::Ready(Ok(n)) => wpos += n,
                    Poll::Pending => break,
                }
            }
            if wpos > 0 && wpos == st.wbuf.len() {
                written += wpos;
                st.wbuf.clear();
                wpos = 0;
                need_flush = true;
            }
            if need_flush {
                match io.poll_flush(cx) {
                    Poll::Ready(Ok(())) => need_flush = false,
                    Poll::Ready(Err(_)) => return Poll::Ready(Event::WriteError),
                    Poll::Pending => {}
                }
            }
            if let Poll::Ready(r) = io.poll_read(cx, &mut st.buf[rend..]) {
                return Poll::Ready(Event::Read(r));
            }
            if timer.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::Timer);
            }
            Poll::Pending
        })
        .await;
        if written > 0 {
            ctx.recorder.borrow_mut().bytes_written(now, written);
        }

        match event {
            Event::WriteError => {
                fail_all(ctx, st, ErrorKind::Write);
                return Outcome::Reconnect;
            }
            Event::Timer => {
                // Park the timer at the end of the run; the deadline logic above re-arms it.
                timer.as_mut().reset(sh.end.into());
                timer_at = sh.end;
                let now = Instant::now();
                if let (Some(t), Some(front)) = (timeout, st.inflight.front()) {
                    if now >= front.sent + t && now < sh.end {
                        fail_all(ctx, st, ErrorKind::Timeout);
                        return Outcome::Reconnect;
                    }
                }
            }
            Event::Read(Err(_)) => {
                fail_all(ctx, st, ErrorKind::Read);
                return Outcome::Reconnect;
            }
            Event::Read(Ok(0)) => {
                let now = Instant::now();
                if let Some(resp) = parser.finish_on_eof() {
                    if let Some(f) = st.inflight.pop_front() {
                        ctx.recorder.borrow_mut().response(
                            now,
                            f.due,
                            f.start,
                            f.sent,
                            resp.status,
                            f.host,
                            resp.matched,
                        );
                    }
                }
                // A server closing an idle keep-alive connection is not an error; closing
                // with requests outstanding is.
                fail_all(ctx, st, ErrorKind::Read);
                return Outcome::Reconnect;
            }
            Event::Read(Ok(n)) => {
                let now = Instant::now();
                if now >= sh.end {
                    // Answers that arrive after the end are not counted as done in time.
                    return Outcome::Ended((st.inflight.len() + st.retry.len()) as u64);
                }
                rend += n;
                let mut rec = ctx.recorder.borrow_mut();
                rec.bytes_read(now, n);
                crate::coalesce::note_read();
                loop {
                    let Some(front) = st.inflight.front().copied() else {
                        if rstart < rend {
                            // Bytes nobody asked for: the stream cannot be trusted any more.
                            rec.error(now, ErrorKind::Protocol, None);
                            return Outcome::Reconnect;
                        }
                        break;
                    };
                    let expect = sh
                        .expect
                        .as_ref()
                        .map(|e| (e.name.as_slice(), e.values[front.host].as_slice()));
                    match parser.advance(&st.buf[rstart..rend], is_head, expect) {
                        Ok(Step::NeedMore) => break,
                        Ok(Step::Consumed(c)) => rstart += c,
                        Ok(Step::Done { consumed, response }) => {
                            rstart += consumed;
                            st.inflight.pop_front();
                            rec.response(
                                now,
                                front.due,
                                front.start,
                                front.sent,
                                response.status,
                                front.host,
                                response.matched,
                            );
                            if response.close {
                                // RFC 9112 §9.6: after announcing close the server processes
                                // nothing more on this connection, so what is pipelined
                                // behind is safe to send again.
                                rec.retried += st.inflight.len() as u64;
                                st.retry.extend(st.inflight.drain(..));
                                return Outcome::Reconnect;
                            }
                        }
                        Err(_) => {
                            drop(rec);
                            fail_all(ctx, st, ErrorKind::Protocol);
                            return Outcome::Reconnect;
                        }
                    }
                }
                if rstart == rend {
                    rstart = 0;
                    rend = 0;
                } else if rend == st.buf.len() && rstart > 0 {
                    st.buf.copy_within(rstart..rend, 0);
                    rend -= rstart;
                    rstart = 0;
                }
            }
        }
    }
}
