use anyhow::Context as _;

use super::*;
use crate::client::explain;

#[test]
fn final_states_map_to_their_codes() {
    for (state, code) in [
        ("succeeded", SUCCESS),
        ("failed", FAILED),
        ("rolled_back", ROLLED_BACK),
        ("cancelled", CANCELLED),
        // A final state from a newer coordinator is never a success.
        ("exploded", FAILED),
    ] {
        assert_eq!(for_state(state), code, "{state}");
    }
    for state in ["succeeded", "failed", "rolled_back", "cancelled"] {
        assert!(is_final(state), "{state}");
    }
    for state in [
        "queued",
        "running",
        "paused",
        "awaiting_promotion",
        "rolling_back",
    ] {
        assert!(!is_final(state), "{state}");
    }
}

#[test]
fn refusals_exit_6_everything_else_1() {
    let check = |status: tonic::Status, expected: u8| {
        let err = explain(status);
        assert_eq!(for_error(&err), expected, "{err}");
        // Context added on the way up does not hide the code.
        let wrapped = Err::<(), _>(err).context("deploy shop").unwrap_err();
        assert_eq!(for_error(&wrapped), expected, "{wrapped:#}");
    };
    check(
        tonic::Status::failed_precondition("deployment d1 is still in progress"),
        REFUSED,
    );
    check(tonic::Status::not_found("no deployment d9"), ERROR);
    check(tonic::Status::permission_denied("viewer"), ERROR);
    check(tonic::Status::unauthenticated("bad token"), ERROR);
    check(tonic::Status::unavailable("restarting"), ERROR);
    check(tonic::Status::invalid_argument("batch 0"), ERROR);
    assert_eq!(for_error(&anyhow::anyhow!("cannot connect")), ERROR);
}

#[test]
fn refusal_message_keeps_the_servers_reason() {
    let err = explain(tonic::Status::failed_precondition(
        "deployment d1 is still in progress",
    ));
    assert_eq!(
        err.to_string(),
        "refused: deployment d1 is still in progress"
    );
}
