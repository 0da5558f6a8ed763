//! Syslog drains (`syslog://`, `syslog+tls://`): octet-counted RFC 5424 frames over one
//! connection kept open between batches.
//!
//! Syslog over TCP has no acknowledgement: a batch is delivered once it is written. Before
//! each batch the connection is checked for the peer having closed it (a receiver never sends
//! anything), so a receiver that went away while the drain was idle costs a reconnection, not
//! the batch; a receiver that dies while a batch is in flight can lose that batch.

use std::time::Duration;

use pier_model::drain::DrainUrl;
use pier_model::platform::LogLine;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::connect::{Connector, DeliveryError, Io};
use crate::format;

/// Longest a batch may take to be written.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// One syslog drain's connection.
pub struct SyslogSink {
    url: DrainUrl,
    conn: Option<Box<dyn Io>>,
}

impl SyslogSink {
    pub fn new(url: DrainUrl) -> Self {
        SyslogSink { url, conn: None }
    }

    /// Writes `lines` of `app`'s log as one run of frames.
    pub async fn send(
        &mut self,
        connector: &Connector,
        app: &str,
        lines: &[LogLine],
    ) -> Result<(), DeliveryError> {
        if let Some(c) = self.conn.as_mut() {
            if peer_closed(c).await {
                self.conn = None;
            }
        }
        let conn = match self.conn.as_mut() {
            Some(c) => c,
            None => self.conn.insert(connector.connect(&self.url).await?),
        };
        let bytes = format::frames(app, lines);
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            conn.write_all(&bytes).await?;
            conn.flush().await
        })
        .await;
        match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => {
                self.conn = None;
                Err(DeliveryError::Write(e.to_string()))
            }
            Err(_) => {
                self.conn = None;
                Err(DeliveryError::Timeout(WRITE_TIMEOUT, "writing a batch"))
            }
        }
    }
}

/// Whether the peer closed the connection (or broke it): a read that is ready at once. Data a
/// receiver sent is read and ignored.
async fn peer_closed(conn: &mut Box<dyn Io>) -> bool {
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(Duration::ZERO, conn.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}
