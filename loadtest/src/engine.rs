//! Runs a [`RunConfig`]: wrk's thread model (one current-thread tokio runtime per `-t`
//! thread, each owning its share of the connections and its own [`Recorder`]), a collector on
//! the calling thread that merges per-second snapshots as they arrive (for the time series and
//! the live progress line), and the final merge into a [`Report`].

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::net::TcpStream;

use crate::config::{ConfigError, HostMode, LoadModel, Protocol, RunConfig};
use crate::h2conn::{H2TemplateError, H2Templates};
use crate::report::{HostRow, Report, SecondRow};
use crate::schedule::Schedule;
use crate::stats::{
    latency_histogram, second_histogram, ErrorCounts, ErrorKind, HostCounts, Recorder,
    SecondSnapshot, StatusCounts,
};
use crate::target::{RequestSet, Scheme};
use crate::tls::{client_config, server_name, TlsError};

/// A run that could not start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot resolve {addr}: {reason}")]
    Resolve { addr: String, reason: String },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    H2(#[from] H2TemplateError),
    #[error("--expect-header {0:?} is not a valid header name")]
    ExpectHeader(String),
    #[error("cannot start worker thread: {0}")]
    Thread(std::io::Error),
}

/// The routing check, prepared for the hot path: header name and each host's expected value.
#[derive(Debug)]
pub(crate) struct Expect {
    pub name: Vec<u8>,
    pub h2_name: http::HeaderName,
    pub values: Vec<Vec<u8>>,
}

/// Read-only state shared by all worker threads.
pub(crate) struct Shared {
    pub cfg: RunConfig,
    pub addr: SocketAddr,
    pub requests: RequestSet,
    pub h2: Option<H2Templates>,
    pub tls: Option<tokio_rustls::TlsConnector>,
    pub expect: Option<Expect>,
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
}

/// One worker thread's state, shared by its connection tasks (same thread, no locking).
pub(crate) struct ThreadCtx {
    pub sh: Arc<Shared>,
    pub id: usize,
    pub recorder: RefCell<Recorder>,
    pub schedule: Option<Schedule>,
    rotate: Cell<usize>,
    first_connect_error: RefCell<Option<String>>,
}

impl ThreadCtx {
    /// The host for the next request on connection `conn`.
    #[inline]
    pub fn next_host(&self, conn: usize) -> usize {
        let n = self.sh.cfg.hosts.len();
        if n == 1 {
            return 0;
        }
        match self.sh.cfg.host_mode {
            HostMode::Pin => conn % n,
            HostMode::Rotate => {
                let i = self.rotate.get();
                self.rotate.set(i.wrapping_add(1));
                // Threads interleave so that together they walk every host.
                i.wrapping_mul(self.sh.cfg.threads).wrapping_add(self.id) % n
            }
        }
    }

    /// The host whose name goes into SNI when `conn` (re)connects.
    pub fn sni_host(&self, conn: usize) -> usize {
        let n = self.sh.cfg.hosts.len();
        match self.sh.cfg.host_mode {
            HostMode::Pin => conn % n,
            HostMode::Rotate => {
                self.rotate
                    .get()
                    .wrapping_mul(self.sh.cfg.threads)
                    .wrapping_add(self.id)
                    % n
            }
        }
    }

    pub fn connect_failed(&self, e: &dyn std::fmt::Display) {
        let now = Instant::now();
        self.recorder
            .borrow_mut()
            .error(now, ErrorKind::Connect, None);
        let mut first = self.first_connect_error.borrow_mut();
        if first.is_none() && now >= self.sh.measure_start {
            *first = Some(e.to_string());
        }
    }
}

/// A connected socket, or the news that the run ended while connecting.
pub(crate) enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    Ended,
}

/// Opens a connection (TCP, then TLS if the URL is https) for a request to host `host`.
pub(crate) async fn connect(ctx: &ThreadCtx, host: usize) -> std::io::Result<Conn> {
    let sh = &*ctx.sh;
    let deadline = match sh.cfg.timeout {
        Some(t) => (Instant::now() + t).min(sh.end),
        None => sh.end,
    };
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out");
    let tcp = match tokio::time::timeout_at(deadline.into(), TcpStream::connect(sh.addr)).await {
        Ok(r) => r?,
        Err(_) if Instant::now() >= sh.end => return Ok(Conn::Ended),
        Err(_) => return Err(timed_out()),
    };
    tcp.set_nodelay(true)?;
    let Some(tls) = &sh.tls else {
        return Ok(Conn::Plain(tcp));
    };
    let name = sh
        .cfg
        .hosts
        .get(host)
        .and_then(|h| server_name(&h.name))
        .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(sh.addr.ip().into()));
    match tokio::time::timeout_at(deadline.into(), tls.connect(name, tcp)).await {
        Ok(r) => Ok(Conn::Tls(Box::new(r?))),
        Err(_) if Instant::now() >= sh.end => Ok(Conn::Ended),
        Err(_) => Err(timed_out()),
    }
}

