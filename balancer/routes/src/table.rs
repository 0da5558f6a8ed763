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
//! whatever the size of the table.
//!
//! Layout: domains map a name to app *ids* (the exact app and the wildcard app for that name);
//! apps live in fixed-size chunks indexed by id; a second map finds an app's id by name. Every
//! part is split into pieces behind `Arc`s, so editing a clone of a table (the registry feeds
//! changes one at a time) copies only the pieces it touches: adding a domain copies one domain
//! shard, replacing an app's backends copies one chunk of apps, and no domain has to be touched
//! when an app changes. Ids are never reused within a table's lineage, so a stale reference can
//! only miss, never reach another app.
//!
//! TLS certificates live beside the routes, keyed by domain pattern, and are found for a TLS
//! server name ([`RouteTable::cert_for`]) in the same order as routes: the exact name, then
//! wildcards walking up, then the catch-all. They sit in one map behind an `Arc`, copied on
//! the first write to a clone (certificates change rarely; the map holds only `Arc`s).

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

use compact_str::CompactString;
use hashbrown::HashTable;
use rustls::sign::CertifiedKey;

use crate::app::{App, AppSettings, Backend};
use crate::host::DomainPattern;
use crate::spec::{BackendSpec, RouteSpec};

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

/// Why a table could not be built or edited.
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
    #[error("no app named {0:?}")]
    NoSuchApp(String),
    #[error("domain {0} has two certificates")]
    DuplicateCert(String),
}

/// No app.
const NONE: u32 = u32::MAX;

#[derive(Clone)]
struct DomainEntry {
    /// Inline up to 24 bytes: most hostnames cost no allocation of their own.
    name: CompactString,
    exact: u32,
    wildcard: u32,
}

/// A hash map split into shards that are shared between snapshots until written.
#[derive(Clone)]
struct Sharded<E> {
    shards: Box<[Arc<HashTable<E>>]>,
}

/// Entries per shard at build time: 7/8 of 1024 buckets (896) is hashbrown's growth point; 800
/// keeps shards dense while leaving room for the spread of a random split (a shard that passes
/// 896 doubles; measured: 880 per shard cost more memory than 800).
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

const CHUNK: usize = 1024;

/// Apps by id, in `Arc`'d chunks of 1024 slots.
#[derive(Clone, Default)]
struct AppChunks {
    /// Each chunk is a full `CHUNK` slots, inline after its reference counts: a slot is one
    /// load from the chunk pointer, with no vector header in between.
    chunks: Vec<Arc<[Option<Arc<App>>]>>,
}

impl AppChunks {
    fn get(&self, id: u32) -> Option<&Arc<App>> {
        let id = id as usize;
        self.chunks.get(id / CHUNK)?.get(id % CHUNK)?.as_ref()
    }

    fn set(&mut self, id: u32, app: Option<Arc<App>>) {
        let id = id as usize;
        while self.chunks.len() <= id / CHUNK {
            self.chunks.push(std::iter::repeat_n(None, CHUNK).collect());
        }
        Arc::make_mut(&mut self.chunks[id / CHUNK])[id % CHUNK] = app;
    }

    fn iter(&self) -> impl Iterator<Item = &Arc<App>> {
        self.chunks.iter().flat_map(|c| c.iter().flatten())
    }
}

/// A certificate held by a table.
#[derive(Debug, Clone)]
pub struct CertEntry {
    /// What rustls serves.
    pub key: Arc<CertifiedKey>,
    /// The record it was loaded from, opaque to this crate (the registry keeps its JSON here so
    /// a table can be written back as a snapshot; a routes-file certificate has none).
    pub source: Option<Arc<str>>,
    /// The leaf's notAfter, in milliseconds since the Unix epoch (`i64::MAX` if unreadable).
    pub not_after_ms: i64,
}

/// A name's certificates: for the name itself and for the wildcard below it.
#[derive(Debug, Clone, Default)]
struct CertSlots {
    exact: Option<CertEntry>,
    wildcard: Option<CertEntry>,
}

/// Certificates by domain pattern.
#[derive(Debug, Clone, Default)]
struct Certs {
    by_name: HashMap<Box<str>, CertSlots, foldhash::fast::RandomState>,
    catch_all: Option<CertEntry>,
    count: usize,
}

