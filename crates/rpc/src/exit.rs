//! How a service binary ends on an error: one line an operator reads in `docker logs` or
//! `kubectl logs`, not a "Caused by" block, and exit code 1 so that the orchestrator sees it.

use std::error::Error;
use std::process::ExitCode;

/// Ends `main` of service `binary`: success, or `BINARY: <one line>` on stderr and exit code 1
/// (the chain in [`nightshift_core::one_line`]'s form).
pub fn exit_code<E: AsRef<dyn Error + Send + Sync + 'static>>(binary: &str, result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // stderr, not tracing: the error may be that logging could not be set up.
            eprintln!("{binary}: {}", nightshift_core::one_line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}
