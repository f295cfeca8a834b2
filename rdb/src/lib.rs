//! The pieces of slot-filtered replication: a proxy connects to its own Redis node as a
//! replica ([`ReplicaLink`]), reads the full-sync snapshot item by item ([`RdbReader`]), keeps
//! the keys of the slots it wants and writes them elsewhere with
//! `RESTORE key <abs-ttl> <payload> ABSTTL REPLACE` ([`Entry::dump_payload`]), then follows
//! the replication command stream ([`ReplicaLink::next_command`]).
//!
//! Why our own reader: the crates.io `rdb` crate decodes every value into vectors of elements
//! through a blocking `Read` and keeps neither the raw bytes nor their offsets, so a value
//! could not be passed to `RESTORE` without re-encoding it (and streams are not covered).
//! Walking the encodings only to find where each value ends is far less code than
//! re-encoding them, and lets the reader be incremental and sans-IO over a socket buffer.
//!
//! ```no_run
//! # async fn example() -> Result<(), sluice_rdb::LinkError> {
//! use sluice_rdb::{Event, ReplicaLink};
//! let mut link = ReplicaLink::connect("127.0.0.1:6379", None, 7000).await?;
//! let mut version = 0;
//! while let Some(event) = link.next_event().await? {
//!     match event {
//!         Event::Header { version: v } => version = v,
//!         Event::Entry(e) => {
//!             let _payload = e.dump_payload(version); // RESTORE e.key ttl payload ABSTTL REPLACE
//!         }
//!         _ => {}
//!     }
//! }
//! loop {
//!     let cmd = link.next_command().await?; // acks go out on their own meanwhile
//!     println!("{} at offset {}", cmd.name(), cmd.offset);
//! }
//! # }
//! ```
//!
//! Modules: `crc64` (Redis's checksum), `format` (lengths, strings, constants), `walk` (the
//! resumable value walker), `reader` and `event` (the parser and what it yields), `link` (the
//! replica connection).

pub mod crc64;
mod error;
mod event;
mod format;
pub mod link;
mod lzf;
mod reader;
mod walk;

pub use error::RdbError;
pub use event::{wrap_payload, Entry, Event, Function};
pub use format::{module_type_name, opcode, type_name, value_type, MAX_RDB_VERSION};
pub use link::{LinkError, LinkOptions, ReplCommand, ReplicaLink, Transfer};
pub use reader::{RdbReader, DEFAULT_MAX_ITEM_SIZE};
