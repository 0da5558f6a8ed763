//! The wire protocol of an attached one-off process (`pier run`), spoken over a WebSocket
//! (subprotocol [`SUBPROTOCOL`]) from the CLI to the API and from the API to the runner. The
//! API relays messages one at a time in each direction, so a slow side holds the other back
//! instead of being buffered for.
//!
//! Every message is binary; its first byte is the channel, the rest the payload:
//!
//! | channel | direction | payload |
//! | --- | --- | --- |
//! | 0 `STDIN` | to the process | bytes for its stdin (or its terminal) |
//! | 1 `STDOUT` | from it | bytes of its stdout (with a terminal: all its output) |
//! | 2 `STDERR` | from it | bytes of its stderr (pipes only) |
//! | 3 `STATUS` | from it | a [`Status`] as JSON |
//! | 4 `RESIZE` | to it | columns then rows, each a big-endian u16 |
//! | 5 `EOF` | to it | none: its stdin is closed (pipes; a terminal gets Ctrl-D as a byte) |
//!
//! The process's end is one `STATUS` message with `exit`; then the socket closes. A client that
//! goes away ends the process and its children.

use serde::{Deserialize, Serialize};

use crate::platform::RunExit;

/// The WebSocket subprotocol name.
pub const SUBPROTOCOL: &str = "pier-run.v1";

pub const STDIN: u8 = 0;
pub const STDOUT: u8 = 1;
pub const STDERR: u8 = 2;
pub const STATUS: u8 = 3;
pub const RESIZE: u8 = 4;
pub const EOF: u8 = 5;

/// Largest message either side sends or accepts (a chunk of output is at most this).
pub const MAX_MESSAGE: usize = 64 * 1024;

/// News about the process, on channel [`STATUS`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Where it stands before it runs (`pending`, `starting`), and the runner once placed.
    State {
        state: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        runner: Option<String>,
    },
    /// It ended.
    Exit(RunExit),
    /// It could not be run or attached (the socket closes after it).
    Error(String),
}

/// A message on `channel` with `payload`.
pub fn frame(channel: u8, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(payload.len() + 1);
    m.push(channel);
    m.extend_from_slice(payload);
    m
}

/// A [`STATUS`] message.
pub fn status(s: &Status) -> Vec<u8> {
    frame(
        STATUS,
        serde_json::to_string(s).unwrap_or_default().as_bytes(),
    )
}

/// A [`RESIZE`] message.
pub fn resize(cols: u16, rows: u16) -> Vec<u8> {
    let mut p = [0u8; 4];
    p[..2].copy_from_slice(&cols.to_be_bytes());
    p[2..].copy_from_slice(&rows.to_be_bytes());
    frame(RESIZE, &p)
}

/// Reads a [`RESIZE`] payload.
pub fn parse_resize(payload: &[u8]) -> Option<(u16, u16)> {
    let p: [u8; 4] = payload.try_into().ok()?;
    let cols = u16::from_be_bytes([p[0], p[1]]);
    let rows = u16::from_be_bytes([p[2], p[3]]);
    (cols > 0 && rows > 0).then_some((cols, rows))
}

/// Quotes `args` for `/bin/sh`: one argument is taken as a command line as it is (so
/// `pier run app -- 'ls | wc -l'` works); several are a program and its arguments, each quoted
/// so it reaches the program exactly.
pub fn command_line(args: &[String]) -> String {
    if let [one] = args {
        return one.clone();
    }
    args.iter()
        .map(|a| {
            let plain = !a.is_empty()
                && a.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./-_".contains(&b));
            if plain {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn resize_round_trips_and_refuses_nonsense() {
        let m = resize(132, 43);
        assert_eq!(m[0], RESIZE);
        assert_eq!(parse_resize(&m[1..]), Some((132, 43)));
        assert_eq!(parse_resize(&[0, 0, 0, 1]), None);
        assert_eq!(parse_resize(&[1, 2, 3]), None);
    }

    #[test]
    fn command_lines_keep_each_argument_whole() {
        let s = |v: &[&str]| command_line(&v.iter().map(|x| x.to_string()).collect::<Vec<_>>());
        assert_eq!(s(&["ls | wc -l"]), "ls | wc -l");
        assert_eq!(
            s(&["python3", "-c", "print(6*7)"]),
            "python3 -c 'print(6*7)'"
        );
        assert_eq!(s(&["echo", "it's", ""]), r"echo 'it'\''s' ''");
        assert_eq!(s(&["manage.py", "migrate"]), "manage.py migrate");
    }

    #[test]
    fn status_messages_are_json_after_the_channel() {
        let m = status(&Status::Exit(RunExit {
            ended_ms: 1,
            code: Some(3),
            signal: None,
            reason: "exit status 3".into(),
        }));
        assert_eq!(m[0], STATUS);
        let back: Status = serde_json::from_slice(&m[1..]).unwrap();
        assert!(matches!(back, Status::Exit(e) if e.shell_status() == 3));
    }
}
