//! Usage reports ([`pier_registry::usage`]) on their stream: written by runners and by the
//! API's add-on reporter (balancers write theirs from their own thread), read by the API's
//! collector.

use pier_registry::usage::{reports_key, seq_key, Outbox, UsageReport, REPORT_STREAM_LEN};

use crate::store::{timed, Store, StoreError};

/// One entry of the report stream: its id and the report, or why it could not be read.
pub type StreamedReport = (String, Result<UsageReport, String>);

impl Store {
    /// Writes the outbox's reports, oldest first. A report gets its sequence number (`INCR`)
    /// the first time it is tried and keeps it, so a report written again after a lost answer
    /// has the same number. Stops at the first failure; what is left is tried next time.
    pub async fn write_usage_reports(&self, outbox: &mut Outbox) -> Result<(), StoreError> {
        let stream = reports_key(self.keys.prefix());
        while let Some(r) = outbox.front_mut() {
            if r.seq == 0 {
                let key = seq_key(self.keys.prefix(), &r.reporter);
                r.seq = timed(redis::cmd("INCR").arg(key).query_async(&mut self.c())).await?;
            }
            let text = serde_json::to_string(&*r)
                .map_err(|e| StoreError::BadData(format!("usage report: {e}")))?;
            let _: String = timed(
                redis::cmd("XADD")
                    .arg(&stream)
                    .arg("MAXLEN")
                    .arg("~")
                    .arg(REPORT_STREAM_LEN)
                    .arg("*")
                    .arg("report")
                    .arg(text)
                    .query_async(&mut self.c()),
            )
            .await?;
            outbox.written();
        }
        Ok(())
    }

    /// Up to `count` reports after stream id `after` (`0` for the oldest kept).
    pub async fn usage_reports_after(
        &self,
        after: &str,
        count: usize,
    ) -> Result<Vec<StreamedReport>, StoreError> {
        let v: redis::Value = timed(
            redis::cmd("XRANGE")
                .arg(reports_key(self.keys.prefix()))
                .arg(format!("({after}"))
                .arg("+")
                .arg("COUNT")
                .arg(count)
                .query_async(&mut self.c()),
        )
        .await?;
        let redis::Value::Array(entries) = v else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            let redis::Value::Array(kv) = e else { continue };
            let (Some(redis::Value::BulkString(id)), Some(redis::Value::Array(fields))) =
                (kv.first(), kv.get(1))
            else {
                continue;
            };
            let id = String::from_utf8_lossy(id).into_owned();
            let mut report = Err("no report field".to_string());
            for pair in fields.chunks(2) {
                if let [redis::Value::BulkString(k), redis::Value::BulkString(v)] = pair {
                    if k.as_slice() == b"report" {
                        report = UsageReport::decode(v);
                    }
                }
            }
            out.push((id, report));
        }
        Ok(out)
    }
}
