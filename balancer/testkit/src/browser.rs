//! [`Browser`]: headless Chromium driven over the DevTools protocol, for end-to-end tests of
//! the web dashboard in a real browser.
//!
//! It starts Debian's `chromium` (or `$PIER_CHROMIUM`) with a private profile and a DevTools
//! port of its own, opens pages through the DevTools HTTP endpoint and talks to each over its
//! WebSocket: evaluate a script in the page (awaiting promises), wait for a condition, take a
//! screenshot. `.ci/test` installs `chromium` when it is missing.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// A headless Chromium process; killed when dropped.
pub struct Browser {
    child: Child,
    port: u16,
    _profile: tempfile::TempDir,
}

/// The browser binary: `$PIER_CHROMIUM`, else the first of the usual names on `PATH`.
pub fn chromium() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("PIER_CHROMIUM") {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    for name in ["chromium", "chromium-browser", "google-chrome"] {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.is_file() {
                return Some(p);
            }
        }
    }
    None
}

impl Browser {
    /// Starts headless Chromium. Panics, saying how to get it, when there is none.
    pub fn start() -> Browser {
        let bin = chromium().expect(
            "no chromium: install Debian's `chromium` (.ci/test does) or set PIER_CHROMIUM",
        );
        let profile = tempfile::tempdir().expect("profile dir");
        let child = Command::new(&bin)
            .args([
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--disable-background-networking",
                "--remote-debugging-port=0",
                "--window-size=1200,900",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()));
        let port = wait_for_port(&profile.path().join("DevToolsActivePort"));
        Browser {
            child,
            port,
            _profile: profile,
        }
    }

