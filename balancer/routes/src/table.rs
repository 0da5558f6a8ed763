//! The route table: one immutable snapshot answering "which app serves this host?".
//!
//! Lookup order (documented in docs/configuration.md):
//! 1. the exact hostname;
//! 2. wildcards, walking up one label at a time, so the most specific wildcard wins
//!    (`*.a.example.com` before `*.example.com`); `*.example.com` matches any depth below
//!    `example.com` but not `example.com` itself;
//! 3. `{app}.{base}` for each configured app domain base, where `{app}` is one label naming an app;
//! 4. the catch-all `*`, if an app claims it.
//!
//! Each step is one hash probe, so a lookup costs at most one probe per label of the host,
//! whatever the size of the table. Domains live in a fixed number of shards behind `Arc`s, so an
//! edit of a cloned table copies only the shards it touches, not the whole table.

use std::hash::BuildHasher;
use std::sync::Arc;

use compact_str::CompactString;
use hashbrown::HashTable;

use crate::app::{App, Backend};
use crate::host::DomainPattern;
use crate::spec::{AppSpec, RouteSpec};

/// How a host matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MatchKind {
    Exact,
    Wildcard,
    AppDomain,
    CatchAll,
}

/// The result of a lookup.
#[derive(Debug, Clone, Copy)]
pub struct RouteMatch<'a> {
    pub app: &'a Arc<App>,
    pub kind: MatchKind,
}

/// Why a table could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BuildError {
    #[error("domain {domain} is claimed by both app {first:?} and app {second:?}")]
    DomainConflict {
        domain: String,
        first: String,
        second: String,
    },
    #[error("app name {0:?} is used twice")]
    DuplicateApp(String),
}

#[derive(Clone)]
struct DomainEntry {
    /// Inline up to 24 bytes: most hostnames cost no allocation of their own.
    name: CompactString,
    exact: Option<Arc<App>>,
    wildcard: Option<Arc<App>>,
}

/// A hash map split into shards that are shared between snapshots until written.
#[derive(Clone)]
struct Sharded<E> {
    shards: Box<[Arc<HashTable<E>>]>,
}

/// Entries per shard at build time: 7/8 of 1024 buckets (896) is hashbrown's growth point; 800
/// keeps shards dense while leaving room for the spread of a random split (a shard that passes
/// 896 doubles, measured: 880 per shard cost more memory than 800).
const PER_SHARD: usize = 800;

impl<E: Clone> Sharded<E> {
    fn with_capacity(n: usize) -> Self {
        // Shards keep a copy-on-write edit in the tens of microseconds at a million entries;
        // small tables get a single shard.
        let shards = n.div_ceil(PER_SHARD).clamp(1, 1 << 16);
        let per = n.div_ceil(shards);
        Sharded {
            shards: (0..shards)
                .map(|_| Arc::new(HashTable::with_capacity(per)))
                .collect(),
        }
    }

    fn shard_of(&self, hash: u64) -> usize {
        // Bits 20..52 pick the shard (multiply-shift, so any shard count works); hashbrown uses
        // the low bits for the bucket and the top seven for its tag, which stay independent.
        let mid = u64::from((hash >> 20) as u32);
        ((mid * self.shards.len() as u64) >> 32) as usize
    }

    fn find(&self, hash: u64, eq: impl FnMut(&E) -> bool) -> Option<&E> {
        self.shards[self.shard_of(hash)].find(hash, eq)
    }

    fn shard_mut(&mut self, hash: u64) -> &mut HashTable<E> {
        let i = self.shard_of(hash);
        Arc::make_mut(&mut self.shards[i])
    }

    fn iter(&self) -> impl Iterator<Item = &E> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

/// An immutable routing snapshot.
#[derive(Clone)]
pub struct RouteTable {
    hasher: foldhash::fast::RandomState,
    domains: Sharded<DomainEntry>,
    apps: Sharded<Arc<App>>,
    app_domains: Arc<[Box<str>]>,
    catch_all: Option<Arc<App>>,
    domain_count: usize,
    app_count: usize,
    version: u64,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("domains", &self.domain_count)
            .field("apps", &self.app_count)
            .field("version", &self.version)
            .finish()
    }
}

