//! Argument validation against a tool's JSON Schema.
use serde_json::Value;

/// Errors listed in one message; more would only add noise for the model.
const MAX_LISTED: usize = 5;

/// A compiled input schema.
pub(crate) struct ArgSchema {
    validator: jsonschema::Validator,
}

impl ArgSchema {
    /// Compiles `schema`. Remote `$ref`s are not fetched (the crate is built without resolvers),
    /// so a schema that needs one fails here instead of making network calls per tool call.
    pub(crate) fn compile(schema: &Value) -> Result<Self, String> {
        jsonschema::validator_for(schema).map(|validator| Self { validator }).map_err(|e| e.to_string())
    }

    /// Checks `args`; on failure returns one line per violation, each with its JSON pointer.
    pub(crate) fn check(&self, args: &Value) -> Result<(), String> {
        let mut errors = self.validator.iter_errors(args);
        let Some(first) = errors.next() else { return Ok(()) };
        let mut lines = Vec::new();
        let mut extra = 0usize;
        for e in std::iter::once(first).chain(errors) {
            if lines.len() < MAX_LISTED {
                let path = e.instance_path().to_string();
                let at = if path.is_empty() { "arguments".to_owned() } else { format!("arguments{path}") };
                lines.push(format!("{at}: {e}"));
            } else {
                extra += 1;
            }
        }
        if extra > 0 {
            lines.push(format!("... and {extra} more"));
        }
        Err(lines.join("; "))
    }
}
