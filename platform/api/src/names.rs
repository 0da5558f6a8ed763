//! Which domain names an app may claim.
//!
//! [`pier_routes::DomainPattern::parse`] has already normalised the name (IDNA UTS #46 to the
//! A-label form, lower case, one trailing dot dropped, 63/253 limits). A claim must also be:
//! - a host name of two or more labels, each of letters, digits and hyphens (no `_`, which
//!   marks service records such as the proof's own `_pier-challenge`);
//! - with every `xn--` label valid punycode that decodes to what IDNA would encode again
//!   (`xn--x.test` is refused);
//! - never an IP literal, in any spelling a URL parser reads as one: a name whose last label is
//!   numeric (`1.2.3.4`, `127.1`, `0x7f.1`, `017.0.0.1`) is an IPv4 address to browsers
//!   (WHATWG URL's "ends in a number" rule); IPv6 literals never parse as names;
//! - never a public suffix itself, nor a wildcard directly over one (`com`, `co.uk`,
//!   `github.io`, `*.com`, `*.co.uk`), by the public suffix list built into the binary (the
//!   `psl` crate), so no one can claim a whole registry's worth of names.

use pier_routes::DomainPattern;

/// `Ok` when `pattern` may be claimed; otherwise why not.
pub fn check_claimable(pattern: &DomainPattern) -> Result<(), String> {
    let (name, wildcard) = match pattern {
        DomainPattern::Exact(n) => (n.as_ref(), false),
        DomainPattern::Wildcard(n) => (n.as_ref(), true),
        DomainPattern::CatchAll => return Err("the catch-all \"*\" is not a name".into()),
    };
    let shown = pattern.to_string();
    let labels: Vec<&str> = name.split('.').collect();
    if let Some(bad) = labels
        .iter()
        .find(|l| l.is_empty() || !l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
    {
        return Err(format!(
            "{shown}: label {bad:?} may hold only letters, digits and hyphens"
        ));
    }
    if ends_in_a_number(&labels) {
        return Err(format!(
            "{shown} is an IP address, not a domain name: point a domain at the platform instead"
        ));
    }
    if wildcard && is_public_suffix(name) {
        return Err(format!(
            "{shown} is a wildcard directly over the public suffix {name}: claim a name registered under it"
        ));
    }
    if labels.len() < 2 {
        return Err(format!(
            "{shown} is a single label: a domain needs at least two (example.com)"
        ));
    }
    for l in &labels {
        if l.len() >= 4 && l[..4].eq_ignore_ascii_case("xn--") {
            check_a_label(l).map_err(|why| format!("{shown}: label {l:?} {why}"))?;
        }
    }
    if is_public_suffix(name) {
        return Err(format!(
            "{shown} is a public suffix (names are registered under it, it is no one's): claim a name under it"
        ));
    }
    Ok(())
}

/// WHATWG URL: a host whose last label (ignoring one empty trailing label) is all digits, or
/// `0x` with hex digits, is parsed as an IPv4 address.
fn ends_in_a_number(labels: &[&str]) -> bool {
    let Some(last) = labels.last() else {
        return false;
    };
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return true;
    }
    match last.strip_prefix("0x").or_else(|| last.strip_prefix("0X")) {
        Some(hex) => hex.bytes().all(|b| b.is_ascii_hexdigit()),
        None => false,
    }
}

/// An `xn--` label must be punycode that IDNA maps back to itself.
fn check_a_label(label: &str) -> Result<(), &'static str> {
    let (unicode, result) = idna::domain_to_unicode(label);
    if result.is_err() || unicode.starts_with("xn--") {
        return Err("is not valid punycode");
    }
    match idna::domain_to_ascii(&unicode) {
        Ok(again) if again.eq_ignore_ascii_case(label) => Ok(()),
        _ => Err("is not the IDNA form of any name"),
    }
}

/// Whether `name` is itself on the public suffix list (ICANN or private section), or a bare
/// top-level label no list knows.
fn is_public_suffix(name: &str) -> bool {
    match psl::suffix(name.as_bytes()) {
        Some(suffix) => suffix.as_bytes().eq_ignore_ascii_case(name.as_bytes()),
        None => true,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn claim(raw: &str) -> Result<(), String> {
        let p = DomainPattern::parse(raw).map_err(|e| e.to_string())?;
        check_claimable(&p)
    }

    #[test]
    fn ordinary_names_and_wildcards_may_be_claimed() {
        for ok in [
            "example.com",
            "www.example.com",
            "*.example.com",
            "shop.example.co.uk",
            "*.example.co.uk",
            "blog.example.test",
            "münchen.example",
            "xn--mnchen-3ya.example",
            "a-b.example.org",
            "123.example.com",
        ] {
            assert_eq!(claim(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn public_suffixes_and_wildcards_over_them_are_refused() {
        for bad in [
            "com",
            "test",
            "co.uk",
            "*.com",
            "*.co.uk",
            "github.io",
            "*.github.io",
            "*.test",
        ] {
            let why = claim(bad).unwrap_err();
            assert!(
                why.contains("public suffix") || why.contains("single label"),
                "{bad}: {why}"
            );
        }
    }

    #[test]
    fn ip_literals_in_any_spelling_are_refused() {
        for bad in [
            "1.2.3.4",
            "1.2.3.4.",
            "127.1",
            "0x7f.1",
            "0x7F.0.0.1",
            "017.0.0.1",
            "2130706433",
            "example.0x1f",
            "１.２.３.４",
        ] {
            let why = claim(bad).unwrap_err();
            assert!(why.contains("IP address"), "{bad}: {why}");
        }
        for bad in ["[::1]", "::1", "[::ffff:1.2.3.4]"] {
            assert!(claim(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_labels_and_punycode_are_refused() {
        for bad in [
            "xn--x.test",
            "xn--.example.com",
            "_acme.example.com",
            "a_b.example.com",
            "-a.example.com",
            "a..example.com",
            &format!("{}.com", "a".repeat(64)),
        ] {
            assert!(claim(bad).is_err(), "{bad}");
        }
    }
}
