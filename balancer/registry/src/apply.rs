//! From registry data to routes: a snapshot (or a scan, page by page) becomes a table, a change
//! becomes an edit of a table. Bad entries (unparseable JSON or address, a domain or backend of
//! a missing app, a certificate that does not load) are reported and skipped; they never stop
//! the rest from loading.

use std::sync::Arc;

use pier_routes::{AcmeChallenge, BackendSpec, DomainPattern, RouteTable};

use crate::cert::load_pair;
use crate::model::{
    AppRecord, BackendRecord, CertRecord, ChallengeRecord, Change, ChangeKind, DomainRecord,
    Snapshot,
};

/// Puts the certificate of a `certs` entry into `table`, keeping the record as the entry's
/// source (so the table can be written back as a snapshot). The validity window is not checked
/// (see [`crate::cert`]): what loads does not depend on the balancer's clock.
fn put_cert_record(table: &mut RouteTable, key: &str, json: &str) -> Result<(), String> {
    let pattern = DomainPattern::parse(key).map_err(|e| e.to_string())?;
    let rec: CertRecord = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let parsed = load_pair(&rec.cert, &rec.key).map_err(|e| e.to_string())?;
    table.put_cert_with_source(
        &pattern,
        parsed.key,
        Some(Arc::from(json)),
        parsed.not_after_ms,
    );
    Ok(())
}

fn put_challenge_record(table: &mut RouteTable, token: &str, json: &str) -> Result<(), String> {
    let rec: ChallengeRecord = serde_json::from_str(json).map_err(|e| e.to_string())?;
    let domain = pier_routes::host::normalise_name(&rec.domain).map_err(|e| e.to_string())?;
    if token.is_empty() || rec.key_authorization.is_empty() {
        return Err("empty token or key authorization".into());
    }
    table.put_acme_challenge(
        token,
        AcmeChallenge {
            domain,
            key_authorization: rec.key_authorization.into(),
        },
    );
    Ok(())
}

fn backend_spec(id: &str, rec: &BackendRecord) -> Result<BackendSpec, String> {
    let (addr, tls) = pier_routes::spec::parse_backend(&rec.address, rec.server_name.as_deref())
        .map_err(|e| format!("address {e}"))?;
    Ok(BackendSpec {
        id: Some(id.into()),
        addr,
        tls,
        expires_at_ms: rec.expires_at_ms,
        weight: pier_routes::spec::check_weight(rec.weight.unwrap_or(1))?,
    })
}

fn split_backend_key(key: &str) -> Result<(&str, &str), String> {
    key.split_once('/')
        .filter(|(a, i)| !a.is_empty() && !i.is_empty())
        .ok_or_else(|| format!("backend key {key:?} is not app/id"))
}

