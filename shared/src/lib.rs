//! Code both Flotilla daemons (and the CLI) share: validated names, the signed
//! command envelope, TLS configuration, telemetry setup and shutdown signals.
//!
//! Nothing here talks to the network or to sled; those belong to `server` and `agent`.

pub mod appspec;
pub mod backoff;
pub mod health;
pub mod names;
pub mod ops;
pub mod sealed;
pub mod secret;
pub mod sentry;
pub mod shutdown;
pub mod signing;
pub mod telemetry;
pub mod time;
pub mod tls;
pub mod token;

pub use names::{
    AppName, ConfigKey, Domain, EmailAddress, EnvName, HostId, ImageRef, Labels, LinkAlias,
    NameError, ServiceName, TenantName,
};
