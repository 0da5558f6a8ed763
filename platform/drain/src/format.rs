//! Log lines as RFC 5424 syslog messages, and their octet-counted frames (RFC 6587):
//!
//! ```text
//! 83 <14>1 2026-12-04T18:00:00.123Z blog app web.1 - - GET / 200
//! ```
//!
//! PRI is facility user (1), severity informational (6): `<14>`. HOSTNAME is the app, APP-NAME
//! the line's source (`app` or `router`), PROCID its process (`web.1`, or a balancer's id),
//! MSGID and STRUCTURED-DATA are nil (`-`). Header fields are printable US-ASCII within RFC
//! 5424's lengths (anything else becomes `_`, an empty field `-`). The message is the line with
//! every control character escaped (`\u{1b}`, `\n`), so nothing a line holds can end a frame
//! early or drive a terminal that shows it.

use pier_model::platform::LogLine;

/// `<PRI>` for facility user (1) and severity informational (6).
pub const PRI: &str = "<14>";
/// RFC 5424's longest HOSTNAME, APP-NAME and PROCID.
const MAX_HOSTNAME: usize = 255;
const MAX_APP_NAME: usize = 48;
const MAX_PROCID: usize = 128;

/// The RFC 5424 message of `line`, a line of `app`'s log.
pub fn message(app: &str, line: &LogLine) -> String {
    let ts = if line.at_ms == 0 {
        "-".to_string()
    } else {
        timestamp(line.at_ms)
    };
    format!(
        "{PRI}1 {ts} {} {} {} - - {}",
        header_field(app, MAX_HOSTNAME),
        header_field(&line.source, MAX_APP_NAME),
        header_field(&line.process, MAX_PROCID),
        escape(&line.line)
    )
}

/// Appends the octet-counted frame of `msg` (`LEN SP MSG`) to `out`.
pub fn frame(msg: &str, out: &mut Vec<u8>) {
    out.extend_from_slice(msg.len().to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(msg.as_bytes());
}

/// The frames of `lines` of `app`'s log, one after the other.
pub fn frames(app: &str, lines: &[LogLine]) -> Vec<u8> {
    let mut out = Vec::with_capacity(lines.iter().map(|l| l.line.len() + 64).sum());
    for l in lines {
        frame(&message(app, l), &mut out);
    }
    out
}

/// A header field: printable US-ASCII without spaces, at most `max` characters, `-` if empty.
fn header_field(s: &str, max: usize) -> String {
    let out: String = s
        .chars()
        .take(max)
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    if out.is_empty() {
        "-".into()
    } else {
        out
    }
}

/// The line with every control character (CR, LF, TAB, ESC, DEL, C1...) escaped.
fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// RFC 3339 in UTC with milliseconds: `2026-12-04T18:00:00.123Z`.
pub fn timestamp(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60,
        ms % 1000
    )
}

/// Year, month, day of `days` since 1970-01-01 (proleptic Gregorian calendar).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z % 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn line(src: &str, ps: &str, text: &str) -> LogLine {
        LogLine {
            id: "1-0".into(),
            at_ms: 1_764_892_800_123,
            source: src.into(),
            process: ps.into(),
            line: text.into(),
        }
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_milliseconds() {
        assert_eq!(timestamp(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(timestamp(1_764_892_800_123), "2025-12-05T00:00:00.123Z");
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(timestamp(4_107_542_399_999), "2100-02-28T23:59:59.999Z");
    }

    #[test]
    fn messages_follow_rfc5424() {
        let m = message("blog", &line("app", "web.1", "GET / 200"));
        assert_eq!(
            m,
            "<14>1 2025-12-05T00:00:00.123Z blog app web.1 - - GET / 200"
        );
        let mut f = Vec::new();
        frame(&m, &mut f);
        assert_eq!(f, format!("{} {m}", m.len()).into_bytes());
        let m = message("blog", &line("router", "", "x"));
        assert!(m.contains(" blog router - - - x"), "{m}");
        let mut unknown = line("app", "web.1", "x");
        unknown.at_ms = 0;
        assert!(message("blog", &unknown).starts_with("<14>1 - blog "));
    }

    #[test]
    fn header_fields_are_printable_ascii_within_their_lengths() {
        let long = "p".repeat(300);
        let m = message("blog", &line("ap p\u{e9}", &long, "x"));
        let fields: Vec<&str> = m.splitn(7, ' ').collect();
        assert_eq!(fields[3], "ap_p_");
        assert_eq!(fields[4].len(), MAX_PROCID);
        assert_eq!(header_field(&"a".repeat(60), MAX_APP_NAME).len(), 48);
        assert_eq!(header_field("", MAX_HOSTNAME), "-");
    }

    #[test]
    fn control_characters_are_escaped_and_utf8_kept() {
        let m = message(
            "blog",
            &line(
                "app",
                "web.1",
                "red \u{1b}[31mx\u{7}\r\nnext\ttab \u{85} caf\u{e9} \u{fffd}",
            ),
        );
        assert!(!m.chars().any(char::is_control), "{m:?}");
        assert!(
            m.ends_with("red \\u{1b}[31mx\\u{7}\\r\\nnext\\ttab \\u{85} caf\u{e9} \u{fffd}"),
            "{m}"
        );
        // Octet counting counts bytes, not characters.
        let mut f = Vec::new();
        frame("caf\u{e9}", &mut f);
        assert_eq!(f, "5 caf\u{e9}".as_bytes());
    }
}