/// Applies one change to `table` (a clone of the table in use). The table's version is set to
/// the change's. An error means the entry was bad and skipped; the table is still consistent.
pub fn apply_change(table: &mut RouteTable, c: &Change) -> Result<(), String> {
    table.set_version(c.version);
    match (c.kind, &c.value) {
        (ChangeKind::App, Some(json)) => {
            let rec: AppRecord =
                serde_json::from_str(json).map_err(|e| format!("app {}: {e}", c.key))?;
            let settings = rec
                .to_settings()
                .map_err(|e| format!("app {}: {e}", c.key))?;
            let backends: Vec<BackendSpec> = table
                .app(&c.key)
                .map(|a| a.backends.iter().map(|b| b.spec()).collect())
                .unwrap_or_default();
            table.upsert_app(&c.key, settings, &backends);
        }
        (ChangeKind::App, None) => {
            table.remove_app(&c.key);
        }
        (ChangeKind::Domain, value) => {
            let pattern =
                DomainPattern::parse(&c.key).map_err(|e| format!("domain {}: {e}", c.key))?;
            match value {
                None => {
                    table.remove_domain(&pattern);
                }
                Some(json) => {
                    let rec: DomainRecord =
                        serde_json::from_str(json).map_err(|e| format!("domain {}: {e}", c.key))?;
                    if rec.verified {
                        table
                            .put_domain(&pattern, &rec.app)
                            .map_err(|e| format!("domain {}: {e}", c.key))?;
                    } else {
                        table.remove_domain(&pattern);
                    }
                }
            }
        }
        (ChangeKind::Backend, value) => {
            let (app, id) = split_backend_key(&c.key)?;
            match value {
                None => {
                    table
                        .remove_backend(app, id)
                        .map_err(|e| format!("backend {}: {e}", c.key))?;
                }
                Some(json) => {
                    let rec: BackendRecord = serde_json::from_str(json)
                        .map_err(|e| format!("backend {}: {e}", c.key))?;
                    let spec =
                        backend_spec(id, &rec).map_err(|e| format!("backend {}: {e}", c.key))?;
                    table
                        .put_backend(app, spec)
                        .map_err(|e| format!("backend {}: {e}", c.key))?;
                }
            }
        }
        (ChangeKind::Challenge, None) => {
            table.remove_acme_challenge(&c.key);
        }
        (ChangeKind::Challenge, Some(json)) => {
            put_challenge_record(table, &c.key, json)
                .map_err(|e| format!("challenge {}: {e}", c.key))?;
        }
        (ChangeKind::Cert, None) => {
            let pattern = DomainPattern::parse(&c.key)
                .map_err(|e| format!("certificate of {}: {e}", c.key))?;
            table.remove_cert(&pattern);
        }
        (ChangeKind::Cert, Some(json)) => {
            // A record that does not load leaves the table as it was (like other bad entries).
            put_cert_record(table, &c.key, json)
                .map_err(|e| format!("certificate of {}: {e}", c.key))?;
        }
    }
    Ok(())
}

/// Builds a whole table from a snapshot (state carried over from `previous`). Returns the
/// table and one line per skipped entry (the first hundred).
pub fn table_from_snapshot(
    s: &Snapshot,
    app_domains: &[Box<str>],
    previous: Option<&RouteTable>,
) -> (RouteTable, Vec<String>) {
    let mut loader = TableLoader::new(app_domains, s.apps.len(), s.domains.len(), previous);
    loader.apps(s.apps.clone());
    loader.backends(s.backends.clone());
    loader.domains(s.domains.clone());
    loader.certs(s.certs.clone());
    loader.challenges(s.challenges.clone());
    let (table, _, problems) = loader.finish(s.version);
    (table, problems)
}

/// Builds a table from a registry scanned in batches: apps first, then backends, then
/// domains, then certificates, each entry parsed and inserted as it arrives, so a large registry is never held in
/// memory as text and as a table at once. Bad entries are counted and a sample kept.
pub struct TableLoader<'a> {
    table: RouteTable,
    previous: Option<&'a RouteTable>,
    problems: Vec<String>,
    skipped: usize,
}

/// How many problem lines a load keeps (all are counted).
const KEEP_PROBLEMS: usize = 100;

impl<'a> TableLoader<'a> {
    pub fn new(
        app_domains: &[Box<str>],
        apps: usize,
        domains: usize,
        previous: Option<&'a RouteTable>,
    ) -> Self {
        let mut table = RouteTable::with_capacity(domains, apps, previous);
        table.set_app_domains(app_domains.to_vec());
        TableLoader {
            table,
            previous,
            problems: Vec::new(),
            skipped: 0,
        }
    }

    fn problem(&mut self, p: String) {
        self.skipped += 1;
        if self.problems.len() < KEEP_PROBLEMS {
            self.problems.push(p);
        }
    }

    pub fn apps(&mut self, batch: Vec<(String, String)>) {
        for (name, json) in batch {
            let settings = serde_json::from_str::<AppRecord>(&json)
                .map_err(|e| e.to_string())
                .and_then(|r| r.to_settings());
            match settings {
                Ok(settings) => self
                    .table
                    .upsert_app_from(&name, settings, &[], self.previous),
                Err(e) => self.problem(format!("app {name}: {e}")),
            }
        }
    }

