//! `format_data`: renders JSON data as an aligned text table, a Markdown table, CSV, YAML or JSON.
use async_trait::async_trait;
use serde::ser::SerializeMap;
use serde::{Deserialize, Serialize, Serializer};
use serde_json::{Value, json};

use super::parse_args;
use nightshift_core::governance::Hints;

use crate::{Tool, ToolDef, ToolError, ToolSource};

/// Formats JSON data (a list of records, a list of rows, a list of values or one object).
#[derive(Debug, Default)]
pub struct FormatData;

#[derive(Deserialize)]
struct Args {
    data: Value,
    format: String,
    columns: Option<Vec<String>>,
}

/// Data turned into a header and rows of cell text.
struct Grid {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
}

#[async_trait]
impl Tool for FormatData {
    fn definition(&self) -> ToolDef {
        ToolDef {
            name: "format_data".into(),
            description: "Formats JSON data as text. data: a list of objects (one row each), a list of lists, a list \
                of values, or one object (key/value rows). format: table (aligned plain text), markdown, csv, yaml \
                or json. columns: optional column selection and order for lists of objects."
                .into(),
            input_schema: json!({
                "type": "object",
                "properties": {
                    "data": {"description": "the data to format"},
                    "format": {"type": "string", "enum": ["table", "markdown", "csv", "yaml", "json"]},
                    "columns": {"type": "array", "items": {"type": "string"}, "minItems": 1},
                },
                "required": ["data", "format"],
                "additionalProperties": false,
            }),
            source: ToolSource::Local,
            hints: Hints { read_only: true, ..Hints::default() },
        }
    }

    async fn call(&self, args: Value) -> Result<String, ToolError> {
        let a: Args = parse_args(args)?;
        let data = a.data;
        let cols = a.columns.as_deref();
        match a.format.as_str() {
            "json" => serde_json::to_string_pretty(&project(&data, cols)).map_err(|e| ToolError::Failed(e.to_string())),
            "yaml" => serde_norway::to_string(&project(&data, cols)).map_err(|e| ToolError::Failed(e.to_string())),
            "csv" => Ok(csv(&grid(&data, cols))),
            "markdown" => Ok(markdown(&grid(&data, cols))),
            "table" => Ok(table(&grid(&data, cols))),
            other => Err(ToolError::InvalidArguments(format!(
                "unknown format '{other}'; use table, markdown, csv, yaml or json"
            ))),
        }
    }
}

/// `data` for JSON/YAML output: with `columns`, every object of a list keeps only those keys, in
/// that order (a `serde_json::Map` would sort them, so the rows are serialised as ordered pairs).
enum Projected<'a> {
    Whole(&'a Value),
    Rows(Vec<Row<'a>>),
}

/// One row: an ordered list of (column, value), or a non-object item kept as it is.
enum Row<'a> {
    Fields(Vec<(&'a str, &'a Value)>),
    Item(&'a Value),
}

fn project<'a>(data: &'a Value, cols: Option<&'a [String]>) -> Projected<'a> {
    match (data, cols) {
        (Value::Array(items), Some(cols)) => Projected::Rows(
            items
                .iter()
                .map(|item| match item {
                    Value::Object(o) => {
                        Row::Fields(cols.iter().map(|c| (c.as_str(), o.get(c).unwrap_or(&Value::Null))).collect())
                    }
                    other => Row::Item(other),
                })
                .collect(),
        ),
        _ => Projected::Whole(data),
    }
}

impl Serialize for Projected<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Whole(v) => v.serialize(s),
            Self::Rows(rows) => s.collect_seq(rows),
        }
    }
}

impl Serialize for Row<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Fields(fields) => {
                let mut m = s.serialize_map(Some(fields.len()))?;
                for (k, v) in fields {
                    m.serialize_entry(k, v)?;
                }
                m.end()
            }
            Self::Item(v) => v.serialize(s),
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn grid(data: &Value, columns: Option<&[String]>) -> Grid {
    match data {
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_object) => {
            let header: Vec<String> = match columns {
                Some(c) => c.to_vec(),
                None => {
                    // Union of keys in first-seen order, so sparse records still line up.
                    let mut h: Vec<String> = Vec::new();
                    for o in items.iter().filter_map(Value::as_object) {
                        for k in o.keys() {
                            if !h.contains(k) {
                                h.push(k.clone());
                            }
                        }
                    }
                    h
                }
            };
            let rows = items
                .iter()
                .filter_map(Value::as_object)
                .map(|o| header.iter().map(|k| o.get(k).map(cell).unwrap_or_default()).collect())
                .collect();
            Grid { header, rows }
        }
        Value::Array(items) if !items.is_empty() && items.iter().all(Value::is_array) => {
            let width = items.iter().filter_map(Value::as_array).map(Vec::len).max().unwrap_or(0);
            let header = match columns {
                Some(c) => c.to_vec(),
                None => (1..=width).map(|i| format!("col{i}")).collect(),
            };
            let rows = items
                .iter()
                .filter_map(Value::as_array)
                .map(|r| (0..header.len()).map(|i| r.get(i).map(cell).unwrap_or_default()).collect())
                .collect();
            Grid { header, rows }
        }
        Value::Array(items) => {
            Grid { header: vec!["value".into()], rows: items.iter().map(|v| vec![cell(v)]).collect() }
        }
        Value::Object(o) => Grid {
            header: vec!["key".into(), "value".into()],
            rows: o.iter().map(|(k, v)| vec![k.clone(), cell(v)]).collect(),
        },
        scalar => Grid { header: vec!["value".into()], rows: vec![vec![cell(scalar)]] },
    }
}

fn table(g: &Grid) -> String {
    // Cells are printed on one line each: a newline inside a cell would break the alignment.
    let flat = |s: &str| s.replace(['\n', '\r'], " ");
    let header: Vec<String> = g.header.iter().map(|h| flat(h)).collect();
    let rows: Vec<Vec<String>> = g.rows.iter().map(|r| r.iter().map(|c| flat(c)).collect()).collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        padded.join(" | ").trim_end().to_owned()
    };
    let mut out = vec![line(&header)];
    out.push(widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>().join("-+-"));
    out.extend(rows.iter().map(|r| line(r)));
    out.join("\n")
}

fn markdown(g: &Grid) -> String {
    let esc = |s: &str| s.replace('|', "\\|").replace("\r\n", "<br>").replace('\n', "<br>");
    let row = |cells: &[String]| format!("| {} |", cells.iter().map(|c| esc(c)).collect::<Vec<_>>().join(" | "));
    let mut out = vec![row(&g.header), format!("|{}", " --- |".repeat(g.header.len()))];
    out.extend(g.rows.iter().map(|r| row(r)));
    out.join("\n")
}

fn csv(g: &Grid) -> String {
    let field = |s: &str| {
        if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s.to_owned() }
    };
    let row = |cells: &[String]| cells.iter().map(|c| field(c)).collect::<Vec<_>>().join(",");
    let mut out = vec![row(&g.header)];
    out.extend(g.rows.iter().map(|r| row(r)));
    out.join("\n") + "\n"
}
