//! Conversions between proto messages, JSON, [`EventFilter`] and ListEvents page tokens.
use nightshift_core::{EventType, pb};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

use crate::filter::EventFilter;

/// Page tokens are `<prefix><cursor>`: opaque to clients, versioned for us.
const TOKEN_PREFIX: &str = "c1.";

/// `data` for an event from JSON: an object becomes the struct; any other value is wrapped as
/// `{"value": …}` (a `google.protobuf.Struct` must be an object).
pub fn json_to_struct(v: serde_json::Value) -> Struct {
    match v {
        serde_json::Value::Object(map) => {
            Struct { fields: map.into_iter().map(|(k, v)| (k, json_to_value(v))).collect() }
        }
        serde_json::Value::Null => Struct::default(),
        other => Struct { fields: [("value".to_owned(), json_to_value(other))].into_iter().collect() },
    }
}

fn json_to_value(v: serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => {
            Kind::ListValue(ListValue { values: a.into_iter().map(json_to_value).collect() })
        }
        serde_json::Value::Object(_) => Kind::StructValue(json_to_struct(v)),
    };
    Value { kind: Some(kind) }
}

/// A struct as a JSON object.
pub fn struct_to_json(s: &Struct) -> serde_json::Value {
    serde_json::Value::Object(s.fields.iter().map(|(k, v)| (k.clone(), value_to_json(v))).collect())
}

fn value_to_json(v: &Value) -> serde_json::Value {
    match &v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(*b),
        Some(Kind::NumberValue(n)) => {
            // Integral numbers print as integers (counts, ids), the rest as floats.
            if n.fract() == 0.0 && n.abs() < 9.0e15 {
                serde_json::Value::from(*n as i64)
            } else {
                serde_json::Number::from_f64(*n).map_or(serde_json::Value::Null, serde_json::Value::Number)
            }
        }
        Some(Kind::StringValue(s)) => serde_json::Value::String(s.clone()),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => struct_to_json(s),
    }
}

/// An event as one JSON object (the JSON-lines sink and `nightshift events tail` print this):
/// `{"cursor", "id", "type": "BACKGROUND_TASK_STARTED", "time": RFC 3339, "agent_id", …, "data"}`.
pub fn event_to_json(e: &pb::Event) -> serde_json::Value {
    let ty = pb::EventType::try_from(e.r#type).ok().and_then(EventType::from_pb).map_or("UNSPECIFIED", |t| t.as_str());
    let time = e
        .time
        .as_ref()
        .and_then(nightshift_core::time::from_pb)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true));
    serde_json::json!({
        "cursor": e.cursor,
        "id": e.id,
        "type": ty,
        "time": time,
        "agent_id": e.agent_id,
        "agent_name": e.agent_name,
        "run_id": e.run_id,
        "source": e.source,
        "data": e.data.as_ref().map_or(serde_json::Value::Object(Default::default()), struct_to_json),
    })
}

/// The proto form of a filter.
pub fn filter_to_pb(f: &EventFilter) -> pb::EventFilter {
    pb::EventFilter {
        agent_ids: f.agent_ids.clone(),
        run_ids: f.run_ids.clone(),
        types: f.types.iter().map(|t| t.to_pb() as i32).collect(),
        namespaces: f.namespaces.clone(),
    }
}

/// The ListEvents page token that continues strictly after `cursor` (the event service issues
/// and accepts this format).
pub fn page_token_after(cursor: &str) -> String {
    format!("{TOKEN_PREFIX}{cursor}")
}

/// The cursor a page token made by [`page_token_after`] continues after; `None` when `token` is
/// not such a token.
pub fn cursor_from_page_token(token: &str) -> Option<&str> {
    token.strip_prefix(TOKEN_PREFIX).filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip() {
        let v = serde_json::json!({"status": "running", "n": 3, "ok": true, "list": [1.5, null], "o": {"a": "b"}});
        assert_eq!(struct_to_json(&json_to_struct(v.clone())), v);
        let wrapped = struct_to_json(&json_to_struct(serde_json::json!("x")));
        assert_eq!(wrapped, serde_json::json!({"value": "x"}));
    }

    #[test]
    fn filter_to_proto() {
        let f = EventFilter {
            agent_ids: vec!["a".into()],
            run_ids: vec!["r".into()],
            types: vec![EventType::BackgroundTaskError],
            namespaces: vec!["team-a".into()],
        };
        let want = pb::EventFilter {
            agent_ids: vec!["a".into()],
            run_ids: vec!["r".into()],
            types: vec![3],
            namespaces: vec!["team-a".into()],
        };
        assert_eq!(filter_to_pb(&f), want);
    }

    #[test]
    fn page_tokens_round_trip() {
        assert_eq!(cursor_from_page_token(&page_token_after("1767225600000-42")), Some("1767225600000-42"));
        assert_eq!(cursor_from_page_token("c1."), None);
        assert_eq!(cursor_from_page_token("42"), None);
    }
}
