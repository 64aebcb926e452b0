//! `sluice usage`: totals from the gateway's JSON access log, grouped by key, tenant, model
//! and time window, with cost from an optional price table. The access log is the usage
//! record (one line per request, written by Envoy, token counts from token-counter).

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::io::BufRead;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// One request of the access log, as usage.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub at: OffsetDateTime,
    pub key_id: String,
    pub tenant: String,
    /// The public model name the client asked for (else the upstream name).
    pub model: String,
    pub status: u16,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// The backend's error, when the request failed there (also inside a 200 stream).
    pub error: Option<String>,
    /// The batch line (batch id, custom id) when sluice-batch sent the request.
    pub batch: Option<(String, String)>,
    /// Answered by the response cache: the backend time the stored answer took (what the
    /// hit saved), in ms.
    pub cache_hit_ms: Option<u64>,
}

impl Record {
    /// Whether the request was served: a success status and no error from the backend.
    /// Only served requests are billed (the rate limits charge nothing for the others).
    pub fn served(&self) -> bool {
        (200..300).contains(&self.status) && self.error.is_none()
    }
}

/// A field of the access log: filter state is logged as a string, `-` or null when unset.
fn text(v: &Value, field: &str) -> Option<String> {
    match v.get(field)? {
        Value::String(s) if !s.is_empty() && s != "-" => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn number(v: &Value, field: &str) -> u64 {
    text(v, field).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// A line of the access log; `None` for lines that are not usage (no key: the request was
/// refused before a key was known) or not JSON.
pub fn parse_line(line: &str) -> Option<Record> {
    let v: Value = serde_json::from_str(line).ok()?;
    let key_id = text(&v, "key_id")?;
    let at = OffsetDateTime::parse(&text(&v, "timestamp")?, &Rfc3339).ok()?;
    Some(Record {
        at,
        key_id,
        tenant: text(&v, "tenant").unwrap_or_else(|| "-".into()),
        model: text(&v, "model_requested")
            .or_else(|| text(&v, "model"))
            .unwrap_or_else(|| "-".into()),
        status: u16::try_from(number(&v, "status")).unwrap_or(0),
        prompt_tokens: number(&v, "prompt_tokens"),
        completion_tokens: number(&v, "completion_tokens"),
        error: text(&v, "error"),
        batch: text(&v, "batch")
            .and_then(|b| serde_json::from_str::<Value>(&b).ok())
            .and_then(|b| {
                Some((
                    b.get("batch_id")?.as_str()?.to_string(),
                    b.get("custom_id")?.as_str()?.to_string(),
                ))
            }),
        cache_hit_ms: text(&v, "cache")
            .and_then(|c| serde_json::from_str::<Value>(&c).ok())
            .filter(|c| c.get("result").and_then(Value::as_str) == Some("hit"))
            .map(|c| c.get("saved_ms").and_then(Value::as_u64).unwrap_or(0)),
    })
}

/// One record per batch line: a line sluice-batch sent again (its answer was lost when the
/// service stopped) is logged twice, and only its last attempt, the one whose answer is in
/// the batch's output, counts. Other records are kept as they are, in order.
pub fn one_per_batch_line(records: Vec<Record>) -> Vec<Record> {
    let mut last: std::collections::HashMap<(String, String), usize> = Default::default();
    for (i, r) in records.iter().enumerate() {
        if let Some(line) = &r.batch {
            last.insert(line.clone(), i);
        }
    }
    records
        .into_iter()
        .enumerate()
        .filter(|(i, r)| {
            r.batch
                .as_ref()
                .is_none_or(|line| last.get(line) == Some(i))
        })
        .map(|(_, r)| r)
        .collect()
}

/// Read every usage record of an access log.
pub fn read_log(path: &std::path::Path) -> Result<Vec<Record>> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut out = Vec::new();
    for line in std::io::BufReader::new(file).lines() {
        if let Some(r) = parse_line(&line?) {
            out.push(r);
        }
    }
    Ok(one_per_batch_line(out))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GroupBy {
    Key,
    Tenant,
    Model,
    /// `batch` (lines sluice-batch sent) or `interactive`.
    Kind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Window {
    Hour,
    Day,
    /// The whole log.
    All,
}

/// Prices per million tokens, by model glob (first match in file order wins).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceTable {
    #[serde(default = "usd")]
    pub currency: String,
    pub models: Vec<ModelPrice>,
}

fn usd() -> String {
    "USD".into()
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelPrice {
    /// A model glob (`*`, `?`).
    pub model: String,
    pub input_per_million: f64,
    pub output_per_million: f64,
    /// Batch tokens' own prices (default: the same as interactive ones).
    #[serde(default)]
    pub batch_input_per_million: Option<f64>,
    #[serde(default)]
    pub batch_output_per_million: Option<f64>,
}

impl PriceTable {
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("{} is not a price table", path.display()))
    }

    pub fn cost(&self, model: &str, batch: bool, prompt: u64, completion: u64) -> Option<f64> {
        let p = self
            .models
            .iter()
            .find(|p| sluice_common::glob::glob_match(&p.model, model))?;
        let (input, output) = if batch {
            (
                p.batch_input_per_million.unwrap_or(p.input_per_million),
                p.batch_output_per_million.unwrap_or(p.output_per_million),
            )
        } else {
            (p.input_per_million, p.output_per_million)
        };
        Some(prompt as f64 * input / 1e6 + completion as f64 * output / 1e6)
    }
}

/// Totals of one group in one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub window: String,
    #[serde(flatten)]
    pub group: BTreeMap<String, String>,
    pub requests: u64,
    /// Requests not served: an error status (4xx / 5xx) or an error event in a stream.
    /// Their tokens are not in the totals.
    pub errors: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub total_tokens: u64,
    /// Requests answered by the response cache (served: in the totals above too).
    pub cached: u64,
    /// Their tokens: what the GPUs did not have to process again.
    pub cached_tokens: u64,
    /// The backend time the cached answers took when they were made: GPU time saved.
    pub gpu_seconds_saved: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

fn window_of(at: OffsetDateTime, w: Window) -> String {
    let at = at.to_offset(time::UtcOffset::UTC);
    match w {
        Window::Hour => format!(
            "{:04}-{:02}-{:02}T{:02}:00Z",
            at.year(),
            u8::from(at.month()),
            at.day(),
            at.hour()
        ),
        Window::Day => format!(
            "{:04}-{:02}-{:02}",
            at.year(),
            u8::from(at.month()),
            at.day()
        ),
        Window::All => "all".into(),
    }
}

fn field(g: GroupBy) -> &'static str {
    match g {
        GroupBy::Key => "key_id",
        GroupBy::Tenant => "tenant",
        GroupBy::Model => "model",
        GroupBy::Kind => "kind",
    }
}

/// Totals per window and group, sorted by window then group. Costs are summed per request
/// (each priced by its own model), so grouping by tenant still prices every model right;
/// a request whose model has no price leaves the group's cost unknown.
pub fn aggregate(
    records: &[Record],
    by: &[GroupBy],
    window: Window,
    prices: Option<&PriceTable>,
) -> Vec<Row> {
    let mut rows: BTreeMap<(String, Vec<String>), Row> = BTreeMap::new();
    for r in records {
        let values: Vec<String> = by
            .iter()
            .map(|g| match g {
                GroupBy::Key => r.key_id.clone(),
                GroupBy::Tenant => r.tenant.clone(),
                GroupBy::Model => r.model.clone(),
                GroupBy::Kind => if r.batch.is_some() {
                    "batch"
                } else {
                    "interactive"
                }
                .into(),
            })
            .collect();
        let w = window_of(r.at, window);
        let row = rows
            .entry((w.clone(), values.clone()))
            .or_insert_with(|| Row {
                window: w,
                group: by
                    .iter()
                    .map(|g| field(*g).to_string())
                    .zip(values)
                    .collect(),
                requests: 0,
                errors: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                total_tokens: 0,
                cached: 0,
                cached_tokens: 0,
                gpu_seconds_saved: 0.0,
                cost: prices.map(|_| 0.0),
            });
        row.requests += 1;
        row.errors += u64::from(!r.served());
        if !r.served() {
            continue;
        }
        row.prompt_tokens += r.prompt_tokens;
        row.completion_tokens += r.completion_tokens;
        row.total_tokens += r.prompt_tokens + r.completion_tokens;
        if let Some(saved) = r.cache_hit_ms {
            row.cached += 1;
            row.cached_tokens += r.prompt_tokens + r.completion_tokens;
            row.gpu_seconds_saved += saved as f64 / 1000.0;
        }
        if let Some(p) = prices {
            row.cost = match (
                row.cost,
                p.cost(
                    &r.model,
                    r.batch.is_some(),
                    r.prompt_tokens,
                    r.completion_tokens,
                ),
            ) {
                (Some(sum), Some(c)) => Some(sum + c),
                _ => None,
            };
        }
    }
    rows.into_values().collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Csv,
}

fn columns(by: &[GroupBy], with_cost: bool) -> Vec<&'static str> {
    let mut c = vec!["window"];
    c.extend(by.iter().map(|g| field(*g)));
    c.extend([
        "requests",
        "errors",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "cached",
        "cached_tokens",
        "gpu_seconds_saved",
    ]);
    if with_cost {
        c.push("cost");
    }
    c
}

