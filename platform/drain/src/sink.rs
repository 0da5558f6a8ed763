//! Where a drain's batches go: a syslog connection or an HTTP endpoint.

use pier_model::drain::DrainUrl;
use pier_model::platform::LogLine;

use crate::connect::{Connector, DeliveryError};
use crate::http::HttpSink;
use crate::syslog::SyslogSink;

/// One drain's delivery end, holding its connection between batches.
pub enum Sink {
    Syslog(SyslogSink),
    Http(HttpSink),
}

impl Sink {
    pub fn new(url: DrainUrl, drain_id: &str) -> Self {
        if url.kind.http() {
            Sink::Http(HttpSink::new(url, drain_id))
        } else {
            Sink::Syslog(SyslogSink::new(url))
        }
    }

    /// Delivers `lines` of `app`'s log, in order; an error means the batch may not have
    /// arrived and is to be sent again.
    pub async fn send(
        &mut self,
        connector: &Connector,
        app: &str,
        lines: &[LogLine],
    ) -> Result<(), DeliveryError> {
        match self {
            Sink::Syslog(s) => s.send(connector, app, lines).await,
            Sink::Http(h) => h.send(connector, app, lines).await,
        }
    }
}
