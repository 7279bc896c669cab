//! A fleet from one source of truth: the shared part of the config (the fleet document) and the
//! edges' reports live in etcd (docs/fleet.md).
//!
//! - [`doc`]: the document, its validation (the file's own) and the diff between two of them.
//! - [`store`]: the key layout and the etcd calls (compare-and-swap writes, history, reports).
//! - [`report`]: what an edge reports, what `fleet status` concludes, the fleet health rule.
//! - [`edge`]: the agent's side: watch, apply, cache, heartbeat.
//! - [`cache`]: the last applied document on local disk, for a start while etcd is down.

pub mod cache;
pub mod doc;
pub mod edge;
pub mod report;
pub mod store;
