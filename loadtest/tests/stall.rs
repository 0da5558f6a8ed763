#![allow(clippy::unwrap_used)]
//! Coordinated omission: a server that stalls for 1 s at a known moment of a 3 s run must
//! show in the open model's (corrected) percentiles, and only in the closed model's maximum.

mod common;

use std::time::Duration;

use common::{start, Behaviour};
use pier_load::config::{LoadModel, RunConfig};
use pier_load::target::Target;

const STALL_AT: Duration = Duration::from_millis(1000);
const STALL_FOR: Duration = Duration::from_millis(1000);

fn stalled_run(model: LoadModel) -> pier_load::Report {
    let server = start(Behaviour {
        stall: Some((STALL_AT, STALL_FOR)),
        ..Default::default()
    });
    let mut cfg = RunConfig::new(Target::parse(&server.url()).unwrap());
    cfg.threads = 1;
    cfg.connections = 10;
    cfg.duration = Duration::from_secs(3);
    cfg.model = model;
    pier_load::run(&cfg, &mut |_| {}).unwrap()
}

#[test]
fn a_stall_shows_in_open_model_percentiles_not_closed_ones() {
    let open = stalled_run(LoadModel::Open { rate: 500.0 });
    let closed = stalled_run(LoadModel::Closed);
    let ms = |us: u64| us as f64 / 1000.0;
    let open_p99 = ms(open.latency.value_at_quantile(0.99));
    let open_p90 = ms(open.latency.value_at_quantile(0.90));
    let open_service_p99 = ms(open.service.value_at_quantile(0.99));
    let closed_p99 = ms(closed.latency.value_at_quantile(0.99));
    let closed_max = ms(closed.latency.max());
    eprintln!(
        "open p90 {open_p90}ms p99 {open_p99}ms service p99 {open_service_p99}ms; closed p99 {closed_p99}ms max {closed_max}ms"
    );
    // Open model: about a third of the requests were due during the stall and waited up to
    // a second, so even p90 is hundreds of milliseconds.
    assert!(open_p99 > 600.0, "open p99 {open_p99}ms");
    assert!(open_p90 > 200.0, "open p90 {open_p90}ms");
    // The uncorrected service time hides it: only the ~10 requests on the wire stalled.
    assert!(open_service_p99 < open_p99 / 3.0);
    // Closed model: each connection waited once; the stall is in the max only.
    assert!(closed_max > 800.0, "closed max {closed_max}ms");
    assert!(closed_p99 < 200.0, "closed p99 {closed_p99}ms");
    assert!(open_p99 > 3.0 * closed_p99);
    // And the closed model's throughput fell while the open model's schedule did not.
    assert!(open.unsent + open.responses() + open.in_flight_at_end >= 1490);
}