    /// Opens a new tab at `url`.
    pub async fn page(&self, url: &str) -> Page {
        let target = devtools_http(self.port, &format!("/json/new?{url}")).await;
        let ws_url = target["webSocketDebuggerUrl"]
            .as_str()
            .unwrap_or_else(|| panic!("no webSocketDebuggerUrl in {target}"))
            .to_string();
        let (ws, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .expect("devtools websocket");
        let mut page = Page { ws, next_id: 1 };
        page.call("Page.enable", json!({})).await;
        page.call("Runtime.enable", json!({})).await;
        page
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for_port(file: &Path) -> u16 {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(text) = std::fs::read_to_string(file) {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                return port;
            }
        }
        assert!(
            Instant::now() < deadline,
            "chromium did not open its DevTools port"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One request to the DevTools HTTP endpoint (`PUT`, as current Chromium wants for new tabs).
async fn devtools_http(port: u16, path: &str) -> Value {
    let mut s = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("devtools http");
    let req = format!("PUT {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("devtools write");
    // The endpoint keeps the connection open: read the head, then Content-Length bytes.
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = String::from_utf8_lossy(&out).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if body.len() >= len {
                return serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("devtools answered {text:?}: {e}"));
            }
        }
        assert!(Instant::now() < deadline, "devtools did not answer {path}");
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("devtools read timed out")
            .expect("devtools read");
        assert!(n > 0, "devtools closed before answering {path}");
        out.extend_from_slice(&buf[..n]);
    }
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

/// One tab.
pub struct Page {
    ws: Ws,
    next_id: u64,
}

impl Page {
    /// Calls a DevTools method and returns its result (events in between are skipped).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.send(method, params).await {
            Ok(v) => v,
            Err(e) => panic!("{method}: {e}"),
        }
    }

    /// Calls a DevTools method: its result, or the error it answered with.
    async fn send(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        let id = self.next_id;
        self.next_id += 1;
        let msg = json!({"id": id, "method": method, "params": params}).to_string();
        self.ws
            .send(Message::Text(msg))
            .await
            .expect("devtools send");
        loop {
            let m = tokio::time::timeout(Duration::from_secs(30), self.ws.next())
                .await
                .unwrap_or_else(|_| panic!("no answer to {method}"))
                .expect("devtools closed")
                .expect("devtools read");
            let Message::Text(t) = m else { continue };
            let v: Value = serde_json::from_str(&t).expect("devtools json");
            if v["id"] == json!(id) {
                if let Some(e) = v.get("error") {
                    return Err(e.clone());
                }
                return Ok(v["result"].clone());
            }
        }
    }

    /// Evaluates `js` in the page (awaiting a promise) and returns its value.
    pub async fn eval(&mut self, js: &str) -> Value {
        match self.try_eval(js).await {
            Ok(v) => v,
            Err(e) => panic!("{js}: {e}"),
        }
    }

    /// [`Page::eval`], with the exception or protocol error (a navigation in between) as an
    /// error instead of a panic.
    pub async fn try_eval(&mut self, js: &str) -> Result<Value, Value> {
        let r = self
            .send(
                "Runtime.evaluate",
                json!({"expression": js, "awaitPromise": true, "returnByValue": true}),
            )
            .await?;
        if let Some(e) = r.get("exceptionDetails") {
            return Err(e.clone());
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until `js` gives a value other than `null`, `false` or nothing, and returns it
    /// (errors while the page navigates count as nothing); panics with `what` after `timeout`.
    pub async fn eval_until(&mut self, js: &str, timeout: Duration, what: &str) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(v) = self.try_eval(js).await {
                if !v.is_null() && v != json!(false) {
                    return v;
                }
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({js})"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until `js` is `true` in the page; panics with `what` after `timeout`. An exception
    /// (the page navigating, an element not there yet) counts as not yet, and the last one is
    /// in the panic message.
    pub async fn wait_for(&mut self, js: &str, timeout: Duration, what: &str) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = match self.try_eval(js).await {
                Ok(v) if v.as_bool() == Some(true) => return,
                Ok(v) => v,
                Err(e) => e,
            };
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what} ({js}); last: {last}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Logs in to pier's dashboard through its form, as a user does (the page is at `/ui/`).
    pub async fn dashboard_log_in(&mut self, token: &str, timeout: Duration) {
        self.wait_for(
            "!document.getElementById('login').hidden",
            timeout,
            "the login form",
        )
        .await;
        self.eval(&format!(
            "document.getElementById('token').value = {}; document.getElementById('login-form').requestSubmit(); true",
            json!(token)
        ))
        .await;
    }

    /// Navigates and waits for the load event.
    pub async fn goto(&mut self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
        self.wait_for(
            "document.readyState === 'complete'",
            Duration::from_secs(20),
            "the page to load",
        )
        .await;
    }

    /// Sets the viewport (CSS pixels, and a zoom factor as the browser's zoom does).
    pub async fn viewport(&mut self, width: u32, height: u32, scale: f64) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": scale, "mobile": false}),
        )
        .await;
    }

    /// Presses `key` as a keyboard does (`Tab`, `Shift+Tab`, `Enter`, `Escape`, `Space`): the
    /// page sees the key events and their default actions (focus moves, forms submit).
    pub async fn press(&mut self, key: &str) {
        let (key, shift) = match key.strip_prefix("Shift+") {
            Some(k) => (k, true),
            None => (key, false),
        };
        let (code, vk, text) = match key {
            "Tab" => ("Tab", 9, ""),
            "Enter" => ("Enter", 13, "\r"),
            "Escape" => ("Escape", 27, ""),
            "Space" => ("Space", 32, " "),
            other => panic!("press: no key {other}"),
        };
        let key_name = if key == "Space" { " " } else { key };
        let modifiers = if shift { 8 } else { 0 };
        let mut down = json!({"type": "keyDown", "key": key_name, "code": code,
            "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk, "modifiers": modifiers});
        if !text.is_empty() {
            down["text"] = json!(text);
        }
        self.call("Input.dispatchKeyEvent", down).await;
        self.call(
            "Input.dispatchKeyEvent",
            json!({"type": "keyUp", "key": key_name, "code": code,
                "windowsVirtualKeyCode": vk, "nativeVirtualKeyCode": vk, "modifiers": modifiers}),
        )
        .await;
    }

    /// Types `text` into the focused element, as an input method does.
    pub async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({"text": text})).await;
    }

    /// A PNG of the page as it is.
    pub async fn screenshot(&mut self, path: &Path) {
        let r = self
            .call(
                "Page.captureScreenshot",
                json!({"format": "png", "captureBeyondViewport": true}),
            )
            .await;
        let data = r["data"].as_str().expect("screenshot data");
        let bytes = decode_base64(data);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot dir");
        }
        std::fs::write(path, bytes).expect("screenshot write");
    }
}

fn decode_base64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => 0,
        }
    };
    let clean: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let pad = chunk.iter().filter(|&&b| b == b'=').count();
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i as u32);
        }
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad.min(2)]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_decodes() {
        assert_eq!(decode_base64("aGVsbG8="), b"hello");
        assert_eq!(decode_base64("aGk="), b"hi");
        assert_eq!(decode_base64("YWJj"), b"abc");
    }
}
