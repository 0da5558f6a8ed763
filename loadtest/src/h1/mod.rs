//! HTTP/1.1: the response parser and the per-connection request loop.

pub mod conn;
pub mod parse;
