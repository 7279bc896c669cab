//! The anycast agent and CLI as a library: configuration, Maglev tables, the host model of the
//! dataplane's decision, and the code that loads the XDP program and writes its maps.
//!
//! Pure logic ([`config`], [`plan`], the planning half of [`dataplane`]) is tested on
//! the host; everything that needs the kernel sits behind [`dataplane::MapWriter`] or in
//! [`agent`]. The fixture tests use [`dataplane::Dataplane`] (see its module docs).

pub mod agent;
pub mod announce;
pub mod api;
pub mod cli;
pub mod config;
pub mod control;
pub mod dataplane;
pub mod error;
pub mod fleet;
pub mod health;
pub mod host;
pub mod metrics;
pub mod nexthop;
pub mod plan;
pub mod proto;

/// The compiled XDP object.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/anycast"));
