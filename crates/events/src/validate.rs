//! Request validation: proto filters and events checked (and converted to the log's types)
//! before they reach an [`EventLog`](crate::EventLog).
use nightshift_core::{EventType, ValidationError, pb};
use nightshift_events_client::EventFilter;

/// Largest encoded event accepted (Redis and NATS handle more; this bounds memory per event).
pub const MAX_EVENT_BYTES: usize = 256 * 1024;
/// Most values in one filter list.
const MAX_FILTER_VALUES: usize = 256;

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
    let namespaces = ids("namespaces", &f.namespaces)?;
    for (i, ns) in namespaces.iter().enumerate() {
        nightshift_core::Namespace::parse(&format!("{field}.namespaces[{i}]"), ns)?;
    }
    Ok(EventFilter { agent_ids, run_ids, types, namespaces })
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
    use nightshift_events_client::filter_to_pb;

    use super::*;

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
