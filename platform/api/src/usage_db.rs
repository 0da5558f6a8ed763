//! The platform's own PostgreSQL database (`pier api --platform-db`): usage reports kept once
//! per reporter and sequence number, each app's hourly quantities, and how far the collector
//! has read the report stream. The schema is kept by the migrations in `platform/api/migrations`
//! (embedded in the binary, run at start). Queries are checked at run time: building needs no
//! database.

use std::time::Duration;

use pier_registry::usage::UsageReport;
use sqlx::postgres::{PgPool, PgPoolOptions};

/// How long raw reports and hourly rows are kept: 13 months (of 31 days).
pub const KEEP_MS: u64 = 13 * 31 * 86_400_000;
/// How long a report's own text is kept beside its numbers (for audits).
pub const KEEP_BODY_MS: u64 = 40 * 86_400_000;
const HOUR_MS: u64 = 3_600_000;

#[derive(Debug, thiserror::Error)]
pub enum UsageDbError {
    #[error("the platform database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("the platform database's schema could not be brought up to date: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// One report's facts, for finding gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportRow {
    pub reporter: String,
    pub kind: String,
    pub seq: u64,
    pub from_ms: u64,
    pub to_ms: u64,
    pub last: bool,
}

/// The pooled connection to the platform database.
#[derive(Clone)]
pub struct UsageDb {
    pool: PgPool,
}

fn i(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn u(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

impl UsageDb {
    /// Connects to `url` and runs the migrations not yet applied.
    pub async fn connect(url: &str) -> Result<UsageDb, UsageDbError> {
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(url)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(UsageDb { pool })
    }

    /// The stream id after which the collector reads (`0`: from the oldest).
    pub async fn cursor(&self) -> Result<String, UsageDbError> {
        let row: Option<(String,)> =
            sqlx::query_as("SELECT stream_id FROM usage_cursor WHERE name = 'reports'")
                .fetch_optional(&self.pool)
                .await?;
        Ok(row.map_or_else(|| "0".to_string(), |r| r.0))
    }

    /// Stores `reports` (stream id, report) and moves the cursor to `last_id`, in one
    /// transaction. A report already stored (same reporter and sequence number: written again
    /// after a lost answer) is skipped; a new one adds its quantities to its apps' hour (the
    /// hour its interval starts in: intervals end on multiples of the reporting interval, so
    /// one never spans two hours). Returns how many were new.
    pub async fn ingest(
        &self,
        reports: &[(String, UsageReport)],
        last_id: &str,
        now_ms: u64,
    ) -> Result<usize, UsageDbError> {
        let mut tx = self.pool.begin().await?;
        let mut new = 0;
        for (id, r) in reports {
            let body = serde_json::to_string(r).unwrap_or_default();
            let inserted = sqlx::query(
                "INSERT INTO usage_reports (reporter, seq, kind, from_ms, to_ms, final, stream_id, received_ms, body) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb) ON CONFLICT (reporter, seq) DO NOTHING",
            )
            .bind(&r.reporter)
            .bind(i(r.seq))
            .bind(r.kind.as_str())
            .bind(i(r.from_ms))
            .bind(i(r.to_ms))
            .bind(r.last)
            .bind(id)
            .bind(i(now_ms))
            .bind(body)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                continue;
            }
            new += 1;
            let hour = r.from_ms - r.from_ms % HOUR_MS;
            for (app, usage) in &r.apps {
                for (item, quantity) in usage.items() {
                    sqlx::query(
                        "INSERT INTO usage_hourly (app, hour_ms, item, quantity) VALUES ($1, $2, $3, $4) \
                         ON CONFLICT (app, hour_ms, item) DO UPDATE SET quantity = usage_hourly.quantity + EXCLUDED.quantity",
                    )
                    .bind(app)
                    .bind(i(hour))
                    .bind(&item)
                    .bind(quantity)
                    .execute(&mut *tx)
                    .await?;
                }
            }
        }
        sqlx::query(
            "INSERT INTO usage_cursor (name, stream_id) VALUES ('reports', $1) \
             ON CONFLICT (name) DO UPDATE SET stream_id = EXCLUDED.stream_id",
        )
        .bind(last_id)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(new)
    }

    /// Each app's quantities per item over hours in `[from_ms, to_ms)`, by app and item
    /// (`app` given: that app's only).
    pub async fn totals(
        &self,
        app: Option<&str>,
        from_ms: u64,
        to_ms: u64,
    ) -> Result<Vec<(String, String, f64)>, UsageDbError> {
        let rows: Vec<(String, String, f64)> = sqlx::query_as(
            "SELECT app, item, sum(quantity) FROM usage_hourly \
             WHERE hour_ms >= $1 AND hour_ms < $2 AND ($3::text IS NULL OR app = $3) \
             GROUP BY app, item ORDER BY app, item",
        )
        .bind(i(from_ms))
        .bind(i(to_ms))
        .bind(app)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows)
    }

    /// The reports that overlap `[from_ms, to_ms)`, by reporter and sequence number.
    pub async fn reports(&self, from_ms: u64, to_ms: u64) -> Result<Vec<ReportRow>, UsageDbError> {
        let rows: Vec<(String, String, i64, i64, i64, bool)> = sqlx::query_as(
            "SELECT reporter, kind, seq, from_ms, to_ms, final FROM usage_reports \
             WHERE to_ms >= $1 AND from_ms < $2 ORDER BY reporter, seq",
        )
        .bind(i(from_ms))
        .bind(i(to_ms))
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(reporter, kind, seq, from, to, last)| ReportRow {
                reporter,
                kind,
                seq: u(seq),
                from_ms: u(from),
                to_ms: u(to),
                last,
            })
            .collect())
    }

    /// Forgets what is past its keeping: reports and hourly rows older than 13 months, and
    /// reports' own text after 40 days.
    pub async fn prune(&self, now_ms: u64) -> Result<(), UsageDbError> {
        let old = i(now_ms.saturating_sub(KEEP_MS));
        sqlx::query("DELETE FROM usage_hourly WHERE hour_ms < $1")
            .bind(old)
            .execute(&self.pool)
            .await?;
        sqlx::query("DELETE FROM usage_reports WHERE to_ms < $1")
            .bind(old)
            .execute(&self.pool)
            .await?;
        sqlx::query("UPDATE usage_reports SET body = NULL WHERE to_ms < $1 AND body IS NOT NULL")
            .bind(i(now_ms.saturating_sub(KEEP_BODY_MS)))
            .execute(&self.pool)
            .await?;
        Ok(())
    }
}
