//! The commands, one file per family: each parses its arguments into a
//! typed form, has the engine plan the change, has the server check and
//! apply it, and turns the result into a reply.
//!
//! `table` is the one record of every command. Commands that write (their
//! flags say `write`) run through `server::write_command`, which pays the
//! writes the keyspace owes the tag sets before and after them.

pub mod args;
pub mod info;
pub mod lease;
pub mod link;
pub mod table;
pub mod tag;
pub mod version;

pub use table::table;
