//! `pier-load merge`: one report from the reports of several generators that loaded the same
//! target together (started with `--start-at`). Counts add up; latency percentiles are read
//! from the summed histograms (the whole run's and each second's), so they equal those of one
//! generator that saw every sample.

use std::collections::{BTreeMap, HashMap};

use super::{Report, SecondRow};
use crate::config::{LoadModel, Protocol};

/// Why reports cannot be merged.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("nothing to merge")]
    Empty,
    #[error("{name} used the {theirs} model and {first} the {ours}: their latencies mean different things")]
    Model {
        name: String,
        theirs: &'static str,
        first: String,
        ours: &'static str,
    },
    #[error("{name} spoke {theirs} and {first} {ours}")]
    Protocol {
        name: String,
        theirs: &'static str,
        first: String,
        ours: &'static str,
    },
}

/// Merges `reports` (each with the name it is known by: its file) into one.
pub fn merge(reports: Vec<(String, Report)>) -> Result<Report, MergeError> {
    let mut iter = reports.into_iter();
    let (first_name, mut out) = iter.next().ok_or(MergeError::Empty)?;
    let mut names = vec![first_name.clone()];
    let mut urls = vec![out.url.clone()];
    let mut addrs = vec![out.connect_addr.clone()];
    let mut hosts: HashMap<String, usize> = out
        .per_host
        .iter()
        .enumerate()
        .map(|(i, h)| (h.host.clone(), i))
        .collect();
    let mut seconds: BTreeMap<u64, SecondRow> = std::mem::take(&mut out.series)
        .into_iter()
        .map(|r| (r.second, r))
        .collect();
    for (name, r) in iter {
        if std::mem::discriminant(&r.model) != std::mem::discriminant(&out.model) {
            return Err(MergeError::Model {
                name,
                theirs: r.model_name(),
                first: first_name,
                ours: out.model_name(),
            });
        }
        if std::mem::discriminant(&r.protocol) != std::mem::discriminant(&out.protocol) {
            return Err(MergeError::Protocol {
                name,
                theirs: r.protocol_name(),
                first: first_name,
                ours: out.protocol_name(),
            });
        }
        if let (LoadModel::Open { rate }, LoadModel::Open { rate: more }) =
            (&mut out.model, r.model)
        {
            *rate += more;
        }
        match (&mut out.protocol, r.protocol) {
            (Protocol::Http1 { pipeline }, Protocol::Http1 { pipeline: p }) => {
                *pipeline = (*pipeline).max(p)
            }
            (Protocol::Http2 { max_streams }, Protocol::Http2 { max_streams: m }) => {
                *max_streams = (*max_streams).max(m)
            }
            _ => {}
        }
        names.push(name);
        urls.push(r.url.clone());
        addrs.push(r.connect_addr.clone());
        out.threads += r.threads;
        out.connections += r.connections;
        // They ran side by side: the run lasted as long as the longest.
        out.duration = out.duration.max(r.duration);
        out.warmup = out.warmup.max(r.warmup);
        // Same bounds in every pier-load report: adding cannot fail.
        let _ = out.latency.add(&r.latency);
        let _ = out.service.add(&r.service);
        out.status.add(&r.status);
        out.errors.add(&r.errors);
        out.bytes_read += r.bytes_read;
        out.bytes_written += r.bytes_written;
        out.reconnects += r.reconnects;
        out.retried += r.retried;
        out.mismatched += r.mismatched;
        out.warmup_requests += r.warmup_requests;
        out.in_flight_at_end += r.in_flight_at_end;
        out.unsent += r.unsent;
        if out.first_connect_error.is_none() {
            out.first_connect_error = r.first_connect_error;
        }
        if out.expect_header.is_none() {
            out.expect_header = r.expect_header;
        }
        for h in r.per_host {
            match hosts.get(&h.host) {
                Some(&i) => {
                    let row = &mut out.per_host[i];
                    row.responses += h.responses;
                    row.errors += h.errors;
                    row.mismatched += h.mismatched;
                }
                None => {
                    hosts.insert(h.host.clone(), out.per_host.len());
                    out.per_host.push(h);
                }
            }
        }
        for row in r.series {
            match seconds.get_mut(&row.second) {
                Some(mine) => mine.absorb(&row),
                None => {
                    seconds.insert(row.second, row);
                }
            }
        }
    }
    out.url = one_or_several(urls);
    out.connect_addr = one_or_several(addrs);
    out.series = seconds.into_values().collect();
    out.merged_from = names;
    Ok(out)
}

