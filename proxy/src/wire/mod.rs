//! The Postgres wire protocol as far as the proxy needs it: framing of tagged messages (without
//! decoding them), the untagged startup packets, and the few messages the proxy writes itself.

pub mod authored;
pub mod frame;
pub mod startup;