impl Default for RouteTable {
    fn default() -> Self {
        RouteTable::empty()
    }
}

impl RouteTable {
    /// A table with no routes: every host is unknown.
    pub fn empty() -> Self {
        RouteTable {
            hasher: foldhash::fast::RandomState::default(),
            domains: Sharded::with_capacity(0),
            apps: Sharded::with_capacity(0),
            app_domains: Arc::from(Vec::new()),
            catch_all: None,
            domain_count: 0,
            app_count: 0,
            version: 0,
        }
    }

    /// Builds a table from a spec. State that outlives a snapshot (per-app counters, backend
    /// ejection and outstanding counts) is carried over from `previous` by app name and
    /// backend id. Every problem is reported, not only the first.
    pub fn build(spec: &RouteSpec, previous: Option<&RouteTable>) -> Result<Self, Vec<BuildError>> {
        let domain_total: usize = spec.apps.iter().map(|a| a.domains.len()).sum();
        let mut table = RouteTable {
            hasher: previous.map(|p| p.hasher).unwrap_or_default(),
            domains: Sharded::with_capacity(domain_total),
            apps: Sharded::with_capacity(spec.apps.len()),
            app_domains: spec.app_domains.clone().into(),
            catch_all: None,
            domain_count: 0,
            app_count: 0,
            version: previous.map_or(1, |p| p.version + 1),
        };
        let mut errors = Vec::new();
        for app_spec in &spec.apps {
            let app = Arc::new(build_app(app_spec, previous));
            if let Err(e) = table.insert_app(&app) {
                errors.push(e);
                continue;
            }
            for pattern in &app_spec.domains {
                if let Err(e) = table.claim(pattern, &app) {
                    errors.push(e);
                }
            }
        }
        if errors.is_empty() {
            Ok(table)
        } else {
            Err(errors)
        }
    }

    fn hash(&self, key: &str) -> u64 {
        self.hasher.hash_one(key)
    }

    fn insert_app(&mut self, app: &Arc<App>) -> Result<(), BuildError> {
        let hash = self.hash(&app.name);
        let hasher = self.hasher;
        let shard = self.apps.shard_mut(hash);
        match shard.entry(
            hash,
            |a| a.name == app.name,
            |a| hasher.hash_one(a.name.as_str()),
        ) {
            hashbrown::hash_table::Entry::Occupied(_) => {
                Err(BuildError::DuplicateApp(app.name.to_string()))
            }
            hashbrown::hash_table::Entry::Vacant(v) => {
                v.insert(Arc::clone(app));
                self.app_count += 1;
                Ok(())
            }
        }
    }

    fn claim(&mut self, pattern: &DomainPattern, app: &Arc<App>) -> Result<(), BuildError> {
        let conflict = |first: &App| BuildError::DomainConflict {
            domain: pattern.to_string(),
            first: first.name.to_string(),
            second: app.name.to_string(),
        };
        let (name, wildcard) = match pattern {
            DomainPattern::CatchAll => {
                if let Some(first) = &self.catch_all {
                    return Err(conflict(first));
                }
                self.catch_all = Some(Arc::clone(app));
                self.domain_count += 1;
                return Ok(());
            }
            DomainPattern::Exact(n) => (n, false),
            DomainPattern::Wildcard(n) => (n, true),
        };
        let hash = self.hash(name);
        let hasher = self.hasher;
        let shard = self.domains.shard_mut(hash);
        let entry = shard
            .entry(
                hash,
                |e| e.name == **name,
                |e| hasher.hash_one(e.name.as_str()),
            )
            .or_insert_with(|| DomainEntry {
                name: CompactString::from(&**name),
                exact: None,
                wildcard: None,
            });
        let slot = if wildcard {
            &mut entry.into_mut().wildcard
        } else {
            &mut entry.into_mut().exact
        };
        if let Some(first) = slot {
            return Err(conflict(first));
        }
        *slot = Some(Arc::clone(app));
        self.domain_count += 1;
        Ok(())
    }