enum Msg {
    // Boxed: a second's snapshot (histogram, counts) is large, and one is sent per second.
    Second(Box<SecondSnapshot>),
    Done,
}

/// What a worker thread hands back.
struct ThreadResult {
    recorder: Recorder,
    in_flight: u64,
    unsent: u64,
    first_connect_error: Option<String>,
}

/// Resolves where connections go: `--connect-to` or the URL's host.
fn resolve(cfg: &RunConfig) -> Result<SocketAddr, RunError> {
    let addr = match &cfg.connect_to {
        Some(a) => a.clone(),
        None => format!("{}:{}", cfg.target.host, cfg.target.port),
    };
    let err = |reason: String| RunError::Resolve {
        addr: addr.clone(),
        reason,
    };
    addr.to_socket_addrs()
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".to_string()))
}

/// Runs the load test described by `cfg`. `on_second` sees each second of the measured
/// window as soon as every thread has reported it (used for the live progress line).
pub fn run(cfg: &RunConfig, on_second: &mut dyn FnMut(&SecondRow)) -> Result<Report, RunError> {
    cfg.validate()?;
    let addr = resolve(cfg)?;
    let requests = RequestSet::build(
        &cfg.method,
        &cfg.target,
        &cfg.hosts,
        &cfg.headers,
        cfg.body.as_deref(),
    );
    let h2 = match cfg.protocol {
        Protocol::Http2 { .. } => Some(H2Templates::build(
            &cfg.method,
            &cfg.target,
            &cfg.hosts,
            &cfg.headers,
            cfg.body.as_deref(),
        )?),
        Protocol::Http1 { .. } => None,
    };
    let tls = match cfg.target.scheme {
        Scheme::Https => {
            let alpn: &[&[u8]] = match cfg.protocol {
                Protocol::Http2 { .. } => &[b"h2"],
                Protocol::Http1 { .. } => &[b"http/1.1"],
            };
            Some(tokio_rustls::TlsConnector::from(client_config(
                &cfg.tls, alpn,
            )?))
        }
        Scheme::Http => None,
    };
    let expect = match &cfg.expect_header {
        Some(name) => Some(Expect {
            name: name.as_bytes().to_vec(),
            h2_name: http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
                .map_err(|_| RunError::ExpectHeader(name.clone()))?,
            values: cfg
                .hosts
                .iter()
                .map(|h| h.expected_value().as_bytes().to_vec())
                .collect(),
        }),
        None => None,
    };
    let start = Instant::now();
    let measure_start = start + cfg.warmup;
    let end = measure_start + cfg.duration;
    let shared = Arc::new(Shared {
        cfg: cfg.clone(),
        addr,
        requests,
        h2,
        tls,
        expect,
        start,
        measure_start,
        end,
    });

    let (tx, rx) = mpsc::channel::<Msg>();
    let mut handles = Vec::with_capacity(cfg.threads);
    for id in 0..cfg.threads {
        let sh = shared.clone();
        let tx = tx.clone();
        let h = std::thread::Builder::new()
            .name(format!("pier-load-{id}"))
            .spawn(move || {
                let r = worker_thread(sh, id, &tx);
                let _ = tx.send(Msg::Done);
                r
            })
            .map_err(RunError::Thread)?;
        handles.push(h);
    }
    drop(tx);

    let rows = collect_seconds(&rx, cfg, on_second);

    let mut latency = latency_histogram();
    let mut service = latency_histogram();
    let mut report = Report::empty(cfg, shared.addr);
    for h in handles {
        let r = match h.join() {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(RunError::Thread(e)),
            Err(_) => {
                return Err(RunError::Thread(std::io::Error::other(
                    "worker thread panicked",
                )))
            }
        };
        let rec = r.recorder;
        // Same bounds on both sides, so adding cannot fail.
        let _ = latency.add(&rec.latency);
        let _ = service.add(&rec.service);
        report.status.add(&rec.status);
        report.errors.add(&rec.errors);
        report.bytes_read += rec.bytes_read;
        report.bytes_written += rec.bytes_written;
        report.reconnects += rec.reconnects;
        report.retried += rec.retried;
        report.mismatched += rec.mismatched;
        report.warmup_requests += rec.warmup_requests;
        report.in_flight_at_end += r.in_flight;
        report.unsent += r.unsent;
        if report.first_connect_error.is_none() {
            report.first_connect_error = r.first_connect_error;
        }
        for (row, c) in report.per_host.iter_mut().zip(rec.per_host) {
            row.responses += c.responses;
            row.errors += c.errors;
            row.mismatched += c.mismatched;
        }
    }
    if cfg.model == LoadModel::Closed {
        service = latency.clone();
    }
    report.latency = latency;
    report.service = service;
    report.series = rows;
    Ok(report)
}

