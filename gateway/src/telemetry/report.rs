//! `gatehouse report`: the bottleneck query library in `dashboards/sql/`,
//! parameterised on the client side (ClickHouse 18.16 has no server-side
//! parameters) and printed as an aligned table, JSON or CSV.

use std::time::Duration;

/// A query of the library.
#[derive(Debug, Clone, Copy)]
pub struct Report {
    /// Name (file stem).
    pub name: &'static str,
    /// SQL text with `{db}`, `{since}`, `{app_filter}`, `{limit}`.
    pub sql: &'static str,
}

macro_rules! report {
    ($name:literal) => {
        Report {
            name: $name,
            sql: include_str!(concat!("../../../dashboards/sql/", $name, ".sql")),
        }
    };
}

/// Every report.
pub const REPORTS: &[Report] = &[
    report!("slowest_routes"),
    report!("gateway_vs_upstream"),
    report!("upstream_outliers"),
    report!("error_hotspots"),
    report!("contract_violations"),
    report!("rate_limited_consumers"),
    report!("heaviest_consumers"),
    report!("policy_change"),
    report!("fences"),
    report!("breaker_events"),
];

impl Report {
    /// Find by name.
    pub fn named(name: &str) -> Option<Report> {
        REPORTS.iter().copied().find(|r| r.name == name)
    }

    /// The first comment line: what the report answers.
    pub fn summary(&self) -> &'static str {
        self.sql
            .lines()
            .next()
            .unwrap_or("")
            .trim_start_matches("--")
            .trim()
    }

    /// The SQL with parameters filled in (values quoted and escaped).
    pub fn render(&self, db: &str, since: Duration, app: Option<&str>, limit: u32) -> String {
        let app_filter = match app {
            Some(a) => format!(
                "AND app = '{}'",
                a.replace('\\', "\\\\").replace('\'', "\\'")
            ),
            None => String::new(),
        };
        let body: String = self
            .sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect::<Vec<_>>()
            .join("\n");
        body.replace(
            "{db}",
            &db.replace(|c: char| !(c.is_ascii_alphanumeric() || c == '_'), ""),
        )
        .replace("{since}", &since.as_secs().to_string())
        .replace("{app_filter}", &app_filter)
        .replace("{limit}", &limit.to_string())
    }
}

/// Run a rendered report; returns the header and rows (as text).
pub async fn run(
    client: &clickhouse::Client,
    sql: &str,
) -> Result<(Vec<String>, Vec<Vec<String>>), clickhouse::error::Error> {
    let bytes = client
        .query(sql)
        .fetch_bytes("TabSeparatedWithNames")?
        .collect()
        .await?;
    let text = String::from_utf8_lossy(&bytes);
    let mut lines = text.lines();
    let header = lines
        .next()
        .map(|h| h.split('\t').map(unescape).collect())
        .unwrap_or_default();
    let rows = lines
        .filter(|l| !l.is_empty())
        .map(|l| l.split('\t').map(unescape).collect())
        .collect();
    Ok((header, rows))
}

fn unescape(s: &str) -> String {
    s.replace("\\t", "\t")
        .replace("\\n", "\n")
        .replace("\\\\", "\\")
}

/// Output formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// Aligned columns.
    Table,
    /// An array of objects.
    Json,
    /// RFC 4180 CSV with a header.
    Csv,
}

/// Render rows for a human or a machine.
pub fn format(header: &[String], rows: &[Vec<String>], f: Format) -> String {
    match f {
        Format::Table => {
            let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
            for r in rows {
                for (i, c) in r.iter().enumerate() {
                    if let Some(w) = widths.get_mut(i) {
                        *w = (*w).max(c.chars().count());
                    }
                }
            }
            let line = |cells: &[String]| {
                cells
                    .iter()
                    .enumerate()
                    .map(|(i, c)| {
                        let numeric = c.parse::<f64>().is_ok();
                        let w = widths.get(i).copied().unwrap_or(0);
                        if numeric {
                            format!("{c:>w$}")
                        } else {
                            format!("{c:<w$}")
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("  ")
                    .trim_end()
                    .to_string()
            };
            let mut out = line(header);
            out.push('\n');
            out.push_str(
                &widths
                    .iter()
                    .map(|w| "-".repeat(*w))
                    .collect::<Vec<_>>()
                    .join("  "),
            );
            out.push('\n');
            for r in rows {
                out.push_str(&line(r));
                out.push('\n');
            }
            if rows.is_empty() {
                out.push_str("(no rows)\n");
            }
            out
        }
        Format::Json => {
            let items: Vec<serde_json::Value> = rows
                .iter()
                .map(|r| {
                    let obj: serde_json::Map<String, serde_json::Value> = header
                        .iter()
                        .zip(r)
                        .map(|(h, c)| {
                            let v = c
                                .parse::<i64>()
                                .map(serde_json::Value::from)
                                .or_else(|_| c.parse::<f64>().map(serde_json::Value::from))
                                .unwrap_or_else(|_| c.clone().into());
                            (h.clone(), v)
                        })
                        .collect();
                    serde_json::Value::Object(obj)
                })
                .collect();
            format!("{}\n", serde_json::Value::Array(items))
        }
        Format::Csv => {
            let esc = |c: &String| {
                if c.contains([',', '"', '\n']) {
                    format!("\"{}\"", c.replace('"', "\"\""))
                } else {
                    c.clone()
                }
            };
            let mut out = header.iter().map(esc).collect::<Vec<_>>().join(",");
            out.push('\n');
            for r in rows {
                out.push_str(&r.iter().map(esc).collect::<Vec<_>>().join(","));
                out.push('\n');
            }
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_report_renders_without_placeholders() {
        for r in REPORTS {
            let sql = r.render("gh", Duration::from_secs(3600), Some("o'rders"), 10);
            assert!(!sql.contains('{'), "{}: {sql}", r.name);
            assert!(
                sql.contains("gh.requests") || sql.contains("gh.fence_events"),
                "{}",
                r.name
            );
            assert!(sql.contains("AND app = 'o\\'rders'"), "{}", r.name);
            assert!(!r.summary().is_empty());
        }
    }

    #[test]
    fn tables_align_and_csv_quotes() {
        let h = vec!["route".to_string(), "p99_ms".to_string()];
        let rows = vec![
            vec!["get".to_string(), "1.5".to_string()],
            vec!["a,b".to_string(), "10".to_string()],
        ];
        let t = format(&h, &rows, Format::Table);
        assert!(t.contains("get       1.5\n"), "{t}");
        assert!(t.starts_with("route  p99_ms\n-----  ------\n"), "{t}");
        assert!(format(&h, &rows, Format::Csv).contains("\"a,b\",10"));
        assert!(format(&h, &rows, Format::Json).contains("\"p99_ms\":1.5"));
    }
}
