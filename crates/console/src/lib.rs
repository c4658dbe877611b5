//! The Nightshift console: a web UI for agents, runs and events.
//!
//! Server-rendered HTML ([maud] templates, which escape every value), one small script of our
//! own (`assets/console.js`: local times, live run timelines and the event tail over
//! Server-Sent Events), one stylesheet; all embedded in the binary, so building it needs no
//! JavaScript toolchain and the pages work without the script except for live updates.
//!
//! The console reads and acts only through the services' gRPC APIs, with the signed-in user's
//! own credential on every call: roles and namespaces are enforced by the services, and the
//! console works the same in `nightshift dev` (mounted on the one port) and in a deployment (its
//! own `nightshift-console` process). Its role is built like every other:
//! [`ConsoleConfig`] → [`ConsoleRole::build`] → mount / run.
mod backend;
mod config;
mod error;
mod live;
mod metrics;
mod oidc;
mod pages;
mod role;
mod session;
mod view;

pub use config::{ConsoleConfig, OidcLogin};
pub use error::ConsoleError;
pub use role::ConsoleRole;