/// A pending ACME HTTP-01 challenge (RFC 8555 §8.3): what every balancer answers at
/// `/.well-known/acme-challenge/<token>` for `domain`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeChallenge {
    /// The name being validated (lower-case, no port).
    pub domain: Box<str>,
    /// The key authorization: the token, a dot, the account key's thumbprint.
    pub key_authorization: Box<str>,
}

/// Longest TLS server name looked up (a DNS name without its trailing dot).
const MAX_SNI: usize = crate::host::MAX_HOST_LEN;

/// An immutable routing snapshot (edit a clone to make the next one).
#[derive(Clone)]
pub struct RouteTable {
    hasher: foldhash::fast::RandomState,
    domains: Sharded<DomainEntry>,
    /// App name → id; holds only ids (names are read from the apps).
    names: Sharded<u32>,
    apps: AppChunks,
    next_id: u32,
    app_domains: Arc<[Box<str>]>,
    catch_all: u32,
    domain_count: usize,
    app_count: usize,
    version: u64,
    certs: Arc<Certs>,
    /// Pending ACME HTTP-01 challenges by token (a handful at a time; replaced whole on edit).
    challenges: Arc<HashMap<Box<str>, AcmeChallenge, foldhash::fast::RandomState>>,
}

impl std::fmt::Debug for RouteTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouteTable")
            .field("domains", &self.domain_count)
            .field("apps", &self.app_count)
            .field("certs", &self.certs.count)
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
        Self::with_capacity(0, 0, None)
    }

    /// An empty table sized for `domains` domains and `apps` apps (loading in bulk without
    /// regrowing), sharing `previous`'s hasher.
    pub fn with_capacity(domains: usize, apps: usize, previous: Option<&RouteTable>) -> Self {
        RouteTable {
            hasher: previous.map(|p| p.hasher).unwrap_or_default(),
            domains: Sharded::with_capacity(domains),
            names: Sharded::with_capacity(apps),
            apps: AppChunks::default(),
            next_id: 0,
            app_domains: Arc::from(Vec::new()),
            catch_all: NONE,
            domain_count: 0,
            app_count: 0,
            version: 0,
            certs: Arc::default(),
            challenges: Arc::default(),
        }
    }

    /// Builds a table from a spec. State that outlives a snapshot (per-app counters, backend
    /// ejection) is carried over from `previous` by app name and backend id. Every problem is
    /// reported, not only the first.
    pub fn build(spec: &RouteSpec, previous: Option<&RouteTable>) -> Result<Self, Vec<BuildError>> {
        let domain_total: usize = spec.apps.iter().map(|a| a.domains.len()).sum();
        let mut table = Self::with_capacity(domain_total, spec.apps.len(), previous);
        table.app_domains = spec.app_domains.clone().into();
        table.version = previous.map_or(1, |p| p.version + 1);
        let mut errors = Vec::new();
        for app_spec in &spec.apps {
            if table.app_id(&app_spec.name).is_some() {
                errors.push(BuildError::DuplicateApp(app_spec.name.to_string()));
                continue;
            }
            let old = previous.and_then(|p| p.app(&app_spec.name)).map(|a| &**a);
            let app = build_app(&app_spec.name, &app_spec.settings, &app_spec.backends, old);
            let id = table.insert_new_app(app);
            for pattern in &app_spec.domains {
                if let Err(e) = table.claim(pattern, id, false) {
                    errors.push(e);
                }
            }
        }
        for cert in &spec.certs {
            for pattern in &cert.domains {
                if table.cert(pattern).is_some() {
                    errors.push(BuildError::DuplicateCert(pattern.to_string()));
                } else {
                    table.put_cert(pattern, Arc::clone(&cert.key));
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

    fn app_id(&self, name: &str) -> Option<u32> {
        let hash = self.hash(name);
        let apps = &self.apps;
        self.names
            .find(hash, |&id| apps.get(id).is_some_and(|a| a.name == name))
            .copied()
    }

    fn insert_new_app(&mut self, app: App) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let hash = self.hash(&app.name);
        let hasher = self.hasher;
        // The app goes in first: the name index stores only ids and reads names from the apps
        // (when it rehashes, too), so a name is stored once.
        self.apps.set(id, Some(Arc::new(app)));
        let RouteTable { names, apps, .. } = self;
        names.shard_mut(hash).insert_unique(hash, id, |&i| {
            apps.get(i).map_or(0, |a| hasher.hash_one(a.name.as_str()))
        });
        self.app_count += 1;
        id
    }

    /// Points `pattern` at app `id`. With `replace`, a pattern held by another app moves;
    /// without, that is a conflict.
    fn claim(&mut self, pattern: &DomainPattern, id: u32, replace: bool) -> Result<(), BuildError> {
        let name_of = |t: &Self, i: u32| {
            t.apps
                .get(i)
                .map_or_else(String::new, |a| a.name.to_string())
        };
        let (name, wildcard) = match pattern {
            DomainPattern::CatchAll => {
                if self.catch_all != NONE && self.catch_all != id && !replace {
                    return Err(BuildError::DomainConflict {
                        domain: pattern.to_string(),
                        first: name_of(self, self.catch_all),
                        second: name_of(self, id),
                    });
                }
                if self.catch_all == NONE {
                    self.domain_count += 1;
                }
                self.catch_all = id;
                return Ok(());
            }
            DomainPattern::Exact(n) => (n, false),
            DomainPattern::Wildcard(n) => (n, true),
        };
        let hash = self.hash(name);
        let current = self
            .domains
            .find(hash, |e| e.name == **name)
            .map_or(NONE, |e| if wildcard { e.wildcard } else { e.exact });
        if current != NONE && current != id && !replace && self.apps.get(current).is_some() {
            return Err(BuildError::DomainConflict {
                domain: pattern.to_string(),
                first: name_of(self, current),
                second: name_of(self, id),
            });
        }
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
                exact: NONE,
                wildcard: NONE,
            })
            .into_mut();
        let slot = if wildcard {
            &mut entry.wildcard
        } else {
            &mut entry.exact
        };
        if *slot == NONE {
            self.domain_count += 1;
        }
        *slot = id;
        Ok(())
    }

    /// Finds the app for a normalised host (see [`crate::RequestHost`]).
    pub fn lookup(&self, host: &str) -> Option<RouteMatch<'_>> {
        let probe = |key: &str| {
            let hash = self.hash(key);
            self.domains.find(hash, |e| e.name == key)
        };
        if let Some(app) = probe(host).and_then(|e| self.apps.get(e.exact)) {
            return Some(RouteMatch {
                app,
                kind: MatchKind::Exact,
            });
        }
        let bytes = host.as_bytes();
        for (i, &b) in bytes.iter().enumerate() {
            if b == b'.' {
                if let Some(app) = probe(&host[i + 1..]).and_then(|e| self.apps.get(e.wildcard)) {
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
        self.apps.get(self.catch_all).map(|app| RouteMatch {
            app,
            kind: MatchKind::CatchAll,
        })
    }

    /// The app with this name.
    pub fn app(&self, name: &str) -> Option<&Arc<App>> {
        self.app_id(name).and_then(|id| self.apps.get(id))
    }

    /// Every app, in no particular order.
    pub fn apps(&self) -> impl Iterator<Item = &Arc<App>> {
        self.apps.iter()
    }

    /// Every claimed domain with its app, in no particular order.
    pub fn domains(&self) -> impl Iterator<Item = (DomainPattern, &Arc<App>)> {
        let named = self.domains.iter().flat_map(move |e| {
            let exact = self
                .apps
                .get(e.exact)
                .map(|a| (DomainPattern::Exact(Arc::from(e.name.as_str())), a));
            let wild = self
                .apps
                .get(e.wildcard)
                .map(|a| (DomainPattern::Wildcard(Arc::from(e.name.as_str())), a));
            exact.into_iter().chain(wild)
        });
        named.chain(
            self.apps
                .get(self.catch_all)
                .map(|a| (DomainPattern::CatchAll, a)),
        )
    }

    /// The app a domain pattern points at, if any.
    pub fn domain_owner(&self, pattern: &DomainPattern) -> Option<&Arc<App>> {
        let (name, wildcard) = match pattern {
            DomainPattern::CatchAll => return self.apps.get(self.catch_all),
            DomainPattern::Exact(n) => (n, false),
            DomainPattern::Wildcard(n) => (n, true),
        };
        let e = self.domains.find(self.hash(name), |e| e.name == **name)?;
        self.apps.get(if wildcard { e.wildcard } else { e.exact })
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

    /// Replaces the `{app}.{base}` bases.
    pub fn set_app_domains(&mut self, bases: Vec<Box<str>>) {
        self.app_domains = bases.into();
    }

    // ---- edits: apply one registry change to a clone of the table in use ----

    /// Creates or replaces an app's settings and backends. Its domains are untouched; state
    /// (counters, ejection) carries over from the app it replaces.
    pub fn upsert_app(&mut self, name: &str, settings: Arc<AppSettings>, backends: &[BackendSpec]) {
        self.upsert_app_from(name, settings, backends, None);
    }

    /// Creates or replaces an app, carrying state over from the app of the same name in
    /// `previous` (a bulk load into a fresh table keeps counters and ejections of the table in
    /// use).
    pub fn upsert_app_from(
        &mut self,
        name: &str,
        settings: Arc<AppSettings>,
        backends: &[BackendSpec],
        previous: Option<&RouteTable>,
    ) {
        let old = previous.and_then(|p| p.app(name)).map(|a| &**a);
        match self.app_id(name) {
            Some(id) => {
                let app = build_app(
                    name,
                    &settings,
                    backends,
                    old.or(self.apps.get(id).map(|a| &**a)),
                );
                self.apps.set(id, Some(Arc::new(app)));
            }
            None => {
                let app = build_app(name, &settings, backends, old);
                self.insert_new_app(app);
            }
        }
    }

    /// Adds or replaces one backend of an app (one lookup of the app), carrying state over from
    /// the same app in `previous` if given, else from the app it replaces.
    pub fn put_backend_from(
        &mut self,
        app: &str,
        backend: BackendSpec,
        previous: Option<&RouteTable>,
    ) -> Result<(), BuildError> {
        let id = self
            .app_id(app)
            .ok_or_else(|| BuildError::NoSuchApp(app.into()))?;
        let current = self
            .apps
            .get(id)
            .ok_or_else(|| BuildError::NoSuchApp(app.into()))?;
        let mut list: Vec<BackendSpec> = current.backends.iter().map(Backend::spec).collect();
        match list.iter_mut().find(|b| same_backend(b, &backend)) {
            Some(b) => *b = backend,
            None => list.push(backend),
        }
        let old = previous.and_then(|p| p.app(app)).map(|a| &**a);
        let app = build_app(app, &current.settings, &list, old.or(Some(&**current)));
        self.apps.set(id, Some(Arc::new(app)));
        Ok(())
    }

    /// Removes an app; domains that pointed at it stop matching.
    pub fn remove_app(&mut self, name: &str) -> bool {
        let Some(id) = self.app_id(name) else {
            return false;
        };
        let hash = self.hash(name);
        let RouteTable { names, apps, .. } = self;
        if let Ok(entry) = names.shard_mut(hash).find_entry(hash, |&i| i == id) {
            entry.remove();
        }
        apps.set(id, None);
        self.app_count -= 1;
        true
    }

    /// Adds or replaces one backend of an app (matched by id, or by address when it has none).
    pub fn put_backend(&mut self, app: &str, backend: BackendSpec) -> Result<(), BuildError> {
        self.put_backend_from(app, backend, None)
    }

    /// Removes one backend of an app by id (or address text when it has no id).
    pub fn remove_backend(&mut self, app: &str, id: &str) -> Result<bool, BuildError> {
        let current = self
            .app(app)
            .ok_or_else(|| BuildError::NoSuchApp(app.into()))?;
        let list: Vec<BackendSpec> = current
            .backends
            .iter()
            .filter(|b| b.id() != id)
            .map(Backend::spec)
            .collect();
        if list.len() == current.backends.len() {
            return Ok(false);
        }
        let settings = Arc::clone(&current.settings);
        self.upsert_app(app, settings, &list);
        Ok(true)
    }

    /// Points a domain at an app, taking it from whichever app held it.
    pub fn put_domain(&mut self, pattern: &DomainPattern, app: &str) -> Result<(), BuildError> {
        let id = self
            .app_id(app)
            .ok_or_else(|| BuildError::NoSuchApp(app.into()))?;
        self.claim(pattern, id, true)
    }

    /// Removes a domain; returns whether it was there.
    pub fn remove_domain(&mut self, pattern: &DomainPattern) -> bool {
        let (name, wildcard) = match pattern {
            DomainPattern::CatchAll => {
                let had = self.catch_all != NONE;
                if had {
                    self.catch_all = NONE;
                    self.domain_count -= 1;
                }
                return had;
            }
            DomainPattern::Exact(n) => (n, false),
            DomainPattern::Wildcard(n) => (n, true),
        };
        let hash = self.hash(name);
        if self.domains.find(hash, |e| e.name == **name).is_none() {
            return false;
        }
        let shard = self.domains.shard_mut(hash);
        let Ok(mut entry) = shard.find_entry(hash, |e| e.name == **name) else {
            return false;
        };
        let e = entry.get_mut();
        let slot = if wildcard {
            &mut e.wildcard
        } else {
            &mut e.exact
        };
        let had = *slot != NONE;
        *slot = NONE;
        if e.exact == NONE && e.wildcard == NONE {
            entry.remove();
        }
        if had {
            self.domain_count -= 1;
        }
        had
    }
}

/// TLS certificates.
impl RouteTable {
    /// Sets the certificate for a domain pattern (replacing any).
    pub fn put_cert(&mut self, pattern: &DomainPattern, key: Arc<CertifiedKey>) {
        let not_after_ms = crate::cert::leaf_not_after_ms(&key).unwrap_or(i64::MAX);
        self.put_cert_with_source(pattern, key, None, not_after_ms);
    }

    /// Sets the certificate for a domain pattern with the record it came from (see
    /// [`CertEntry::source`]) and its leaf's notAfter (already known to whoever parsed it).
    pub fn put_cert_with_source(
        &mut self,
        pattern: &DomainPattern,
        key: Arc<CertifiedKey>,
        source: Option<Arc<str>>,
        not_after_ms: i64,
    ) {
        let certs = Arc::make_mut(&mut self.certs);
        let entry = Some(CertEntry {
            key,
            source,
            not_after_ms,
        });
        let slot = match pattern {
            DomainPattern::CatchAll => &mut certs.catch_all,
            DomainPattern::Exact(n) | DomainPattern::Wildcard(n) => {
                let slots = certs.by_name.entry(Box::from(&**n)).or_default();
                if matches!(pattern, DomainPattern::Wildcard(_)) {
                    &mut slots.wildcard
                } else {
                    &mut slots.exact
                }
            }
        };
        if slot.is_none() {
            certs.count += 1;
        }
        *slot = entry;
    }

    /// The pending ACME challenge with `token`, if any.
    pub fn acme_challenge(&self, token: &str) -> Option<&AcmeChallenge> {
        if self.challenges.is_empty() {
            return None;
        }
        self.challenges.get(token)
    }

    /// Adds (or replaces) a pending ACME challenge.
    pub fn put_acme_challenge(&mut self, token: &str, challenge: AcmeChallenge) {
        Arc::make_mut(&mut self.challenges).insert(token.into(), challenge);
    }

    /// Removes a pending ACME challenge; returns whether it was there.
    pub fn remove_acme_challenge(&mut self, token: &str) -> bool {
        if !self.challenges.contains_key(token) {
            return false;
        }
        Arc::make_mut(&mut self.challenges).remove(token).is_some()
    }

    /// The pending ACME challenges, by token.
    pub fn acme_challenges(&self) -> impl Iterator<Item = (&str, &AcmeChallenge)> {
        self.challenges.iter().map(|(t, c)| (&**t, c))
    }

    /// Removes a domain pattern's certificate; returns whether there was one.
    pub fn remove_cert(&mut self, pattern: &DomainPattern) -> bool {
        if self.cert(pattern).is_none() {
            // Nothing to do: do not copy a shared map for nothing.
            return false;
        }
        let certs = Arc::make_mut(&mut self.certs);
        let removed = match pattern {
            DomainPattern::CatchAll => certs.catch_all.take().is_some(),
            DomainPattern::Exact(n) | DomainPattern::Wildcard(n) => {
                let Some(slots) = certs.by_name.get_mut(&**n) else {
                    return false;
                };
                let slot = if matches!(pattern, DomainPattern::Wildcard(_)) {
                    &mut slots.wildcard
                } else {
                    &mut slots.exact
                };
                let had = slot.take().is_some();
                if slots.exact.is_none() && slots.wildcard.is_none() {
                    certs.by_name.remove(&**n);
                }
                had
            }
        };
        if removed {
            certs.count -= 1;
        }
        removed
    }

    /// The certificate stored for exactly this pattern.
    pub fn cert(&self, pattern: &DomainPattern) -> Option<&CertEntry> {
        match pattern {
            DomainPattern::CatchAll => self.certs.catch_all.as_ref(),
            DomainPattern::Exact(n) => self.certs.by_name.get(&**n)?.exact.as_ref(),
            DomainPattern::Wildcard(n) => self.certs.by_name.get(&**n)?.wildcard.as_ref(),
        }
    }

    /// The certificate to serve for a TLS server name (SNI): the exact name's, else the most
    /// specific wildcard's walking up one label at a time, else the catch-all's — the order of
    /// [`RouteTable::lookup`]. The name may carry upper case and one trailing dot; it is
    /// normalised on the stack, without allocating.
    pub fn cert_for(&self, sni: &str) -> Option<&Arc<CertifiedKey>> {
        let certs = &*self.certs;
        if certs.count == 0 {
            return None;
        }
        let sni = sni.strip_suffix('.').unwrap_or(sni);
        let mut buf = [0u8; MAX_SNI];
        let name = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
            let dst = buf.get_mut(..sni.len())?;
            dst.copy_from_slice(sni.as_bytes());
            dst.make_ascii_lowercase();
            std::str::from_utf8(dst).ok()?
        } else {
            sni
        };
        if !name.is_empty() {
            let slots = |key: &str| certs.by_name.get(key);
            if let Some(e) = slots(name).and_then(|s| s.exact.as_ref()) {
                return Some(&e.key);
            }
            for (i, b) in name.bytes().enumerate() {
                if b == b'.' {
                    if let Some(e) = slots(&name[i + 1..]).and_then(|s| s.wildcard.as_ref()) {
                        return Some(&e.key);
                    }
                }
            }
        }
        certs.catch_all.as_ref().map(|e| &e.key)
    }

    /// Every certificate with its pattern, in no particular order.
    pub fn certs(&self) -> impl Iterator<Item = (DomainPattern, &CertEntry)> {
        let named = self.certs.by_name.iter().flat_map(|(name, slots)| {
            let exact = slots
                .exact
                .as_ref()
                .map(|e| (DomainPattern::Exact(Arc::from(&**name)), e));
            let wild = slots
                .wildcard
                .as_ref()
                .map(|e| (DomainPattern::Wildcard(Arc::from(&**name)), e));
            exact.into_iter().chain(wild)
        });
        named.chain(
            self.certs
                .catch_all
                .as_ref()
                .map(|e| (DomainPattern::CatchAll, e)),
        )
    }

    /// Number of certificates (one per domain pattern).
    pub fn cert_count(&self) -> usize {
        self.certs.count
    }
}

fn same_backend(a: &BackendSpec, b: &BackendSpec) -> bool {
    match (&a.id, &b.id) {
        (Some(x), Some(y)) => x == y,
        (None, None) => a.addr == b.addr,
        _ => false,
    }
}

/// Milliseconds since the Unix epoch now.
fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn build_app(
    name: &str,
    settings: &Arc<AppSettings>,
    backends: &[BackendSpec],
    old: Option<&App>,
) -> App {
    let backends = backends
        .iter()
        .map(|b| {
            // Apps have a handful of backends: a scan beats building a map.
            let prior = old.and_then(|o| o.backends.iter().find(|ob| same_backend(&ob.spec(), b)));
            let state = match prior {
                Some(p) => p.state.carried_over(),
                None => {
                    let state = crate::app::BackendState::default();
                    // New to an app that was already served: it ramps up (the app's
                    // slow_start, if any). Backends of a new app start at full share.
                    if old.is_some() {
                        state.start_ramp(wall_ms());
                    }
                    state
                }
            };
            Backend {
                id: b.id.clone(),
                addr: b.addr,
                tls: b.tls.clone(),
                expires_at_ms: b.expires_at_ms,
                weight: b.weight,
                state,
            }
        })
        .collect();
    let counters = old.and_then(|a| a.counters_if_used());
    App::new(name, Arc::clone(settings), backends, counters)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app::AppSettings;
    use crate::spec::{AppSpec, BackendSpec};

    fn spec(apps: &[(&str, &[&str])]) -> RouteSpec {
        RouteSpec {
            certs: Vec::new(),
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
                        tls: None,
                        expires_at_ms: 0,
                        weight: 1,
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
        t1.app("a").unwrap().record_response(200);
        t1.app("a").unwrap().backends[0].state.record_failure(
            0,
            1,
            std::time::Duration::from_secs(60),
        );
        let t2 = RouteTable::build(&s, Some(&t1)).unwrap();
        assert_eq!(t2.app("a").unwrap().counters_if_used().unwrap().get(1), 1);
        assert!(t2.app("a").unwrap().backends[0].state.is_ejected(1000));
        assert_eq!(t2.version(), t1.version() + 1);
    }

    #[test]
    fn edits_touch_only_what_changed() {
        let s = spec(&[("a", &["x.test", "*.w.test"]), ("b", &["y.test"])]);
        let t1 = RouteTable::build(&s, None).unwrap();
        let mut t2 = t1.clone();
        // Backends change: the app is replaced, its domains follow without being touched.
        t2.put_backend(
            "a",
            BackendSpec {
                id: Some("new".into()),
                addr: "127.0.0.1:2".parse().unwrap(),
                tls: None,
                expires_at_ms: 0,
                weight: 1,
            },
        )
        .unwrap();
        assert_eq!(t2.lookup("q.w.test").unwrap().app.backends.len(), 2);
        assert_eq!(t1.lookup("q.w.test").unwrap().app.backends.len(), 1);
        assert!(t2.remove_backend("a", "b").unwrap());
        assert_eq!(&*t2.app("a").unwrap().backends[0].id(), "new");
        // A domain moves to another app, another is removed.
        t2.put_domain(&DomainPattern::parse("x.test").unwrap(), "b")
            .unwrap();
        assert_eq!(&*t2.lookup("x.test").unwrap().app.name, "b");
        assert!(t2.remove_domain(&DomainPattern::parse("*.w.test").unwrap()));
        assert!(t2.lookup("q.w.test").is_none());
        assert_eq!(t2.len(), 2);
        // Removing an app makes its remaining domains miss; ids are not reused.
        t2.upsert_app("c", Arc::new(AppSettings::default()), &[]);
        assert!(t2.remove_app("b"));
        assert!(t2.lookup("y.test").is_none());
        assert!(t2.lookup("x.test").is_none());
        t2.upsert_app("d", Arc::new(AppSettings::default()), &[]);
        assert!(t2.lookup("y.test").is_none());
        assert_eq!(t2.app_count(), 3);
        // The original snapshot is unchanged.
        assert_eq!(&*t1.lookup("x.test").unwrap().app.name, "a");
        assert_eq!(&*t1.lookup("y.test").unwrap().app.name, "b");
        assert!(t2
            .put_domain(&DomainPattern::parse("z.test").unwrap(), "nope")
            .is_err());
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

    fn key(names: &[&str]) -> Arc<CertifiedKey> {
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert =
            rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap()
                .self_signed(&kp)
                .unwrap();
        crate::cert::load_pair(&cert.pem(), &kp.serialize_pem())
            .unwrap()
            .key
    }

    fn pat(p: &str) -> DomainPattern {
        DomainPattern::parse(p).unwrap()
    }

    #[test]
    fn certs_are_found_in_route_order() {
        let exact = key(&["a.b.example.com"]);
        let deep = key(&["*.b.example.com"]);
        let wide = key(&["*.example.com"]);
        let mut t = RouteTable::empty();
        assert!(t.cert_for("a.b.example.com").is_none());
        t.put_cert(&pat("a.b.example.com"), exact.clone());
        t.put_cert(&pat("*.b.example.com"), deep.clone());
        t.put_cert(&pat("*.example.com"), wide.clone());
        assert_eq!(t.cert_count(), 3);
        let found = |t: &RouteTable, sni: &str| t.cert_for(sni).map(Arc::as_ptr);
        assert_eq!(found(&t, "a.b.example.com"), Some(Arc::as_ptr(&exact)));
        assert_eq!(found(&t, "A.B.Example.COM."), Some(Arc::as_ptr(&exact)));
        assert_eq!(found(&t, "x.b.example.com"), Some(Arc::as_ptr(&deep)));
        assert_eq!(found(&t, "y.x.b.example.com"), Some(Arc::as_ptr(&deep)));
        assert_eq!(found(&t, "b.example.com"), Some(Arc::as_ptr(&wide)));
        assert_eq!(found(&t, "example.com"), None);
        assert_eq!(found(&t, ""), None);
        assert_eq!(found(&t, &"A".repeat(300)), None);
        // The catch-all comes last.
        let any = key(&["fallback.test"]);
        t.put_cert(&DomainPattern::CatchAll, any.clone());
        assert_eq!(found(&t, "example.com"), Some(Arc::as_ptr(&any)));
        assert_eq!(found(&t, "x.b.example.com"), Some(Arc::as_ptr(&deep)));
        // An exact and a wildcard certificate for one name are separate.
        t.put_cert(&pat("b.example.com"), exact.clone());
        assert_eq!(found(&t, "b.example.com"), Some(Arc::as_ptr(&exact)));
        assert_eq!(found(&t, "z.b.example.com"), Some(Arc::as_ptr(&deep)));
        assert_eq!(t.cert_count(), 5);
        assert_eq!(t.certs().count(), 5);
    }

    #[test]
    fn cert_edits_copy_on_write() {
        let one = key(&["x.test"]);
        let two = key(&["x.test"]);
        let mut t1 = RouteTable::empty();
        t1.put_cert(&pat("x.test"), one.clone());
        let mut t2 = t1.clone();
        assert!(Arc::ptr_eq(&t1.certs, &t2.certs), "a clone shares the map");
        // Removing what is not there copies nothing.
        assert!(!t2.remove_cert(&pat("*.x.test")));
        assert!(!t2.remove_cert(&DomainPattern::CatchAll));
        assert!(Arc::ptr_eq(&t1.certs, &t2.certs));
        t2.put_cert_with_source(&pat("x.test"), two.clone(), Some(Arc::from("{}")), 0);
        assert_eq!(t2.cert_count(), 1, "replacing does not count twice");
        assert!(Arc::ptr_eq(t1.cert_for("x.test").unwrap(), &one));
        assert!(Arc::ptr_eq(t2.cert_for("x.test").unwrap(), &two));
        assert_eq!(
            t2.cert(&pat("x.test")).unwrap().source.as_deref(),
            Some("{}")
        );
        assert!(t2.remove_cert(&pat("x.test")));
        assert!(t2.cert_for("x.test").is_none());
        assert_eq!((t1.cert_count(), t2.cert_count()), (1, 0));
        assert!(t2.certs.by_name.is_empty());
    }

    #[test]
    fn built_tables_hold_the_spec_certs() {
        let k = key(&["x.test", "*.x.test"]);
        let mut s = spec(&[("a", &["x.test"])]);
        s.certs.push(crate::spec::CertSpec {
            domains: vec![pat("x.test"), pat("*.x.test")],
            key: k.clone(),
        });
        let t = RouteTable::build(&s, None).unwrap();
        assert_eq!(t.cert_count(), 2);
        assert!(Arc::ptr_eq(t.cert_for("w.x.test").unwrap(), &k));
        s.certs.push(crate::spec::CertSpec {
            domains: vec![pat("x.test")],
            key: k,
        });
        let errs = RouteTable::build(&s, None).unwrap_err();
        assert_eq!(errs, vec![BuildError::DuplicateCert("x.test".into())]);
    }
}
