//! A pseudo-terminal for a one-off process (`pier run` from a terminal): the master side read
//! and written without blocking, the slave side handed to the process.

use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::fs::OpenOptionsExt;

use rustix::pty::{grantpt, openpt, ptsname, unlockpt, OpenptFlags};
use rustix::termios::{tcgetattr, tcsetattr, tcsetwinsize, LocalModes, OptionalActions, Winsize};
use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

/// The master side of a pseudo-terminal.
pub struct Master {
    fd: AsyncFd<OwnedFd>,
}

/// Opens a pseudo-terminal of `cols` × `rows`, echo off (the process turns it on once
/// released). The slave is owned by `uid` when given, so the process may reopen it.
pub fn open(cols: u16, rows: u16, uid: Option<u32>) -> io::Result<(Master, File)> {
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY)?;
    grantpt(&master)?;
    unlockpt(&master)?;
    let name = ptsname(&master, Vec::new())?;
    let path = name
        .to_str()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "pty name is not UTF-8"))?
        .to_string();
    let slave = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)?;
    if let Some(uid) = uid {
        std::os::unix::fs::chown(&path, Some(uid), None)?;
    }
    tcsetwinsize(&slave, size(cols, rows))?;
    let mut t = tcgetattr(&slave)?;
    t.local_modes.remove(LocalModes::ECHO);
    tcsetattr(&slave, OptionalActions::Now, &t)?;
    rustix::io::ioctl_fionbio(&master, true)?;
    rustix::io::fcntl_setfd(&master, rustix::io::FdFlags::CLOEXEC)?;
    // `new` is deprecated for types whose descriptor may change under tokio; an `OwnedFd`
    // owns one descriptor for its whole life (and `register`, the replacement, is unsafe).
    #[allow(deprecated)]
    let fd = AsyncFd::new(master)?;
    Ok((Master { fd }, slave))
}

fn size(cols: u16, rows: u16) -> Winsize {
    Winsize {
        ws_col: cols.max(1),
        ws_row: rows.max(1),
        ws_xpixel: 0,
        ws_ypixel: 0,
    }
}

impl Master {
    /// Reads what the process wrote. `Ok(0)` once every slave side is closed (Linux answers
    /// EIO then).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.fd.ready(Interest::READABLE).await?;
            match guard
                .try_io(|fd| rustix::io::read(fd.get_ref(), &mut *buf).map_err(io::Error::from))
            {
                Ok(Ok(n)) => return Ok(n),
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` to the process's terminal, waiting while it is full.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.fd.ready(Interest::WRITABLE).await?;
            match guard.try_io(|fd| rustix::io::write(fd.get_ref(), data).map_err(io::Error::from))
            {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Sets the terminal's size (the process gets SIGWINCH).
    pub fn resize(&self, cols: u16, rows: u16) -> io::Result<()> {
        tcsetwinsize(self.fd.get_ref(), size(cols, rows)).map_err(io::Error::from)
    }
}