    /// Finds the app for a normalised host (see [`crate::RequestHost`]).
    pub fn lookup(&self, host: &str) -> Option<RouteMatch<'_>> {
        let probe = |key: &str| {
            let hash = self.hash(key);
            self.domains.find(hash, |e| e.name == key)
        };
        if let Some(app) = probe(host).and_then(|e| e.exact.as_ref()) {
            return Some(RouteMatch {
                app,
                kind: MatchKind::Exact,
            });
        }
        let bytes = host.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'.' {
                if let Some(app) = probe(&host[i + 1..]).and_then(|e| e.wildcard.as_ref()) {
                    return Some(RouteMatch {
                        app,
                        kind: MatchKind::Wildcard,
                    });
                }
            }
        }
        for base in self.app_domains.iter() {
            if let Some(label) = host
                .strip_suffix(&**base)
                .and_then(|rest| rest.strip_suffix('.'))
            {
                if !label.is_empty() && !label.contains('.') {
                    if let Some(app) = self.app(label) {
                        return Some(RouteMatch {
                            app,
                            kind: MatchKind::AppDomain,
                        });
                    }
                }
            }
        }
        self.catch_all.as_ref().map(|app| RouteMatch {
            app,
            kind: MatchKind::CatchAll,
        })
    }

    /// The app with this name.
    pub fn app(&self, name: &str) -> Option<&Arc<App>> {
        let hash = self.hash(name);
        self.apps.find(hash, |a| &*a.name == name)
    }

    /// Every app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.iter()
    }

    /// Every claimed domain with its app, in no particular order.
    pub fn domains(&self) -> impl Iterator<Item = (DomainPattern, &Arc<App>)> {
        let named = self.domains.iter().flat_map(|e| {
            let exact = e
                .exact
                .as_ref()
                .map(|a| (DomainPattern::Exact(Arc::from(e.name.as_str())), a));
            let wild = e
                .wildcard
                .as_ref()
                .map(|a| (DomainPattern::Wildcard(Arc::from(e.name.as_str())), a));
            exact.into_iter().chain(wild)
        });
        named.chain(self.catch_all.iter().map(|a| (DomainPattern::CatchAll, a)))
    }

    /// The `{app}.{base}` bases.
    pub fn app_domains(&self) -> &[Box<str>] {
        &self.app_domains
    }

    /// Number of claimed domains (exact, wildcard and catch-all).
    pub fn len(&self) -> usize {
        self.domain_count
    }

    pub fn is_empty(&self) -> bool {
        self.domain_count == 0 && self.app_domains.is_empty()
    }

    pub fn app_count(&self) -> usize {
        self.app_count
    }

    /// Increases with every table built from the previous one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Sets the version (a registry-fed table uses the registry's version counter).
    pub fn set_version(&mut self, version: u64) {
        self.version = version;
    }
}

