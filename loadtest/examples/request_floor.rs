//! The CPU floor of an HTTP/1.1 keep-alive load generator on this kernel: the least work a
//! generator can do per request, to tell how much of pier-load's (and wrk's) CPU is theirs and
//! how much is the kernel's.
//!
//! Per thread one mio poll (edge-triggered epoll) over its connections; each connection writes
//! its request (or `PIPELINE` of them in one write), reads what came back with one `read` into a
//! buffer shared by the thread, and counts whole responses by their length alone: every
//! response must be as long as the first one, learned before the run (a static page, whose
//! `Date` header keeps its length). No parsing, no timing, no histogram, no task or waker: one
//! `write` and one `read` a request (pipelined: a batch), one `epoll_wait` per batch of ready
//! connections. It checks only that each response it counts starts with `HTTP/1.1 200`; a
//! different length or status stops it with an error, so a floor figure is never one of error
//! pages.
//!
//! Not a load generator anyone should use: it exists for loadtest/bench/vs-wrk.sh (`FLOOR=1`).
//! It prints wrk's two summary lines (`N requests in`, `Requests/sec:`), which that script reads.
//!
//! ```sh
//! cargo build --release -p pier-load --example request_floor
//! target/release/examples/request_floor http://127.0.0.1:18080/ THREADS CONNECTIONS SECONDS [PIPELINE]
//! ```

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream as StdStream};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

const USAGE: &str =
    "usage: request_floor http://HOST:PORT/PATH THREADS CONNECTIONS SECONDS [PIPELINE]";

fn main() {
    if let Err(e) = run() {
        eprintln!("request_floor: {e}");
        std::process::exit(1);
    }
}

struct Args {
    addr: SocketAddr,
    request: Vec<u8>,
    threads: usize,
    connections: usize,
    duration: Duration,
    pipeline: usize,
}

fn parse_args() -> Result<Args, String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    if a.len() < 4 || a.len() > 5 {
        return Err(USAGE.into());
    }
    let rest = a[0].strip_prefix("http://").ok_or(USAGE)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr: SocketAddr = authority
        .parse()
        .map_err(|e| format!("{authority}: {e} (an IP address and port)"))?;
    let num = |i: usize, what: &str| -> Result<usize, String> {
        a.get(i)
            .map_or(Ok(1), |s| s.parse::<usize>())
            .map_err(|e| format!("{what}: {e}"))
            .and_then(|n| {
                if n == 0 {
                    Err(format!("{what}: must be at least 1"))
                } else {
                    Ok(n)
                }
            })
    };
    let threads = num(1, "THREADS")?;
    let connections = num(2, "CONNECTIONS")?;
    let seconds = num(3, "SECONDS")?;
    let pipeline = num(4, "PIPELINE")?;
    if connections < threads {
        return Err("CONNECTIONS must be at least THREADS".into());
    }
    // The bytes wrk sends for `wrk URL`.
    let request = format!("GET {path} HTTP/1.1\r\nHost: {authority}\r\n\r\n").into_bytes();
    Ok(Args {
        addr,
        request,
        threads,
        connections,
        duration: Duration::from_secs(seconds as u64),
        pipeline,
    })
}

/// The length of one whole response, from one request sent before the run.
fn response_length(addr: SocketAddr, request: &[u8]) -> Result<usize, String> {
    let mut s = StdStream::connect(addr).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    s.write_all(request).map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Err("the server closed before a whole response".into());
        }
        got.extend_from_slice(&buf[..n]);
        let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") else {
            continue;
        };
        let head = String::from_utf8_lossy(&got[..end]).to_ascii_lowercase();
        if !head.starts_with("http/1.1 200") {
            return Err(format!(
                "the server answers {:?}, not 200",
                head.lines().next()
            ));
        }
        let length: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .ok_or("the response has no Content-Length")?
            .trim()
            .parse()
            .map_err(|e| format!("Content-Length: {e}"))?;
        let total = end + 4 + length;
        if got.len() > total {
            return Err("the server sent more than one response".into());
        }
        if got.len() == total {
            return Ok(total);
        }
    }
}

struct Conn {
    stream: TcpStream,
    /// Bytes of the current response received so far.
    partial: usize,
    /// Responses still due for the batch written.
    due: usize,
}

/// One thread's loop: returns the responses counted before `end`.
fn thread_loop(args: &Args, conns: usize, length: usize, end: Instant) -> Result<u64, String> {
    let batch = args.request.repeat(args.pipeline);
    let mut poll = Poll::new().map_err(|e| e.to_string())?;
    let mut events = Events::with_capacity(1024);
    let mut all = Vec::with_capacity(conns);
    // Connected before the loop, the first batch written, only readiness to read watched
    // (watching writability too would wake the loop each time an ACK frees send buffer).
    for i in 0..conns {
        let std = StdStream::connect(args.addr).map_err(|e| format!("connect: {e}"))?;
        std.set_nonblocking(true).map_err(|e| e.to_string())?;
        let mut c = Conn {
            stream: TcpStream::from_std(std),
            partial: 0,
            due: 0,
        };
        write_batch(&mut c, &batch, args.pipeline)?;
        poll.registry()
            .register(&mut c.stream, Token(i), Interest::READABLE)
            .map_err(|e| e.to_string())?;
        all.push(c);
    }
    let mut buf = vec![0u8; 64 * 1024];
    let mut done = 0u64;
    while Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(100)))
            .map_err(|e| e.to_string())?;
        for ev in events.iter() {
            let c = &mut all[ev.token().0];
            loop {
                let n = match c.stream.read(&mut buf) {
                    Ok(0) => return Err("the server closed a connection".into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("read: {e}")),
                };
                let mut at = 0;
                while at < n {
                    if c.partial == 0 && n - at >= 12 && &buf[at..at + 12] != b"HTTP/1.1 200" {
                        return Err(
                            "a response that is not 200 or not of the first's length".into()
                        );
                    }
                    let take = (length - c.partial).min(n - at);
                    c.partial += take;
                    at += take;
                    if c.partial == length {
                        c.partial = 0;
                        c.due = c.due.saturating_sub(1);
                        done += 1;
                    }
                }
                if c.due == 0 {
                    write_batch(c, &batch, args.pipeline)?;
                }
                // A short read drained the socket: the next bytes bring a new edge.
                if n < buf.len() {
                    break;
                }
            }
        }
    }
    Ok(done)
}

fn write_batch(c: &mut Conn, batch: &[u8], pipeline: usize) -> Result<(), String> {
    // The batch is far smaller than a socket's send buffer: one write takes it whole.
    match c.stream.write(batch) {
        Ok(n) if n == batch.len() => {
            c.due = pipeline;
            Ok(())
        }
        Ok(_) => Err("a short write".into()),
        Err(e) => Err(format!("write: {e}")),
    }
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let length = response_length(args.addr, &args.request)?;
    let start = Instant::now();
    let end = start + args.duration;
    let per = args.connections / args.threads;
    let extra = args.connections % args.threads;
    let done: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.threads)
            .map(|t| {
                let conns = per + usize::from(t < extra);
                let args = &args;
                s.spawn(move || thread_loop(args, conns, length, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| "a thread panicked".to_string())?)
            .sum::<Result<u64, String>>()
    })?;
    let elapsed = start.elapsed().as_secs_f64();
    println!(
        "  {done} requests in {elapsed:.2}s, {length} bytes a response\nRequests/sec: {:.2}",
        done as f64 / elapsed
    );
    Ok(())
}
