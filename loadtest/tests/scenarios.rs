#![allow(clippy::unwrap_used)]
//! Every scenario under loadtest/scenarios/ parses and validates, and a scenario with two
//! targets runs them interleaved and compares them.

mod common;

use std::path::Path;

use common::{scratch, start, Behaviour};

#[test]
fn every_shipped_scenario_parses() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let s = pier_load::scenario::load(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            assert!(!s.targets.is_empty());
            n += 1;
        }
    }
    assert!(n >= 2, "expected scenario files in {}", dir.display());
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let dir = scratch("scenario-bad");
    let path = dir.join("bad.toml");
    std::fs::write(
        &path,
        "name = \"x\"\nduration = \"1s\"\n[load]\nconections = 5\n[[targets]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\n",
    )
    .unwrap();
    let err = pier_load::scenario::load(&path).unwrap_err().to_string();
    assert!(err.contains("conections"), "{err}");
    std::fs::write(
        &path,
        "name = \"x\"\nduration = \"soon\"\n[[targets]]\nname = \"a\"\nurl = \"http://127.0.0.1:1/\"\n",
    )
    .unwrap();
    let err = pier_load::scenario::load(&path).unwrap_err().to_string();
    assert!(err.contains("duration"), "{err}");
}

#[test]
fn scenario_compares_two_targets_interleaved() {
    let a = start(Behaviour::default());
    let b = start(Behaviour::default());
    let dir = scratch("scenario-run");
    let path = dir.join("ab.toml");
    std::fs::write(
        &path,
        format!(
            r#"
name = "a-vs-b"
duration = "300ms"
rounds = 2
[load]
threads = 1
connections = 2
[hosts]
pattern = "app{{1..4}}.test"
[[targets]]
name = "a"
url = "{}"
[[targets]]
name = "b"
url = "http://b.test:{}/"
connect_to = "{}"
"#,
            a.url(),
            b.addr.port(),
            b.addr
        ),
    )
    .unwrap();
    let s = pier_load::scenario::load(&path).unwrap();
    let mut order = Vec::new();
    let cmp = pier_load::scenario::run_scenario(&s, &mut |round, name, _| {
        order.push(format!("{round}{name}"))
    })
    .unwrap();
    assert_eq!(order, ["0a", "0b", "1a", "1b"]);
    assert_eq!(cmp.targets.len(), 2);
    assert!(cmp
        .targets
        .iter()
        .all(|t| t.runs.len() == 2 && t.median_rps() > 0.0));
    let table = cmp.table();
    assert!(table.contains("1.000x"), "{table}");
    assert_eq!(b.seen.hosts().len(), 4);
}
