//! The event service (being built).
