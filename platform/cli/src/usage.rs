//! `pier usage APP [--month YYYY-MM]` and `pier usage --all`: a month's quantities (instance
//! hours, CPU seconds, memory GB-hours, requests, GB in and out, add-on hours), their costs
//! when the operator has a price sheet, and the gaps where reports are missing. `--json`
//! prints the API's answer, for a billing system.

use std::io::Write;

use http::Method;
use pier_model::api::UsageView;
use pier_model::client::ApiClient;

use crate::cli::{parse, Cli, CliError};
use crate::platform_verbs::{app_path, call, printed_json};

pub async fn run(
    cli: &Cli,
    client: &ApiClient,
    app: Option<&str>,
    month: Option<&str>,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let base = match app {
        Some(app) => format!("{}/usage", app_path(app)),
        None => "/v1/usage".to_string(),
    };
    let path = match month {
        Some(m) => format!("{base}?month={}", pier_model::client::encode_segment(m)),
        None => base,
    };
    let v = call(client, Method::GET, &path, None).await?;
    if printed_json(cli, &v, out)? {
        return Ok(());
    }
    let u: UsageView = parse(&v)?;
    print(&u, app, out)
}

fn print(u: &UsageView, app: Option<&str>, out: &mut dyn Write) -> Result<(), CliError> {
    let currency = u.currency.as_deref().unwrap_or("");
    if u.apps.is_empty() {
        let whose = app.map_or_else(|| "any app".to_string(), str::to_string);
        writeln!(out, "no usage of {whose} in {}", u.month)?;
    }
    for a in &u.apps {
        writeln!(out, "=== {} {}", a.app, u.month)?;
        writeln!(
            out,
            "{:<32}{:>16}  {:<10}{:>24}{:>14}",
            "item", "quantity", "unit", "price", "cost"
        )?;
        for i in &a.items {
            let price = i
                .price
                .map_or_else(|| "-".to_string(), |p| format!("{p} per {}", i.price_unit));
            let cost = i
                .cost
                .map_or_else(|| "-".to_string(), |c| format!("{c:.4} {currency}"));
            writeln!(
                out,
                "{:<32}{:>16.4}  {:<10}{:>24}{:>14}",
                i.item, i.quantity, i.unit, price, cost
            )?;
        }
        if let Some(c) = a.cost {
            writeln!(out, "{:<32}{:>64}", "total", format!("{c:.4} {currency}"))?;
        }
    }
    if app.is_none() {
        if let Some(c) = u.cost {
            writeln!(out, "=== all apps: {c:.4} {currency}")?;
        }
    }
    if !u.gaps.is_empty() {
        writeln!(out, "gaps (usage may be missing):")?;
        for g in &u.gaps {
            writeln!(out, "  {}", g.text)?;
        }
    }
    Ok(())
}
