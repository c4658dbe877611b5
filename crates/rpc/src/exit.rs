//! How a service binary ends on an error: one line an operator reads in `docker logs` or
//! `kubectl logs`, not a "Caused by" block, and exit code 1 so that the orchestrator sees it.

use std::error::Error;
use std::process::ExitCode;

/// `error` and its causes joined by `: `, each said once: a message that already quotes its
/// cause (`tls.ca_file x: Permission denied` over `Permission denied`) is not followed by it again.
pub fn one_line(error: &(dyn Error + 'static)) -> String {
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

/// Ends `main` of service `binary`: success, or `BINARY: <one line>` on stderr and exit code 1.
pub fn exit_code<E: AsRef<dyn Error + Send + Sync + 'static>>(binary: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // stderr, not tracing: the error may be that logging could not be set up.
            eprintln!("{binary}: {}", one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn a_cause_already_quoted_is_not_repeated_and_others_are_joined() {
        let inner = Quoting { field: "tls.key_file", source: std::io::Error::other("Permission denied") };
        assert_eq!(one_line(&inner), "tls.key_file: Permission denied");
        assert_eq!(one_line(&Outer(inner)), "starting the worker: tls.key_file: Permission denied");
    }
}
