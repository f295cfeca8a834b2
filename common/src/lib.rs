//! Pieces shared by every sluice program: the RESP codec, slot hashing and the metadata model.

pub mod model;
pub mod resp;
pub mod slot;