fn worker_thread(
    sh: Arc<Shared>,
    id: usize,
    tx: &mpsc::Sender<Msg>,
) -> std::io::Result<ThreadResult> {
    // IO and timers only: the signal and process drivers would add work to every park.
    let mut builder = tokio::runtime::Builder::new_current_thread();
    builder.enable_io().enable_time();
    let coalesce = sh.cfg.coalesce;
    if !coalesce.is_zero() {
        builder.on_thread_park(move || crate::coalesce::before_park(coalesce));
    }
    let rt = builder.build()?;
    let cfg = &sh.cfg;
    let schedule = match cfg.model {
        LoadModel::Closed => None,
        LoadModel::Open { rate } => {
            let thread_rate = rate / cfg.threads as f64;
            // Threads are offset by one global interval so their sends interleave.
            let origin = sh.start + Duration::from_secs_f64(id as f64 / rate);
            Some(Schedule::new(origin, thread_rate, sh.measure_start, sh.end))
        }
    };
    let ctx = Rc::new(ThreadCtx {
        sh: sh.clone(),
        id,
        recorder: RefCell::new(Recorder::new(
            sh.measure_start,
            cfg.model != LoadModel::Closed,
            cfg.hosts.len(),
            cfg.live_hosts && cfg.hosts.len() <= crate::config::LIVE_HOSTS_MAX,
        )),
        schedule,
        rotate: Cell::new(0),
        first_connect_error: RefCell::new(None),
    });
    let local = tokio::task::LocalSet::new();
    let in_flight = local.block_on(&rt, async {
        let conns: Vec<usize> = (id..cfg.connections).step_by(cfg.threads).collect();
        let tasks: Vec<_> = conns
            .into_iter()
            .map(|conn| {
                let ctx = ctx.clone();
                tokio::task::spawn_local(async move {
                    match ctx.sh.cfg.protocol {
                        Protocol::Http1 { .. } => crate::h1::conn::run(&ctx, conn).await,
                        Protocol::Http2 { max_streams } => {
                            crate::h2conn::run(ctx.clone(), conn, max_streams).await
                        }
                    }
                })
            })
            .collect();
        let ticker = tokio::task::spawn_local(ticker(ctx.clone(), tx.clone()));
        let mut in_flight = 0;
        for t in tasks {
            in_flight += t.await.unwrap_or(0);
        }
        ticker.abort();
        in_flight
    });
    drop(local);
    let total_secs = sh.cfg.duration.as_secs_f64().ceil().max(1.0) as u64;
    let mut rec = ctx.recorder.borrow_mut();
    let mut last = rec.take_second(0);
    // Whatever arrived after the last tick belongs to the last (possibly partial) second.
    last.second = last.second.min(total_secs - 1);
    let _ = tx.send(Msg::Second(Box::new(last)));
    let recorder = std::mem::replace(&mut *rec, Recorder::new(sh.measure_start, false, 0, false));
    drop(rec);
    let unsent = ctx.schedule.as_ref().map_or(0, Schedule::unsent);
    let first_connect_error = ctx.first_connect_error.borrow_mut().take();
    Ok(ThreadResult {
        recorder,
        in_flight,
        unsent,
        first_connect_error,
    })
}