fn cells(row: &Row, cols: &[&str]) -> Vec<String> {
    cols.iter()
        .map(|c| match *c {
            "window" => row.window.clone(),
            "requests" => row.requests.to_string(),
            "errors" => row.errors.to_string(),
            "prompt_tokens" => row.prompt_tokens.to_string(),
            "completion_tokens" => row.completion_tokens.to_string(),
            "total_tokens" => row.total_tokens.to_string(),
            "cached" => row.cached.to_string(),
            "cached_tokens" => row.cached_tokens.to_string(),
            "gpu_seconds_saved" => format!("{:.3}", row.gpu_seconds_saved),
            "cost" => row
                .cost
                .map_or_else(|| "unpriced".into(), |c| format!("{c:.6}")),
            other => row.group.get(other).cloned().unwrap_or_default(),
        })
        .collect()
}

fn csv_cell(s: &str) -> String {
    if s.contains([',', '"', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

pub fn render(
    rows: &[Row],
    by: &[GroupBy],
    prices: Option<&PriceTable>,
    format: Format,
) -> Result<String> {
    let cols = columns(by, prices.is_some());
    Ok(match format {
        Format::Json => {
            let v = match prices {
                Some(p) => serde_json::json!({"rows": rows, "currency": p.currency}),
                None => serde_json::json!({"rows": rows}),
            };
            serde_json::to_string_pretty(&v)?
        }
        Format::Csv => {
            let mut out = cols.join(",");
            out.push('\n');
            for r in rows {
                let line: Vec<String> = cells(r, &cols).iter().map(|c| csv_cell(c)).collect();
                out.push_str(&line.join(","));
                out.push('\n');
            }
            out
        }
        Format::Table => {
            let body: Vec<Vec<String>> = rows.iter().map(|r| cells(r, &cols)).collect();
            let widths: Vec<usize> = cols
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    body.iter()
                        .filter_map(|r| r.get(i).map(String::len))
                        .chain([c.len()])
                        .max()
                        .unwrap_or(0)
                })
                .collect();
            let mut out = String::new();
            let line = |cells: &[String], out: &mut String| {
                let parts: Vec<String> = cells
                    .iter()
                    .zip(&widths)
                    .map(|(c, w)| format!("{c:<w$}"))
                    .collect();
                out.push_str(parts.join("  ").trim_end());
                out.push('\n');
            };
            line(
                &cols.iter().map(|c| c.to_uppercase()).collect::<Vec<_>>(),
                &mut out,
            );
            for r in &body {
                line(r, &mut out);
            }
            if let Some(p) = prices {
                out.push_str(&format!("(cost in {})\n", p.currency));
            }
            out
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const LOG: &str = r#"{"timestamp":"2026-11-21T10:15:00.000Z","key_id":"key_a","tenant":"team-a","model_requested":"small","model":"org/small-8b","status":200,"prompt_tokens":"10","completion_tokens":"5"}
{"timestamp":"2026-11-21T10:45:00.000Z","key_id":"key_a","tenant":"team-a","model_requested":"large","model":"org/large","status":200,"prompt_tokens":"100","completion_tokens":"50"}
{"timestamp":"2026-11-21T11:05:00.000Z","key_id":"key_b","tenant":"team-a","model_requested":"small","model":"org/small-8b","status":429,"prompt_tokens":"-","completion_tokens":null}
{"timestamp":"2026-11-21T11:06:00.000Z","key_id":"-","tenant":"-","status":401}
not json"#;

    fn records() -> Vec<Record> {
        LOG.lines().filter_map(parse_line).collect()
    }

    #[test]
    fn lines_without_a_key_are_not_usage() {
        let r = records();
        assert_eq!(r.len(), 3);
        assert_eq!(r[2].prompt_tokens, 0);
        assert_eq!(r[1].model, "large");
    }

    #[test]
    fn groups_windows_and_costs() {
        let prices: PriceTable = serde_json::from_str(
            r#"{"currency": "EUR", "models": [
                {"model": "small", "input_per_million": 1.0, "output_per_million": 2.0},
                {"model": "*", "input_per_million": 10.0, "output_per_million": 20.0}]}"#,
        )
        .unwrap();
        let rows = aggregate(&records(), &[GroupBy::Tenant], Window::Day, Some(&prices));
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(
            (r.window.as_str(), r.requests, r.errors),
            ("2026-11-21", 3, 1)
        );
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens, r.total_tokens),
            (110, 55, 165)
        );
        let want = (10.0 * 1.0 + 5.0 * 2.0 + 100.0 * 10.0 + 50.0 * 20.0) / 1e6;
        assert!((r.cost.unwrap() - want).abs() < 1e-12);

        let rows = aggregate(
            &records(),
            &[GroupBy::Key, GroupBy::Model],
            Window::Hour,
            None,
        );
        let keys: Vec<(String, String, String)> = rows
            .iter()
            .map(|r| {
                (
                    r.window.clone(),
                    r.group["key_id"].clone(),
                    r.group["model"].clone(),
                )
            })
            .collect();
        assert_eq!(
            keys,
            [
                ("2026-11-21T10:00Z".into(), "key_a".into(), "large".into()),
                ("2026-11-21T10:00Z".into(), "key_a".into(), "small".into()),
                ("2026-11-21T11:00Z".into(), "key_b".into(), "small".into()),
            ]
        );
        // An unpriced model makes the group's cost unknown rather than wrong.
        let partial: PriceTable = serde_json::from_str(
            r#"{"models": [{"model": "small", "input_per_million": 1, "output_per_million": 1}]}"#,
        )
        .unwrap();
        let rows = aggregate(&records(), &[], Window::All, Some(&partial));
        assert_eq!(rows[0].cost, None);
    }

    #[test]
    fn batch_lines_count_once_apart_from_interactive_use_at_their_own_price() {
        let line = |custom_id: &str, prompt: u64| {
            format!(
                r#"{{"timestamp":"2026-11-21T10:15:00.000Z","key_id":"key_a","tenant":"team-a","model":"small","status":200,"prompt_tokens":"{prompt}","completion_tokens":"1","batch":"{{\"batch_id\":\"batch_1\",\"custom_id\":\"{custom_id}\"}}"}}"#
            )
        };
        // c-1 was sent again after its first answer was lost: its last attempt counts.
        let log = [line("c-1", 100), line("c-2", 10), line("c-1", 7)];
        let mut records: Vec<Record> = log.iter().filter_map(|l| parse_line(l)).collect();
        records.extend(records_of_interactive());
        let records = one_per_batch_line(records);
        let prices: PriceTable = serde_json::from_str(
            r#"{"models": [{"model": "small", "input_per_million": 2.0, "output_per_million": 2.0,
                             "batch_input_per_million": 1.0, "batch_output_per_million": 1.0}]}"#,
        )
        .unwrap();
        let rows = aggregate(&records, &[GroupBy::Kind], Window::All, Some(&prices));
        let by_kind: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|r| (r.group["kind"].as_str(), r.requests, r.prompt_tokens))
            .collect();
        assert_eq!(by_kind, [("batch", 2, 17), ("interactive", 1, 10)]);
        assert!((rows[0].cost.unwrap() - (17.0 + 2.0) * 1.0 / 1e6).abs() < 1e-12);
        assert!((rows[1].cost.unwrap() - (10.0 + 5.0) * 2.0 / 1e6).abs() < 1e-12);
    }

    fn records_of_interactive() -> Vec<Record> {
        records().into_iter().take(1).collect()
    }

    #[test]
    fn a_stream_that_failed_at_the_backend_is_an_error_and_not_billed() {
        let line = r#"{"timestamp":"2026-11-21T10:15:00.000Z","key_id":"key_a","tenant":"team-a","model":"m","status":200,"prompt_tokens":"40","completion_tokens":"7","error":"the request exceeds the available context size"}"#;
        let r: Vec<Record> = parse_line(line).into_iter().collect();
        assert!(!r[0].served());
        let rows = aggregate(&r, &[], Window::All, None);
        assert_eq!(
            (rows[0].requests, rows[0].errors, rows[0].total_tokens),
            (1, 1, 0)
        );
    }

    #[test]
    fn cache_hits_are_served_tokens_and_say_what_they_saved() {
        let hit = r#"{"timestamp":"2026-11-21T10:15:00.000Z","key_id":"key_a","tenant":"team-a","model":"m","status":200,"prompt_tokens":"12","completion_tokens":"8","cache":"{\"result\":\"hit\",\"tier\":\"local\",\"saved_ms\":1500,\"age_s\":3}"}"#;
        let miss = r#"{"timestamp":"2026-11-21T10:14:00.000Z","key_id":"key_a","tenant":"team-a","model":"m","status":200,"prompt_tokens":"12","completion_tokens":"8","cache":"{\"result\":\"stored\",\"tier\":\"local\"}"}"#;
        let r: Vec<Record> = [miss, hit].into_iter().filter_map(parse_line).collect();
        assert_eq!((r[0].cache_hit_ms, r[1].cache_hit_ms), (None, Some(1500)));
        let rows = aggregate(&r, &[], Window::All, None);
        assert_eq!(
            (
                rows[0].requests,
                rows[0].total_tokens,
                rows[0].cached,
                rows[0].cached_tokens
            ),
            (2, 40, 1, 20)
        );
        assert!((rows[0].gpu_seconds_saved - 1.5).abs() < 1e-9);
    }

    #[test]
    fn formats() {
        let rows = aggregate(&records(), &[GroupBy::Key], Window::All, None);
        let csv = render(&rows, &[GroupBy::Key], None, Format::Csv).unwrap();
        assert_eq!(
            csv,
            "window,key_id,requests,errors,prompt_tokens,completion_tokens,total_tokens,cached,cached_tokens,gpu_seconds_saved\n\
             all,key_a,2,0,110,55,165,0,0,0.000\nall,key_b,1,1,0,0,0,0,0,0.000\n"
        );
        let json: Value =
            serde_json::from_str(&render(&rows, &[GroupBy::Key], None, Format::Json).unwrap())
                .unwrap();
        assert_eq!(json["rows"][0]["key_id"], "key_a");
        assert_eq!(json["rows"][0]["total_tokens"], 165);
        let table = render(&rows, &[GroupBy::Key], None, Format::Table).unwrap();
        assert!(table.starts_with("WINDOW  KEY_ID  REQUESTS"), "{table}");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
    }
}
