//! Tools (being built).