/// The value when all agree, else the distinct values joined.
fn one_or_several(mut values: Vec<String>) -> String {
    let mut seen = std::collections::HashSet::new();
    values.retain(|v| seen.insert(v.clone()));
    values.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{json, load, HostRow};
    use crate::stats::second_histogram;

    /// A closed-model report of `samples` (µs), spread over seconds 0 and 1, on `hosts`.
    fn report(samples: &[u64], hosts: &[&str]) -> Report {
        let mut cfg = crate::config::RunConfig::new(
            crate::target::Target::parse("http://127.0.0.1:8080/").unwrap(),
        );
        cfg.duration = std::time::Duration::from_secs(2);
        let mut r = Report::empty(&cfg, "127.0.0.1:8080".parse().unwrap());
        let mut per_second = [second_histogram(), second_histogram()];
        for (i, &s) in samples.iter().enumerate() {
            r.latency.record(s).unwrap();
            r.service.record(s / 2 + 1).unwrap();
            per_second[i % 2].record(s).unwrap();
            r.status.s2xx += 1;
            r.bytes_read += 100;
        }
        for (second, h) in per_second.into_iter().enumerate() {
            let n = h.len();
            r.series
                .push(SecondRow::new(second as u64, 1.0, (n, 0, n * 100), h));
        }
        r.per_host = hosts
            .iter()
            .map(|h| HostRow {
                host: h.to_string(),
                responses: samples.len() as u64 / hosts.len() as u64,
                errors: 0,
                mismatched: 0,
            })
            .collect();
        r
    }

    fn through_json(r: &Report) -> Report {
        let v: serde_json::Value = serde_json::from_str(&json::to_string(r)).unwrap();
        load::from_value(&v).unwrap()
    }

    #[test]
    fn merged_percentiles_equal_those_of_one_run_that_saw_every_sample() {
        // Two generators with different distributions: averaging their p99s would be wrong.
        let a: Vec<u64> = (0..5_000).map(|i| 100 + (i * 37) % 900).collect();
        let b: Vec<u64> = (0..3_000).map(|i| 2_000 + (i * 101) % 50_000).collect();
        let all: Vec<u64> = a.iter().chain(&b).copied().collect();
        let merged = merge(vec![
            ("a.json".into(), through_json(&report(&a, &["x", "y"]))),
            ("b.json".into(), through_json(&report(&b, &["y", "z"]))),
        ])
        .unwrap();
        let one = report(&all, &["x"]);
        for p in crate::report::PERCENTILES {
            assert_eq!(
                Report::at(&merged.latency, p),
                Report::at(&one.latency, p),
                "p{p}"
            );
            assert_eq!(
                Report::at(&merged.service, p),
                Report::at(&one.service, p),
                "service p{p}"
            );
        }
        assert_eq!(merged.latency, one.latency);
        assert_eq!(merged.responses(), 8_000);
        assert_eq!(merged.bytes_read, 800_000);
        assert_eq!(merged.connections, 20);
        assert_eq!(merged.threads, 2);
        assert_eq!(merged.url, "http://127.0.0.1:8080/");
        // Each second's percentiles come from that second's merged histogram.
        assert_eq!(merged.series.len(), 2);
        for (row, want) in merged.series.iter().zip(&one.series) {
            assert_eq!(row.responses, want.responses);
            assert_eq!(
                (row.p50_us, row.p90_us, row.p99_us, row.max_us),
                (want.p50_us, want.p90_us, want.p99_us, want.max_us)
            );
        }
        // Hosts are matched by name.
        let hosts: Vec<(&str, u64)> = merged
            .per_host
            .iter()
            .map(|h| (h.host.as_str(), h.responses))
            .collect();
        assert_eq!(hosts, [("x", 2_500), ("y", 4_000), ("z", 1_500)]);
        assert_eq!(merged.merged_from, ["a.json", "b.json"]);
        // A merged report is itself a report: written, read and merged again.
        let again = through_json(&merged);
        assert_eq!(again.latency, merged.latency);
        assert_eq!(again.merged_from, merged.merged_from);
    }

    #[test]
    fn open_and_closed_runs_are_not_merged_and_rates_add_up() {
        let mut open = report(&[100, 200], &["x"]);
        open.model = LoadModel::Open { rate: 500.0 };
        let closed = report(&[100], &["x"]);
        let e = merge(vec![("o".into(), open.clone()), ("c".into(), closed)]).unwrap_err();
        assert!(e.to_string().contains("closed model"), "{e}");
        let m = merge(vec![("o1".into(), open.clone()), ("o2".into(), open)]).unwrap();
        assert_eq!(m.rate(), Some(1000.0));
        assert!(matches!(merge(Vec::new()), Err(MergeError::Empty)));
    }

    #[test]
    fn a_report_without_histograms_is_refused_with_the_reason() {
        let mut v: serde_json::Value =
            serde_json::from_str(&json::to_string(&report(&[5], &["x"]))).unwrap();
        v.as_object_mut().unwrap().remove("histograms");
        let e = load::from_value(&v).unwrap_err().to_string();
        assert!(e.contains("histograms"), "{e}");
        v["schema"] = "something/v9".into();
        let e = load::from_value(&v).unwrap_err().to_string();
        assert!(e.contains("schema"), "{e}");
    }
}