/// Hands each full second of the measured window to the collector.
async fn ticker(ctx: Rc<ThreadCtx>, tx: mpsc::Sender<Msg>) {
    let sh = &ctx.sh;
    let mut k = 1u64;
    loop {
        let at = sh.measure_start + Duration::from_secs(k);
        if at >= sh.end {
            return;
        }
        tokio::time::sleep_until(at.into()).await;
        let snap = ctx.recorder.borrow_mut().take_second(k);
        if tx.send(Msg::Second(Box::new(snap))).is_err() {
            return;
        }
        k += 1;
    }
}

/// Merges per-thread seconds into rows, calling `on_second` as each second completes.
fn collect_seconds(
    rx: &mpsc::Receiver<Msg>,
    cfg: &RunConfig,
    on_second: &mut dyn FnMut(&SecondRow),
) -> Vec<SecondRow> {
    struct Pending {
        reports: usize,
        responses: u64,
        errors: u64,
        bytes: u64,
        latency: Histogram<u32>,
        status: StatusCounts,
        error_kinds: ErrorCounts,
        hosts: Vec<HostCounts>,
    }
    let duration = cfg.duration.as_secs_f64();
    let mut pending: BTreeMap<u64, Pending> = BTreeMap::new();
    let mut rows = Vec::new();
    let mut done = 0;
    let finish = |second: u64, p: Pending| {
        let mut row = SecondRow::new(
            second,
            (duration - second as f64).clamp(0.0, 1.0),
            (p.responses, p.errors, p.bytes),
            p.latency,
        );
        row.status = p.status;
        row.error_kinds = p.error_kinds;
        row.hosts = p.hosts;
        row
    };
    while done < cfg.threads {
        match rx.recv() {
            Ok(Msg::Done) => done += 1,
            Ok(Msg::Second(s)) => {
                let entry = pending.entry(s.second).or_insert_with(|| Pending {
                    reports: 0,
                    responses: 0,
                    errors: 0,
                    bytes: 0,
                    latency: second_histogram(),
                    status: StatusCounts::default(),
                    error_kinds: ErrorCounts::default(),
                    hosts: Vec::new(),
                });
                entry.reports += 1;
                entry.responses += s.responses;
                entry.errors += s.errors;
                entry.bytes += s.bytes;
                let _ = entry.latency.add(&s.latency);
                entry.status.add(&s.status);
                entry.error_kinds.add(&s.error_kinds);
                crate::stats::add_hosts(&mut entry.hosts, &s.hosts);
                // Emit every leading second that all threads have reported.
                while let Some(first) = pending.first_entry() {
                    if first.get().reports < cfg.threads {
                        break;
                    }
                    let second = *first.key();
                    let p = first.remove();
                    let row = finish(second, p);
                    on_second(&row);
                    rows.push(row);
                }
            }
            Err(_) => break,
        }
    }
    for (second, p) in pending {
        rows.push(finish(second, p));
    }
    // The last partial second of a thread may merge into an already emitted row.
    rows.sort_by_key(|r| r.second);
    rows.dedup_by(|later, earlier| {
        if later.second == earlier.second {
            earlier.absorb(later);
            true
        } else {
            false
        }
    });
    rows
}

impl Report {
    pub(crate) fn empty(cfg: &RunConfig, addr: SocketAddr) -> Report {
        Report {
            url: format!(
                "{}://{}:{}{}",
                match cfg.target.scheme {
                    Scheme::Http => "http",
                    Scheme::Https => "https",
                },
                cfg.target.host,
                cfg.target.port,
                cfg.target.path
            ),
            connect_addr: addr.to_string(),
            threads: cfg.threads,
            connections: cfg.connections,
            duration: cfg.duration,
            warmup: cfg.warmup,
            model: cfg.model,
            protocol: cfg.protocol,
            host_mode: cfg.host_mode,
            expect_header: cfg.expect_header.clone(),
            timeout: cfg.timeout,
            latency: latency_histogram(),
            service: latency_histogram(),
            status: Default::default(),
            errors: Default::default(),
            bytes_read: 0,
            bytes_written: 0,
            reconnects: 0,
            retried: 0,
            mismatched: 0,
            warmup_requests: 0,
            in_flight_at_end: 0,
            unsent: 0,
            first_connect_error: None,
            per_host: cfg
                .hosts
                .iter()
                .map(|h| HostRow {
                    host: h.name.clone(),
                    responses: 0,
                    errors: 0,
                    mismatched: 0,
                })
                .collect(),
            series: Vec::new(),
            merged_from: Vec::new(),
        }
    }
}
