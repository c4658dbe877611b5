//! The client side of the Nightshift event service: what services and the CLI need to publish
//! events and read them back, without the event logs (Redis, NATS) or the consumers (sink,
//! alerts) of the server crate `nightshift-events`.
//!
//! - [`EventPublisher`] (with [`EventBuilder`] and [`PublisherOptions`]): fire-and-forget,
//!   bounded publishing that never fails the caller.
//! - [`tail`] ([`TailOptions`], [`TailFrom`], [`EventFilter`]): history and/or the live stream,
//!   as `nightshift events tail` prints it.
//! - Conversions: [`json_to_struct`] / [`struct_to_json`] for event `data`, [`event_to_json`]
//!   (one JSON object per event), [`filter_to_pb`], and the ListEvents page-token format
//!   ([`page_token_after`], [`cursor_from_page_token`]) shared with the event service.
//!
//! The manager, scheduler and worker depend on this crate, not on the server; the server
//! depends on it for the types and formats both sides share.

mod convert;
mod filter;
mod publisher;
mod tail;

pub use convert::{
    cursor_from_page_token, event_to_json, filter_to_pb, json_to_struct, page_token_after, struct_to_json,
};
pub use filter::EventFilter;
pub use publisher::{EventBuilder, EventPublisher, PublisherOptions};
pub use tail::{TailFrom, TailOptions, tail};
