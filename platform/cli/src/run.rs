//! `pier run`, `pier stop` and `pier runs`: one-off processes. `pier run` attaches this
//! terminal (raw mode, its size and size changes; Ctrl-C and Ctrl-D reach the process as the
//! terminal gives them) or, when stdin is not a terminal, plain pipes; it exits with the
//! command's status. The wire protocol is [`pier_model::runproto`].

use std::io::{IsTerminal, Read, Write};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method};
use pier_model::api::{RunList, RunView};
use pier_model::client::encode_segment;
use pier_model::runproto::{self, Status};
use pier_model::ApiClient;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{check, CliError};

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    pub app: String,
    /// Run without this terminal: output goes to the app's logs as run.N.
    #[arg(short, long)]
    pub detach: bool,
    /// Plain pipes even when stdin is a terminal.
    #[arg(short = 'T', long)]
    pub no_tty: bool,
    /// The command: one argument is a shell command line (`'ls | wc -l'`); several are a
    /// program and its arguments, passed exactly.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// Puts the terminal back as it was when dropped.
struct RawMode;

impl RawMode {
    fn enable() -> Option<RawMode> {
        crossterm::terminal::enable_raw_mode()
            .ok()
            .map(|()| RawMode)
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = crossterm::terminal::disable_raw_mode();
    }
}

fn parse<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> Result<T, CliError> {
    serde_json::from_value(v).map_err(|e| CliError::Failed(format!("unexpected answer: {e}")))
}

/// `pier run`.
pub async fn run(client: &ApiClient, args: &RunArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let command = runproto::command_line(&args.command);
    let tty = !args.detach
        && !args.no_tty
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal();
    let (cols, rows) = if tty {
        crossterm::terminal::size().unwrap_or((80, 24))
    } else {
        (80, 24)
    };
    let term = std::env::var("TERM").ok().filter(|t| {
        !t.is_empty()
            && t.len() <= 64
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._+-".contains(&b))
    });
    let mut body = json!({ "command": command, "detach": args.detach, "tty": tty });
    if tty {
        body["cols"] = json!(cols.max(1));
        body["rows"] = json!(rows.max(1));
        if let Some(t) = term {
            body["term"] = json!(t);
        }
    }
    let path = format!("/v1/apps/{}/runs", encode_segment(&args.app));
    let created: RunView = parse(check(client.call(Method::POST, &path, Some(&body)).await?)?)?;
    if args.detach {
        writeln!(
            out,
            "Running `{command}` on {} as {} (detached): its output is in `pier logs {} --ps {}`; \
             `pier stop {} {}` ends it.",
            args.app, created.name, args.app, created.name, args.app, created.name
        )?;
        return Ok(());
    }
    let attach = created
        .attach_url
        .clone()
        .ok_or_else(|| CliError::Failed("the API gave no attach URL".into()))?;
    eprint!("Running `{command}` on {}... ", args.app);
    let _ = std::io::stderr().flush();
    let ws = connect(client, &attach).await?;
    relay(ws, tty, &created.name).await
}

type Ws = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn connect(client: &ApiClient, attach: &str) -> Result<Ws, CliError> {
    let url = format!("ws://{}{}", client.authority(), client.target(attach));
    let mut req = url
        .as_str()
        .into_client_request()
        .map_err(|e| CliError::Failed(format!("bad attach URL {url}: {e}")))?;
    if let Some(t) = client.token() {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
            req.headers_mut().insert(http::header::AUTHORIZATION, v);
        }
    }
    req.headers_mut().insert(
        http::header::SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(runproto::SUBPROTOCOL),
    );
    let tcp = tokio::net::TcpStream::connect(client.authority())
        .await
        .map_err(|e| CliError::Failed(format!("cannot connect to {}: {e}", client.authority())))?;
    let _ = tcp.set_nodelay(true);
    let cfg = WebSocketConfig {
        max_message_size: Some(runproto::MAX_MESSAGE + 16),
        max_frame_size: Some(runproto::MAX_MESSAGE + 16),
        ..WebSocketConfig::default()
    };
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, tcp, Some(cfg))
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(resp) => {
                let reason = resp
                    .body()
                    .as_ref()
                    .and_then(|b| serde_json::from_slice::<serde_json::Value>(b).ok())
                    .and_then(|v| v["reason"].as_str().map(str::to_string))
                    .unwrap_or_default();
                CliError::Failed(format!("attach refused ({}): {reason}", resp.status()))
            }
            e => CliError::Failed(format!("cannot attach: {e}")),
        })?;
    Ok(ws)
}

