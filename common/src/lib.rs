//! Pieces shared by every sluice program: the RESP codec, slot hashing, the metadata model and
//! the broker's HTTP API types.

pub mod api;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod model;
pub mod resp;
pub mod slot;
