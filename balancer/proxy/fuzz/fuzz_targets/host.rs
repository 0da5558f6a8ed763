//! Hosts off the network (`Host` fields, absolute-form authorities): normalising never panics,
//! gives lower-case names without a port or a trailing dot that normalise to themselves, and a
//! lookup of any of them in a table of exact and wildcard names never panics and finds the
//! most specific match.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_routes::{RequestHost, RouteTable};
use std::sync::OnceLock;

fn table() -> &'static RouteTable {
    static TABLE: OnceLock<RouteTable> = OnceLock::new();
    TABLE.get_or_init(|| {
        let no_files = |_: &str| Err("no files here".to_string());
        let spec = pier_routes::file::parse(
            r#"
            [[app]]
            name = "exact"
            domains = ["a.example.com", "xn--bcher-kva.example"]
            backends = ["127.0.0.1:9001"]
            [[app]]
            name = "wild"
            domains = ["*.example.com"]
            backends = ["127.0.0.1:9002"]
            [[app]]
            name = "deeper"
            domains = ["*.b.example.com"]
            backends = ["127.0.0.1:9003"]
            "#,
            &no_files,
        )
        .expect("spec");
        RouteTable::build(&spec, None).expect("table")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(h) = RequestHost::parse(data) else {
        return;
    };
    let name = h.as_str();
    assert!(!name.is_empty());
    assert!(!name.bytes().any(|b| b.is_ascii_uppercase()));
    if !name.starts_with('[') {
        assert!(!name.ends_with('.'));
        assert!(!name.contains(':'));
        assert!(name.len() <= 253);
    }
    let again = RequestHost::parse(name.as_bytes()).expect("a normalised host parses");
    assert_eq!(again.as_str(), name);

    let found = table().lookup(name).map(|m| m.app.name.to_string());
    let expected = if name == "a.example.com" || name == "xn--bcher-kva.example" {
        Some("exact")
    } else if name.ends_with(".b.example.com") {
        Some("deeper")
    } else if name.ends_with(".example.com") {
        Some("wild")
    } else {
        None
    };
    assert_eq!(found.as_deref(), expected, "{name}");
});