    pub fn backends(&mut self, batch: Vec<(String, String)>) {
        for (key, json) in batch {
            let result = split_backend_key(&key).and_then(|(app, id)| {
                let rec: BackendRecord = serde_json::from_str(&json).map_err(|e| e.to_string())?;
                let spec = backend_spec(id, &rec)?;
                self.table
                    .put_backend_from(app, spec, self.previous)
                    .map_err(|e| e.to_string())
            });
            if let Err(e) = result {
                self.problem(format!("backend {key}: {e}"));
            }
        }
    }

    pub fn domains(&mut self, batch: Vec<(String, String)>) {
        for (key, json) in batch {
            let result = DomainPattern::parse(&key)
                .map_err(|e| e.to_string())
                .and_then(|p| {
                    let rec: DomainRecord =
                        serde_json::from_str(&json).map_err(|e| e.to_string())?;
                    if rec.verified {
                        self.table
                            .put_domain(&p, &rec.app)
                            .map_err(|e| e.to_string())?;
                    }
                    Ok(())
                });
            if let Err(e) = result {
                self.problem(format!("domain {key}: {e}"));
            }
        }
    }

    /// Loads a batch of the `certs` hash (domain pattern → certificate record). Call it after
    /// the domains.
    pub fn certs(&mut self, batch: Vec<(String, String)>) {
        for (key, json) in batch {
            if let Err(e) = put_cert_record(&mut self.table, &key, &json) {
                self.problem(format!("certificate of {key}: {e}"));
            }
        }
    }

    /// Loads a batch of the pending ACME challenges (token → challenge record).
    pub fn challenges(&mut self, batch: Vec<(String, String)>) {
        for (token, json) in batch {
            if let Err(e) = put_challenge_record(&mut self.table, &token, &json) {
                self.problem(format!("challenge {token}: {e}"));
            }
        }
    }

    /// The table at `version`, the number of skipped entries, and a sample of the problems.
    pub fn finish(mut self, version: u64) -> (RouteTable, usize, Vec<String>) {
        self.table.set_version(version);
        (self.table, self.skipped, self.problems)
    }
}

/// The registry data a table holds, in the snapshot format (for the local snapshot file),
/// without its certificates: their records hold private keys, which this writer does not put
/// in a file whose permissions it does not control (see [`write_table_snapshot_with_certs`]).
/// Written by streaming, entry by entry, so a large table is not copied into text first.
pub fn write_table_snapshot(
    table: &RouteTable,
    feed_id: &str,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    write_snapshot(table, feed_id, false, out)
}

/// [`write_table_snapshot`] with the certificates that came from the registry (their records,
/// private keys included): write it only to a file that only the balancer can read (mode 0600).
pub fn write_table_snapshot_with_certs(
    table: &RouteTable,
    feed_id: &str,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    write_snapshot(table, feed_id, true, out)
}

