//! Generated gRPC and protobuf code for Flotilla; nothing else lives here.
//!
//! `command.proto` is the signed envelope, `agent.proto` the agent link,
//! `fleet.proto` the operator API.

#[allow(clippy::all, clippy::pedantic)]
pub mod v1 {
    tonic::include_proto!("flotilla.v1");
}
