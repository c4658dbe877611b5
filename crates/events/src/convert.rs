//! Conversions between proto messages, JSON and the log's types, with request validation.
use nightshift_core::{EventType, ValidationError, pb};
use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

use crate::log::EventFilter;

/// Largest encoded event accepted (Redis and NATS handle more; this bounds memory per event).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Most values in one filter list.
const MAX_FILTER_VALUES: usize = 256;

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

/// Checks a proto filter; `field` prefixes the names in errors (e.g. `filter`).
pub fn filter_from_pb(field: &str, f: Option<&pb::EventFilter>) -> Result<EventFilter, ValidationError> {
    let Some(f) = f else { return Ok(EventFilter::default()) };
    let ids = |name: &str, values: &[String]| -> Result<Vec<String>, ValidationError> {
        if values.len() > MAX_FILTER_VALUES {
            return Err(ValidationError::new(format!("{field}.{name}"), format!("at most {MAX_FILTER_VALUES} values")));
        }
        for (i, v) in values.iter().enumerate() {
            if v.is_empty() {
                return Err(ValidationError::new(format!("{field}.{name}[{i}]"), "must not be empty"));
            }
        }
        Ok(values.to_vec())
    };
    let agent_ids = ids("agent_ids", &f.agent_ids)?;
    let run_ids = ids("run_ids", &f.run_ids)?;
    if f.types.len() > MAX_FILTER_VALUES {
        return Err(ValidationError::new(format!("{field}.types"), format!("at most {MAX_FILTER_VALUES} values")));
    }
    let mut types = Vec::with_capacity(f.types.len());
    for (i, t) in f.types.iter().enumerate() {
        let ty = pb::EventType::try_from(*t).ok().and_then(EventType::from_pb).ok_or_else(|| {
            ValidationError::new(format!("{field}.types[{i}]"), format!("{t} is not a known event type"))
        })?;
        types.push(ty);
    }
    Ok(EventFilter { agent_ids, run_ids, types })
}

/// The proto form of a filter.
pub fn filter_to_pb(f: &EventFilter) -> pb::EventFilter {
    pb::EventFilter {
        agent_ids: f.agent_ids.clone(),
        run_ids: f.run_ids.clone(),
        types: f.types.iter().map(|t| t.to_pb() as i32).collect(),
    }
}

/// Checks an event to publish; `field` prefixes names in errors (`event`, `events[3]`).
pub fn check_event(field: &str, e: &pb::Event) -> Result<(), ValidationError> {
    match pb::EventType::try_from(e.r#type) {
        Ok(pb::EventType::Unspecified) => {
            return Err(ValidationError::new(format!("{field}.type"), "is required"));
        }
        Err(_) => {
            return Err(ValidationError::new(
                format!("{field}.type"),
                format!("{} is not a known event type", e.r#type),
            ));
        }
        Ok(_) => {}
    }
    if !e.id.is_empty() && (e.id.len() > 128 || !e.id.bytes().all(|b| b.is_ascii_graphic())) {
        return Err(ValidationError::new(
            format!("{field}.id"),
            "must be 1..=128 printable ASCII characters without spaces (or empty to let the server assign one)",
        ));
    }
    for (name, v) in
        [("agent_id", &e.agent_id), ("run_id", &e.run_id), ("agent_name", &e.agent_name), ("source", &e.source)]
    {
        if v.len() > 256 {
            return Err(ValidationError::new(format!("{field}.{name}"), "must be at most 256 bytes"));
        }
    }
    if let Some(t) = &e.time
        && nightshift_core::time::from_pb(t).is_none()
    {
        return Err(ValidationError::new(format!("{field}.time"), "is not a valid timestamp"));
    }
    let size = prost::Message::encoded_len(e);
    if size > MAX_EVENT_BYTES {
        return Err(ValidationError::new(
            field.to_owned(),
            format!("is {size} bytes encoded; the limit is {MAX_EVENT_BYTES}"),
        ));
    }
    Ok(())
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
    fn filters_name_bad_fields() {
        let bad = pb::EventFilter { types: vec![1, 999], ..Default::default() };
        assert_eq!(filter_from_pb("filter", Some(&bad)).unwrap_err().field, "filter.types[1]");
        let bad = pb::EventFilter { agent_ids: vec![String::new()], ..Default::default() };
        assert_eq!(filter_from_pb("filter", Some(&bad)).unwrap_err().field, "filter.agent_ids[0]");
        let ok = pb::EventFilter { types: vec![3], run_ids: vec!["r".into()], ..Default::default() };
        let f = filter_from_pb("filter", Some(&ok)).unwrap();
        assert_eq!(f.types, vec![EventType::BackgroundTaskError]);
        assert_eq!(filter_to_pb(&f), ok);
    }
}