/// Reads stdin on a thread of its own (a terminal read cannot be cancelled), in chunks, with
/// `None` at its end; the bounded channel holds the reader back while the process is slow.
fn stdin_reader() -> mpsc::Receiver<Option<Vec<u8>>> {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin();
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) | Err(_) => {
                    let _ = tx.blocking_send(None);
                    return;
                }
                Ok(n) => {
                    if tx.blocking_send(Some(buf[..n].to_vec())).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

async fn relay(ws: Ws, tty: bool, name: &str) -> Result<(), CliError> {
    let (mut sink, mut stream) = ws.split();
    let mut input = stdin_reader();
    let mut input_open = true;
    let mut winch = if tty {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::window_change()).ok()
    } else {
        None
    };
    let mut raw: Option<RawMode> = None;
    let mut up = false;
    let mut exit: Option<i32> = None;
    let mut error: Option<String> = None;
    loop {
        tokio::select! {
            msg = stream.next() => {
                let data = match msg {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                    Some(Ok(_)) => continue,
                };
                let Some((&channel, payload)) = data.split_first() else { continue };
                match channel {
                    runproto::STDOUT => {
                        let mut o = std::io::stdout().lock();
                        o.write_all(payload)?;
                        o.flush()?;
                    }
                    runproto::STDERR => {
                        let mut e = std::io::stderr().lock();
                        e.write_all(payload)?;
                        e.flush()?;
                    }
                    runproto::STATUS => match serde_json::from_slice::<Status>(payload) {
                        Ok(Status::State { state, .. }) if state == "up" && !up => {
                            up = true;
                            eprintln!("up, {name}");
                            if tty {
                                raw = RawMode::enable();
                            }
                        }
                        Ok(Status::State { .. }) => {}
                        Ok(Status::Exit(e)) => exit = Some(e.shell_status()),
                        Ok(Status::Error(e)) => error = Some(e),
                        Err(_) => {}
                    },
                    _ => {}
                }
            }
            chunk = input.recv(), if input_open => {
                let m = match chunk.flatten() {
                    Some(bytes) => runproto::frame(runproto::STDIN, &bytes),
                    None => {
                        input_open = false;
                        runproto::frame(runproto::EOF, &[])
                    }
                };
                if sink.send(Message::Binary(m)).await.is_err() {
                    break;
                }
            }
            Some(()) = async { match winch.as_mut() { Some(w) => w.recv().await, None => std::future::pending().await } } => {
                if let Ok((c, r)) = crossterm::terminal::size() {
                    let _ = sink.send(Message::Binary(runproto::resize(c, r))).await;
                }
            }
        }
    }
    drop(raw);
    let _ = sink.close().await;
    if let Some(e) = error {
        if !up {
            eprintln!("failed");
        }
        return Err(CliError::Failed(e));
    }
    match exit {
        Some(0) => Ok(()),
        Some(code) => Err(CliError::Exit(code)),
        None => Err(CliError::Failed(format!(
            "the connection to {name} was lost before it ended"
        ))),
    }
}

/// `pier stop APP run.N`.
pub async fn stop(
    client: &ApiClient,
    app: &str,
    process: &str,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let path = format!(
        "/v1/apps/{}/runs/{}",
        encode_segment(app),
        encode_segment(process)
    );
    let v: RunView = parse(check(client.call(Method::DELETE, &path, None).await?)?)?;
    match &v.exit {
        Some(e) => writeln!(out, "{} of {app} has ended already: {}", v.name, e.reason)?,
        None => writeln!(out, "Stopping {} of {app}", v.name)?,
    }
    Ok(())
}

/// `pier runs APP`.
pub async fn list(client: &ApiClient, app: &str, out: &mut dyn Write) -> Result<(), CliError> {
    let path = format!("/v1/apps/{}/runs", encode_segment(app));
    let list: RunList = parse(check(client.call(Method::GET, &path, None).await?)?)?;
    let now = pier_store::now_ms();
    for r in &list.runs {
        let how = match &r.exit {
            Some(e) => e.reason.clone(),
            None => r.state.clone(),
        };
        let age = now.saturating_sub(r.created_ms) / 1000;
        writeln!(
            out,
            "{}  {}  {}s ago  by {}  {}{}  `{}`",
            r.name,
            how,
            age,
            r.by,
            if r.detach { "detached" } else { "attached" },
            if r.tty { ", tty" } else { "" },
            crate::platform_verbs::escape_controls(&r.command),
        )?;
    }
    Ok(())
}
