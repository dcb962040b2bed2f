//! `veneer-cache-node`: a node of Veneer's sharded cache tier. It speaks RESP (the Redis protocol),
//! so the proxy's Redis client reaches it and so do the tools people point at a cache; it keeps
//! entries in a byte-bounded store ([`store`]) and can keep them across restarts ([`snapshot`]).

pub mod commands;
mod glob;
pub mod resp;
pub mod server;
pub mod snapshot;
pub mod store;