fn write_snapshot(
    table: &RouteTable,
    feed_id: &str,
    with_certs: bool,
    out: &mut impl std::io::Write,
) -> std::io::Result<()> {
    let json = |v: &str| serde_json::to_string(v).unwrap_or_else(|_| "\"\"".into());
    write!(
        out,
        "{{\"version\":{},\"feed_id\":{},\"apps\":[",
        table.version(),
        json(feed_id)
    )?;
    for (i, app) in table.apps().enumerate() {
        let rec = serde_json::to_string(&AppRecord::from_settings(&app.settings))
            .map_err(std::io::Error::other)?;
        let sep = if i == 0 { "" } else { "," };
        write!(out, "{sep}[{},{}]", json(&app.name), json(&rec))?;
    }
    out.write_all(b"],\"domains\":[")?;
    for (i, (pattern, app)) in table.domains().enumerate() {
        let rec = serde_json::to_string(&DomainRecord::verified(app.name.as_str()))
            .map_err(std::io::Error::other)?;
        let sep = if i == 0 { "" } else { "," };
        write!(out, "{sep}[{},{}]", json(&pattern.to_string()), json(&rec))?;
    }
    out.write_all(b"],\"backends\":[")?;
    let mut first = true;
    for app in table.apps() {
        for b in app.backends.iter() {
            let spec = b.spec();
            let rec = serde_json::to_string(&BackendRecord {
                address: spec.address(),
                expires_at_ms: b.expires_at_ms,
                server_name: spec.tls.and_then(|t| t.server_name).map(|n| n.to_string()),
                weight: (spec.weight != 1).then_some(spec.weight),
            })
            .map_err(std::io::Error::other)?;
            let sep = if first { "" } else { "," };
            first = false;
            write!(
                out,
                "{sep}[{},{}]",
                json(&format!("{}/{}", app.name, b.id())),
                json(&rec)
            )?;
        }
    }
    out.write_all(b"],\"certs\":[")?;
    if with_certs {
        let mut first = true;
        for (pattern, entry) in table.certs() {
            // Only registry certificates carry their record; others cannot be written back.
            let Some(source) = &entry.source else {
                continue;
            };
            let sep = if first { "" } else { "," };
            first = false;
            write!(
                out,
                "{sep}[{},{}]",
                json(&pattern.to_string()),
                json(source)
            )?;
        }
    }
    out.write_all(b"]}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap() -> Snapshot {
        Snapshot {
            version: 7,
            feed_id: "0-0".into(),
            apps: vec![
                ("blog".into(), "{}".into()),
                ("bad".into(), "{\"policy\": \"random\"}".into()),
                ("junk".into(), "not json".into()),
            ],
            domains: vec![
                (
                    "blog.test".into(),
                    "{\"app\":\"blog\",\"verified\":true}".into(),
                ),
                (
                    "pending.test".into(),
                    "{\"app\":\"blog\",\"verified\":false,\"token\":\"t\"}".into(),
                ),
                (
                    "orphan.test".into(),
                    "{\"app\":\"gone\",\"verified\":true}".into(),
                ),
                (
                    "bad..name".into(),
                    "{\"app\":\"blog\",\"verified\":true}".into(),
                ),
            ],
            backends: vec![
                ("blog/i1".into(), "{\"address\":\"127.0.0.1:9001\"}".into()),
                ("blog/i2".into(), "{\"address\":\"nowhere\"}".into()),
                ("gone/i3".into(), "{\"address\":\"127.0.0.1:9003\"}".into()),
                ("noslash".into(), "{\"address\":\"127.0.0.1:9004\"}".into()),
            ],
            certs: Vec::new(),
            challenges: Vec::new(),
        }
    }

    /// A certificate record for `names` (self-signed, valid `from`..`to`, years).
    fn cert_record(names: &[&str], from: i32, to: i32) -> String {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.not_before = rcgen::date_time_ymd(from, 1, 1);
        params.not_after = rcgen::date_time_ymd(to, 1, 1);
        let cert = params.self_signed(&kp).unwrap();
        serde_json::to_string(&CertRecord {
            app: "blog".into(),
            cert: cert.pem(),
            key: kp.serialize_pem(),
            added_ms: 1,
            source: Default::default(),
        })
        .unwrap()
    }

    fn change(v: u64, kind: ChangeKind, key: &str, value: Option<&str>) -> Change {
        Change {
            id: format!("{v}-0"),
            version: v,
            kind,
            key: key.into(),
            value: value.map(Into::into),
        }
    }

    #[test]
    fn certs_load_from_snapshots_and_bad_ones_are_skipped() {
        let good = cert_record(&["blog.test"], 2020, 2090);
        // An expired certificate still loads: the table does not depend on the clock.
        let expired = cert_record(&["old.test"], 2000, 2001);
        let other: CertRecord =
            serde_json::from_str(&cert_record(&["x.test"], 2020, 2090)).unwrap();
        let mut mismatched: CertRecord = serde_json::from_str(&good).unwrap();
        mismatched.key = other.key;
        let mut s = snap();
        s.certs = vec![
            ("blog.test".into(), good.clone()),
            ("old.test".into(), expired),
            (
                "mismatch.test".into(),
                serde_json::to_string(&mismatched).unwrap(),
            ),
            ("junk.test".into(), "{".into()),
            ("bad..name".into(), good.clone()),
        ];
        let (t, problems) = table_from_snapshot(&s, &[], None);
        assert_eq!(t.cert_count(), 2);
        assert!(t.cert_for("blog.test").is_some());
        assert!(t.cert_for("old.test").is_some());
        assert!(t.cert_for("mismatch.test").is_none());
        assert_eq!(problems.len(), 7 + 3, "{problems:#?}");
        assert!(
            problems
                .iter()
                .any(|p| p.contains("mismatch.test") && p.contains("does not match")),
            "{problems:#?}"
        );
        // A snapshot file from before certificates existed still loads.
        let mut old = serde_json::to_value(snap()).unwrap();
        old.as_object_mut().unwrap().remove("certs");
        let back: Snapshot = serde_json::from_value(old).unwrap();
        assert!(back.certs.is_empty());
        let (t, _) = table_from_snapshot(&back, &[], None);
        assert_eq!(t.cert_count(), 0);
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn cert_changes_edit_the_table_and_bad_ones_leave_it_alone() {
        let (mut t, _) = table_from_snapshot(&snap(), &[], None);
        let first = cert_record(&["blog.test"], 2020, 2090);
        let second = cert_record(&["blog.test"], 2020, 2090);
        apply_change(
            &mut t,
            &change(8, ChangeKind::Cert, "blog.test", Some(&first)),
        )
        .unwrap();
        let one = Arc::clone(t.cert_for("blog.test").unwrap());
        apply_change(
            &mut t,
            &change(9, ChangeKind::Cert, "blog.test", Some(&second)),
        )
        .unwrap();
        let two = Arc::clone(t.cert_for("blog.test").unwrap());
        assert!(!Arc::ptr_eq(&one, &two));
        assert!(apply_change(
            &mut t,
            &change(10, ChangeKind::Cert, "blog.test", Some("{}"))
        )
        .is_err());
        assert!(Arc::ptr_eq(t.cert_for("blog.test").unwrap(), &two));
        assert_eq!(t.version(), 10);
        assert!(apply_change(&mut t, &change(11, ChangeKind::Cert, "a..b", None)).is_err());
        apply_change(&mut t, &change(12, ChangeKind::Cert, "blog.test", None)).unwrap();
        assert!(t.cert_for("blog.test").is_none());
        // Deleting what is not there is harmless (a change seen twice).
        apply_change(&mut t, &change(13, ChangeKind::Cert, "blog.test", None)).unwrap();
        assert_eq!(t.cert_count(), 0);
    }

    #[test]
    fn certs_go_into_snapshot_files_only_when_asked() {
        let mut s = snap();
        s.certs = vec![("blog.test".into(), cert_record(&["blog.test"], 2020, 2090))];
        let (mut t, _) = table_from_snapshot(&s, &[], None);
        // A certificate without a record (from a routes file) is never written.
        let extra: CertRecord =
            serde_json::from_str(&cert_record(&["x.test"], 2020, 2090)).unwrap();
        let loaded = load_pair(&extra.cert, &extra.key).unwrap();
        t.put_cert(&DomainPattern::parse("x.test").unwrap(), loaded.key);
        let mut out = Vec::new();
        write_table_snapshot(&t, "5-0", &mut out).unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        let back: Snapshot = serde_json::from_str(&text).unwrap();
        assert!(back.certs.is_empty());
        let mut out = Vec::new();
        write_table_snapshot_with_certs(&t, "5-0", &mut out).unwrap();
        let back: Snapshot = serde_json::from_slice(&out).unwrap();
        assert_eq!(back.certs, s.certs);
        let (t2, problems) = table_from_snapshot(&back, &[], None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t2.cert_count(), 1);
        assert!(t2.cert_for("blog.test").is_some());
    }

    #[test]
    fn bad_entries_are_skipped_and_reported() {
        let (t, problems) = table_from_snapshot(&snap(), &[], None);
        assert_eq!(t.version(), 7);
        assert_eq!(t.app_count(), 1);
        assert_eq!(t.len(), 1);
        let app = t.lookup("blog.test").unwrap().app;
        assert_eq!(app.backends.len(), 1);
        assert!(t.lookup("pending.test").is_none());
        assert_eq!(problems.len(), 7, "{problems:#?}");
    }

    #[test]
    fn snapshots_round_trip() {
        let s = snap();
        let (t, _) = table_from_snapshot(&s, &[], None);
        assert_eq!(t.lookup("blog.test").unwrap().app.backends.len(), 1);
        // The table written as a snapshot loads back into the same routes.
        let mut out = Vec::new();
        write_table_snapshot(&t, "5-0", &mut out).unwrap();
        let back: Snapshot = serde_json::from_slice(&out).unwrap();
        assert_eq!(back.version, 7);
        assert_eq!(back.feed_id, "5-0");
        let (t3, problems) = table_from_snapshot(&back, &[], None);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(t3.len(), t.len());
        let app = t3.lookup("blog.test").unwrap().app;
        assert_eq!(app.backends[0].addr, "127.0.0.1:9001".parse().unwrap());
    }

    #[test]
    fn changes_edit_the_table() {
        let (mut t, _) = table_from_snapshot(&snap(), &[], None);
        let ch = |v, kind, key: &str, value: Option<&str>| Change {
            id: format!("{v}-0"),
            version: v,
            kind,
            key: key.into(),
            value: value.map(Into::into),
        };
        apply_change(&mut t, &ch(8, ChangeKind::App, "shop", Some("{}"))).unwrap();
        apply_change(
            &mut t,
            &ch(
                9,
                ChangeKind::Domain,
                "*.shop.test",
                Some("{\"app\":\"shop\",\"verified\":true}"),
            ),
        )
        .unwrap();
        apply_change(
            &mut t,
            &ch(
                10,
                ChangeKind::Backend,
                "shop/a",
                Some("{\"address\":\"127.0.0.1:9100\"}"),
            ),
        )
        .unwrap();
        let m = t.lookup("www.shop.test").unwrap();
        assert_eq!(&*m.app.name, "shop");
        assert_eq!(m.app.backends.len(), 1);
        // Settings change keeps backends.
        apply_change(
            &mut t,
            &ch(
                11,
                ChangeKind::App,
                "shop",
                Some("{\"policy\":\"least-outstanding\"}"),
            ),
        )
        .unwrap();
        assert_eq!(t.app("shop").unwrap().backends.len(), 1);
        assert!(apply_change(
            &mut t,
            &ch(
                12,
                ChangeKind::Backend,
                "shop/b",
                Some("{\"address\":\"x\"}")
            )
        )
        .is_err());
        assert!(apply_change(
            &mut t,
            &ch(
                13,
                ChangeKind::Backend,
                "nope/b",
                Some("{\"address\":\"127.0.0.1:1\"}")
            )
        )
        .is_err());
        apply_change(&mut t, &ch(14, ChangeKind::Backend, "shop/a", None)).unwrap();
        assert!(t.app("shop").unwrap().backends.is_empty());
        apply_change(&mut t, &ch(15, ChangeKind::Domain, "*.shop.test", None)).unwrap();
        assert!(t.lookup("www.shop.test").is_none());
        apply_change(&mut t, &ch(16, ChangeKind::App, "shop", None)).unwrap();
        assert!(t.app("shop").is_none());
        assert_eq!(t.version(), 16);
    }
}
