//! The operator's price sheet (`pier api --prices FILE`): the `[prices]` table of a TOML file,
//! read once at start. A bad sheet is refused at load, naming the file, the key and why, so a
//! typo never bills at a wrong price. Keys left out cost nothing.
//!
//! ```toml
//! [prices]
//! currency = "USD"
//! instance_hour = 0.01        # per instance and hour, any process type and size
//! cpu_second = 0.00002
//! memory_gb_hour = 0.004      # resident memory, GB (10^9 bytes) × hours
//! requests_million = 0.40
//! gb_in = 0.0                 # request bodies, GB
//! gb_out = 0.09               # response bodies, GB
//! [prices.addon_hour]
//! postgres = 0.02
//! redis = 0.005
//! ```

use std::collections::BTreeMap;
use std::path::Path;

/// Why a price sheet was refused: `FILE: KEY: REASON`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}: {key}: {reason}")]
pub struct PriceError {
    pub file: String,
    pub key: String,
    pub reason: String,
}

/// Prices, each per its unit, in `currency`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Prices {
    pub currency: String,
    pub instance_hour: f64,
    pub cpu_second: f64,
    pub memory_gb_hour: f64,
    pub requests_million: f64,
    pub gb_in: f64,
    pub gb_out: f64,
    /// Add-on kind (`postgres`, `redis`) → price per hour.
    pub addon_hour: BTreeMap<String, f64>,
}

/// Keys a price sheet may have besides `currency` and `addon_hour`.
const PRICE_KEYS: [&str; 6] = [
    "instance_hour",
    "cpu_second",
    "memory_gb_hour",
    "requests_million",
    "gb_in",
    "gb_out",
];

impl Prices {
    /// Reads and checks the sheet in `path`.
    pub fn load(path: &Path) -> Result<Prices, PriceError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| PriceError {
            file: file.clone(),
            key: "-".into(),
            reason: format!("cannot be read: {e}"),
        })?;
        Self::parse(&file, &text)
    }

    /// Checks the sheet `text` (from `file`, named in errors).
    pub fn parse(file: &str, text: &str) -> Result<Prices, PriceError> {
        let err = |key: &str, reason: String| PriceError {
            file: file.to_string(),
            key: key.to_string(),
            reason,
        };
        let doc: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| err("-", format!("not TOML: {}", e.message())))?;
        for k in doc.keys() {
            if k != "prices" {
                return Err(err(k, "unknown table (the price sheet is [prices])".into()));
            }
        }
        let table = match doc.get("prices") {
            Some(toml::Value::Table(t)) => t,
            Some(_) => return Err(err("prices", "must be a table".into())),
            None => {
                return Err(err(
                    "prices",
                    "missing: the sheet is a [prices] table".into(),
                ))
            }
        };
        let mut p = Prices {
            currency: "USD".into(),
            ..Prices::default()
        };
        for (k, v) in table {
            let key = format!("prices.{k}");
            match k.as_str() {
                "currency" => match v {
                    toml::Value::String(s)
                        if (1..=8).contains(&s.len())
                            && s.bytes().all(|b| b.is_ascii_alphanumeric()) =>
                    {
                        p.currency = s.clone()
                    }
                    _ => {
                        return Err(err(
                            &key,
                            "must be a currency code of 1 to 8 letters or digits, e.g. \"USD\""
                                .into(),
                        ))
                    }
                },
                "addon_hour" => {
                    let toml::Value::Table(t) = v else {
                        return Err(err(&key, "must be a table of add-on kind = price".into()));
                    };
                    for (kind, price) in t {
                        let key = format!("{key}.{kind}");
                        if !matches!(kind.as_str(), "postgres" | "redis") {
                            return Err(err(&key, "unknown add-on kind (postgres, redis)".into()));
                        }
                        p.addon_hour
                            .insert(kind.clone(), price_value(price).map_err(|r| err(&key, r))?);
                    }
                }
                other => {
                    let slot = match other {
                        "instance_hour" => &mut p.instance_hour,
                        "cpu_second" => &mut p.cpu_second,
                        "memory_gb_hour" => &mut p.memory_gb_hour,
                        "requests_million" => &mut p.requests_million,
                        "gb_in" => &mut p.gb_in,
                        "gb_out" => &mut p.gb_out,
                        _ => {
                            return Err(err(
                                &key,
                                format!(
                                    "unknown price (known: currency, {}, addon_hour.KIND)",
                                    PRICE_KEYS.join(", ")
                                ),
                            ))
                        }
                    };
                    *slot = price_value(v).map_err(|r| err(&key, r))?;
                }
            }
        }
        Ok(p)
    }
}

fn price_value(v: &toml::Value) -> Result<f64, String> {
    let n = match v {
        toml::Value::Float(f) => *f,
        toml::Value::Integer(i) => *i as f64,
        other => return Err(format!("must be a number, not {}", other.type_str())),
    };
    if !n.is_finite() || n < 0.0 {
        return Err(format!("must be a finite number of at least 0, not {n}"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_example_sheet_in_config_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config/prices.toml");
        let p = Prices::load(&path).unwrap();
        assert_eq!(p.currency, "USD");
        assert!(p.instance_hour > 0.0 && p.gb_out > 0.0);
        assert!(p.addon_hour["postgres"] > 0.0);
    }

    #[test]
    fn bad_sheets_are_refused_naming_the_file_key_and_reason() {
        let cases = [
            (
                "[prices]\ninstance_hour = -1\n",
                "prices.instance_hour",
                "at least 0",
            ),
            (
                "[prices]\ninstance_hour = \"1\"\n",
                "prices.instance_hour",
                "not string",
            ),
            (
                "[prices]\ninstance_hours = 1\n",
                "prices.instance_hours",
                "unknown price",
            ),
            (
                "[prices]\ncpu_second = nan\n",
                "prices.cpu_second",
                "finite",
            ),
            (
                "[prices.addon_hour]\nmysql = 1\n",
                "prices.addon_hour.mysql",
                "unknown add-on",
            ),
            ("[price]\n", "price", "unknown table"),
            ("", "prices", "missing"),
            ("[prices\n", "-", "not TOML"),
            (
                "[prices]\ncurrency = \"US D\"\n",
                "prices.currency",
                "currency code",
            ),
        ];
        for (text, key, why) in cases {
            let e = Prices::parse("/etc/pier/prices.toml", text).unwrap_err();
            assert_eq!(e.key, key, "{text:?}: {e}");
            assert!(e.reason.contains(why), "{text:?}: {e}");
            assert!(e
                .to_string()
                .starts_with(&format!("/etc/pier/prices.toml: {key}: ")));
        }
        let p = Prices::parse("f", "[prices]\ninstance_hour = 1\n").unwrap();
        assert_eq!((p.instance_hour, p.gb_out), (1.0, 0.0));
    }
}
