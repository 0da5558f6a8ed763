//! HTTP/1.x on the wire: strict head parsing ([`head`]) and message framing ([`framing`]).

pub mod framing;
pub mod head;
