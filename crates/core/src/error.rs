//! Validation errors that name the offending field, and the one-line form of any error chain.
use std::fmt;

/// One invalid field: `field` is a dotted path such as `schedule.cron.expression` or
/// `tools.mcp[1].url`; `message` says what is wrong and never echoes a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct ValidationError {
    /// Dotted path of the field, as it appears in the YAML manifest / proto message.
    pub field: String,
    /// Human-readable reason.
    pub message: String,
}

impl ValidationError {
    /// Creates an error for `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Every problem found in one input, in the order they were found (never empty).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl ValidationErrors {
    /// The fields named by the errors.
    pub fn fields(&self) -> impl Iterator<Item = &str> {
        self.0.iter().map(|e| e.field.as_str())
    }
}

impl From<ValidationError> for ValidationErrors {
    fn from(e: ValidationError) -> Self {
        Self(vec![e])
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ValidationErrors {}

/// Collects errors while walking an input so that a user sees all of them at once.
#[derive(Debug, Default)]
pub(crate) struct Errors(Vec<ValidationError>);

impl Errors {
    pub(crate) fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError::new(field, message));
    }

    /// Records the error of `r`, if any, and returns its value.
    pub(crate) fn take<T>(&mut self, r: Result<T, ValidationError>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.0.push(e);
                None
            }
        }
    }

    pub(crate) fn finish<T>(self, value: impl FnOnce() -> T) -> Result<T, ValidationErrors> {
        if self.0.is_empty() { Ok(value()) } else { Err(ValidationErrors(self.0)) }
    }

    pub(crate) fn extend(&mut self, errors: Vec<ValidationError>) {
        self.0.extend(errors);
    }

    pub(crate) fn into_vec(self) -> Vec<ValidationError> {
        self.0
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// `error` and its sources joined by `: `, each said once: a message that already quotes its
/// source (`tls.key_file x: Permission denied` over `Permission denied`) is not followed by it
/// again. For errors shown to a person in one line: a binary's exit, a tool's result.
pub fn one_line(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = String::new();
    let mut next = Some(error);
    while let Some(e) = next {
        let text = e.to_string();
        if !line.contains(&text) {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(&text);
        }
        next = e.source();
    }
    line
}

#[cfg(test)]
mod one_line_tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("{field}: {source}")]
    struct Quoting {
        field: &'static str,
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("starting the worker")]
    struct Outer(#[source] Quoting);

    #[test]
    fn a_source_already_quoted_is_not_repeated_and_others_are_joined() {
        let inner = Quoting { field: "tls.key_file", source: std::io::Error::other("Permission denied") };
        assert_eq!(one_line(&inner), "tls.key_file: Permission denied");
        assert_eq!(one_line(&Outer(inner)), "starting the worker: tls.key_file: Permission denied");
    }
}
