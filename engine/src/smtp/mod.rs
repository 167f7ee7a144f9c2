//! SMTP protocol machines: the inbound session, the outbound client, and their shared
//! grammar pieces. No sockets here.

pub mod addr;
pub mod auth;
pub mod client;
pub mod data;
pub mod headers;
pub mod merge;
pub mod mime;
pub mod proxy;
pub mod reply;
pub mod server;
pub mod sink;