fn build_app(spec: &AppSpec, previous: Option<&RouteTable>) -> App {
    let old = previous.and_then(|p| p.app(&spec.name));
    let backends = spec
        .backends
        .iter()
        .map(|b| {
            // Apps have a handful of backends: a scan beats building a map.
            let prior = old.and_then(|o| {
                o.backends.iter().find(|ob| match (&ob.id, &b.id) {
                    (Some(x), Some(y)) => x == y,
                    (None, None) => ob.addr == b.addr,
                    _ => false,
                })
            });
            Backend {
                id: b.id.clone(),
                addr: b.addr,
                expires_at_ms: b.expires_at_ms,
                state: prior.map(|p| p.state.carried_over()).unwrap_or_default(),
            }
        })
        .collect();
    let counters = old.and_then(|a| a.counters_if_used().cloned());
    App::new(&spec.name, Arc::clone(&spec.settings), backends, counters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppSettings;
    use crate::spec::BackendSpec;

    fn spec(apps: &[(&str, &[&str])]) -> RouteSpec {
        RouteSpec {
            app_domains: vec!["apps.test".into()],
            apps: apps
                .iter()
                .map(|(name, domains)| AppSpec {
                    name: (*name).into(),
                    domains: domains
                        .iter()
                        .map(|d| DomainPattern::parse(d).unwrap())
                        .collect(),
                    backends: vec![BackendSpec {
                        id: Some("b".into()),
                        addr: "127.0.0.1:1".parse().unwrap(),
                        expires_at_ms: 0,
                    }],
                    settings: Arc::new(AppSettings::default()),
                })
                .collect(),
        }
    }

    fn lookup(t: &RouteTable, host: &str) -> Option<(String, MatchKind)> {
        t.lookup(host).map(|m| (m.app.name.to_string(), m.kind))
    }

    #[test]
    fn precedence_exact_then_most_specific_wildcard() {
        let t = RouteTable::build(
            &spec(&[
                ("exact", &["a.b.example.com"]),
                ("deep", &["*.b.example.com"]),
                ("wide", &["*.example.com"]),
                ("blog", &["blog.test"]),
                ("other", &["*"]),
            ]),
            None,
        )
        .unwrap();
        assert_eq!(
            lookup(&t, "a.b.example.com"),
            Some(("exact".into(), MatchKind::Exact))
        );
        assert_eq!(
            lookup(&t, "x.b.example.com"),
            Some(("deep".into(), MatchKind::Wildcard))
        );
        assert_eq!(
            lookup(&t, "y.x.b.example.com"),
            Some(("deep".into(), MatchKind::Wildcard))
        );
        assert_eq!(
            lookup(&t, "b.example.com"),
            Some(("wide".into(), MatchKind::Wildcard))
        );
        assert_eq!(
            lookup(&t, "example.com"),
            Some(("other".into(), MatchKind::CatchAll))
        );
        assert_eq!(
            lookup(&t, "blog.apps.test"),
            Some(("blog".into(), MatchKind::AppDomain))
        );
        assert_eq!(
            lookup(&t, "x.blog.apps.test"),
            Some(("other".into(), MatchKind::CatchAll))
        );
        assert_eq!(t.len(), 5);
        assert_eq!(t.app_count(), 5);
    }

    #[test]
    fn conflicts_are_all_reported() {
        let errs = RouteTable::build(
            &spec(&[
                ("a", &["x.test", "*.y.test"]),
                ("b", &["x.test", "*.y.test"]),
                ("a", &[]),
            ]),
            None,
        )
        .unwrap_err();
        assert_eq!(errs.len(), 3, "{errs:?}");
    }

    #[test]
    fn state_carries_over_between_builds() {
        let s = spec(&[("a", &["x.test"])]);
        let t1 = RouteTable::build(&s, None).unwrap();
        t1.app("a").unwrap().counters().record(200);
        t1.app("a").unwrap().backends[0].state.record_failure(
            0,
            1,
            std::time::Duration::from_secs(60),
        );
        let t2 = RouteTable::build(&s, Some(&t1)).unwrap();
        assert_eq!(t2.app("a").unwrap().counters().get(1), 1);
        assert!(t2.app("a").unwrap().backends[0].state.is_ejected(1000));
        assert_eq!(t2.version(), t1.version() + 1);
    }

    #[test]
    fn many_shards_lookup() {
        let names: Vec<String> = (0..5000).map(|i| format!("h{i}.test")).collect();
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let t = RouteTable::build(&spec(&[("a", &refs)]), None).unwrap();
        assert!(t.domains.shards.len() > 1);
        for n in &names {
            assert!(t.lookup(n).is_some(), "{n}");
        }
        assert!(t.lookup("h5000.test").is_none());
        assert_eq!(t.domains().count(), 5000);
    }
}
