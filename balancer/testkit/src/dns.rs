//! [`DnsServer`]: a real authoritative DNS server on loopback (hickory-server), for tests of
//! what the platform looks up (custom domains' TXT proofs, where names point).
//!
//! It serves one or more zones from memory over UDP and TCP on one free port, on its own
//! thread and runtime, so sync and async tests use it alike. Records are added and removed
//! while it runs; names in a served zone without records answer NXDOMAIN, names outside any
//! served zone are refused, as from a real authoritative server.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::str::FromStr;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::proto::rr::rdata::{A, AAAA, CNAME, SOA, TXT};
use hickory_server::proto::rr::{LowerName, Name, RData, Record, RecordSet, RecordType, RrKey};
use hickory_server::store::in_memory::InMemoryZoneHandler;
use hickory_server::zone_handler::{AxfrPolicy, Catalog, ZoneHandler, ZoneType};
use hickory_server::Server;

type Zone = InMemoryZoneHandler<TokioRuntimeProvider>;

/// TTL of every record served: short, as a test changes them.
const TTL: u32 = 1;

enum Command {
    Add(Record),
    Remove(Name, RecordType),
}

/// An authoritative DNS server for `zones`, on `127.0.0.1:<free port>` (UDP and TCP).
pub struct DnsServer {
    pub addr: SocketAddr,
    commands: tokio::sync::mpsc::UnboundedSender<(Command, mpsc::Sender<()>)>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl DnsServer {
    /// Starts a server authoritative for each of `zones` (e.g. `["example.test"]`).
    pub fn start(zones: &[&str]) -> DnsServer {
        let zones: Vec<Name> = zones.iter().map(|z| fqdn(z)).collect();
        let (ready_tx, ready_rx) = mpsc::channel();
        let (cmd_tx, mut cmd_rx) =
            tokio::sync::mpsc::unbounded_channel::<(Command, mpsc::Sender<()>)>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("dns runtime");
            rt.block_on(async move {
                let mut catalog = Catalog::new();
                let mut handlers: Vec<(Name, Arc<Zone>)> = Vec::new();
                for origin in zones {
                    let zone = Arc::new(zone_with_soa(&origin));
                    catalog.upsert(
                        LowerName::new(&origin),
                        vec![zone.clone() as Arc<dyn ZoneHandler>],
                    );
                    handlers.push((origin, zone));
                }
                // UDP and TCP on one port (TCP for answers too long for UDP): a free UDP port
                // may be taken over TCP, so pairs are tried until one binds.
                let mut pair = None;
                for _ in 0..50 {
                    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0")
                        .await
                        .expect("udp");
                    let port = udp.local_addr().expect("udp addr").port();
                    if let Ok(tcp) = tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
                        pair = Some((udp, tcp, port));
                        break;
                    }
                }
                let (udp, tcp, port) = pair.expect("no port free over both UDP and TCP");
                let mut server = Server::new(catalog);
                server.register_socket(udp);
                server.register_listener(tcp, Duration::from_secs(5), 65_535);
                ready_tx
                    .send(SocketAddr::from(([127, 0, 0, 1], port)))
                    .expect("ready");
                let mut stop_rx = stop_rx;
                let mut serial = 2u32;
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        got = cmd_rx.recv() => {
                            let Some((cmd, done)) = got else { break };
                            serial += 1;
                            apply(&handlers, cmd, serial).await;
                            let _ = done.send(());
                        }
                    }
                }
                let _ = server.shutdown_gracefully().await;
            });
        });
        let addr = ready_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("dns server did not start");
        DnsServer {
            addr,
            commands: cmd_tx,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    fn send(&self, cmd: Command) {
        let (done_tx, done_rx) = mpsc::channel();
        self.commands.send((cmd, done_tx)).expect("dns server gone");
        done_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("dns server did not apply the change");
    }

    /// Adds a TXT record (beside any others at `name`).
    pub fn add_txt(&self, name: &str, value: &str) {
        self.send(Command::Add(Record::from_rdata(
            fqdn(name),
            TTL,
            RData::TXT(TXT::new(vec![value.to_string()])),
        )));
    }

    /// Adds a TXT record made of several character-strings (as long values are published).
    pub fn add_txt_strings(&self, name: &str, parts: &[&str]) {
        self.send(Command::Add(Record::from_rdata(
            fqdn(name),
            TTL,
            RData::TXT(TXT::new(parts.iter().map(|p| p.to_string()).collect())),
        )));
    }

    /// Adds an A or AAAA record.
    pub fn add_ip(&self, name: &str, ip: IpAddr) {
        let data = match ip {
            IpAddr::V4(v4) => RData::A(A(v4)),
            IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
        };
        self.send(Command::Add(Record::from_rdata(fqdn(name), TTL, data)));
    }

    /// Makes `name` a CNAME to `target`.
    pub fn add_cname(&self, name: &str, target: &str) {
        self.send(Command::Add(Record::from_rdata(
            fqdn(name),
            TTL,
            RData::CNAME(CNAME(fqdn(target))),
        )));
    }

    /// Removes every record of `rtype` at `name`.
    pub fn remove(&self, name: &str, rtype: RecordType) {
        self.send(Command::Remove(fqdn(name), rtype));
    }

    /// Removes every TXT record at `name`.
    pub fn remove_txt(&self, name: &str) {
        self.remove(name, RecordType::TXT);
    }
}

impl Drop for DnsServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn apply(zones: &[(Name, Arc<Zone>)], cmd: Command, serial: u32) {
    let name = match &cmd {
        Command::Add(r) => r.name.clone(),
        Command::Remove(n, _) => n.clone(),
    };
    let Some((_, zone)) = zones
        .iter()
        .filter(|(origin, _)| origin.zone_of(&name))
        .max_by_key(|(origin, _)| origin.num_labels())
    else {
        panic!("{name} is in none of the zones this DNS server serves");
    };
    match cmd {
        Command::Add(record) => {
            assert!(zone.upsert(record, serial).await, "record refused");
        }
        Command::Remove(name, rtype) => {
            zone.records_mut()
                .await
                .remove(&RrKey::new(LowerName::new(&name), rtype));
        }
    }
}

fn zone_with_soa(origin: &Name) -> Zone {
    let soa = Record::from_rdata(
        origin.clone(),
        TTL,
        RData::SOA(SOA::new(
            Name::from_str("ns.pier-test.").expect("mname"),
            Name::from_str("hostmaster.pier-test.").expect("rname"),
            1,
            60,
            60,
            600,
            TTL,
        )),
    );
    let mut set = RecordSet::new(origin.clone(), RecordType::SOA, 1);
    set.insert(soa, 1);
    let mut records = BTreeMap::new();
    records.insert(RrKey::new(LowerName::new(origin), RecordType::SOA), set);
    Zone::new(origin.clone(), records, ZoneType::Primary, AxfrPolicy::Deny).expect("zone")
}

fn fqdn(name: &str) -> Name {
    let mut n = Name::from_str(name).expect("a DNS name");
    n.set_fqdn(true);
    n
}
