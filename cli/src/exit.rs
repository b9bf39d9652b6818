//! Exit codes, the one thing a CI script branches on. The table is the
//! contract (`flotilla deploy --help` and docs/operations.md repeat it);
//! this module only maps deployment states and errors onto it.

use std::process::ExitCode;

use crate::client::ApiError;

/// The deployment succeeded, or the command did what it was asked.
pub const SUCCESS: u8 = 0;
/// The CLI could not do it: connection, authentication, a bad argument, an unknown id.
pub const ERROR: u8 = 1;
/// Usage error (clap's own code).
pub const USAGE: u8 = 2;
/// The deployment failed (also: `ping` reached not every host).
pub const FAILED: u8 = 3;
/// The deployment was rolled back.
pub const ROLLED_BACK: u8 = 4;
/// The deployment was cancelled.
pub const CANCELLED: u8 = 5;
/// The coordinator refused (gRPC `FailedPrecondition`): another deployment is
/// active and `--queue` was not given, no host matches, nothing to promote,
/// …; or the deployment ended `blocked` by a deploy gate.
pub const REFUSED: u8 = 6;
/// `--wait` was interrupted (Ctrl-C); the deployment goes on.
pub const INTERRUPTED: u8 = 130;

/// States in which a deployment has ended and will not change again.
pub fn is_final(state: &str) -> bool {
    matches!(
        state,
        "succeeded" | "failed" | "rolled_back" | "cancelled" | "blocked"
    )
}

/// The exit code for a deployment that ended in `state`. A final state this
/// CLI does not know yet counts as a failure, never as a success.
pub fn for_state(state: &str) -> u8 {
    match state {
        "succeeded" => SUCCESS,
        "rolled_back" => ROLLED_BACK,
        "cancelled" => CANCELLED,
        // A gate (Flagsmith, a freeze window) refused it before anything ran.
        "blocked" => REFUSED,
        _ => FAILED,
    }
}

/// The exit code for an error that ended the command.
pub fn for_error(err: &anyhow::Error) -> u8 {
    let refused = err
        .chain()
        .filter_map(|e| e.downcast_ref::<ApiError>())
        .any(|e| e.code == tonic::Code::FailedPrecondition);
    if refused { REFUSED } else { ERROR }
}

pub fn code(n: u8) -> ExitCode {
    ExitCode::from(n)
}

#[cfg(test)]
mod tests;
