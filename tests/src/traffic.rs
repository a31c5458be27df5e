//! Bounded UDP traffic between test namespaces.
//!
//! Sockets are created inside a [`Netns`] (see [`run_in`]); they keep that
//! namespace for their whole life, so packets never leave the test's namespaces.
//! Every loop here is bounded in packets and in time.

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::netns::{Netns, run_in};

/// Hard cap on datagrams sent or collected by one call.
pub const MAX_PACKETS: usize = 1_000_000;
/// Hard cap on the time one call may take.
pub const MAX_DURATION: Duration = Duration::from_secs(30);

/// Creates a UDP socket bound to `addr` inside `ns`.
pub fn udp_socket_in(ns: &Netns, addr: SocketAddr) -> anyhow::Result<UdpSocket> {
    run_in(ns, || UdpSocket::bind(addr))?
        .with_context(|| format!("binding UDP {addr} in {}", ns.name()))
}

/// A UDP socket bound inside a namespace that counts what it receives.
#[derive(Debug)]
pub struct UdpSink {
    socket: UdpSocket,
}

/// Binds a UDP sink on `bind` inside `ns`.
pub fn udp_sink(ns: &Netns, bind: SocketAddr) -> anyhow::Result<UdpSink> {
    Ok(UdpSink {
        socket: udp_socket_in(ns, bind)?,
    })
}

impl UdpSink {
    /// Room for a few thousand small datagrams, so a round sent back to back is never dropped
    /// by a full socket buffer (which would look like the filter's work).
    pub fn grow_rcvbuf(&self) -> anyhow::Result<()> {
        use std::os::fd::AsRawFd as _;
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt on a socket we own, with a c_int value of the right length.
        let rc = unsafe {
            libc::setsockopt(
                self.socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&raw const size).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        anyhow::ensure!(
            rc == 0,
            "SO_RCVBUFFORCE: {}",
            std::io::Error::last_os_error()
        );
        Ok(())
    }

    pub fn local_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// Receives one datagram, waiting at most `timeout` (capped at [`MAX_DURATION`]).
    fn recv_one(
        &self,
        buf: &mut [u8],
        timeout: Duration,
    ) -> anyhow::Result<Option<(SocketAddr, usize)>> {
        let timeout = timeout.clamp(Duration::from_millis(1), MAX_DURATION);
        self.socket.set_read_timeout(Some(timeout))?;
        match self.socket.recv_from(buf) {
            Ok((len, from)) => Ok(Some((from, len))),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => Ok(None),
            Err(e) if e.kind() == ErrorKind::Interrupted => Ok(None),
            Err(e) => Err(e).context("recv_from"),
        }
    }

    /// Counts datagrams received during `duration` (capped at [`MAX_DURATION`]).
    pub fn count_for(&self, duration: Duration) -> anyhow::Result<usize> {
        let deadline = Instant::now() + duration.min(MAX_DURATION);
        let mut buf = vec![0u8; 65536];
        let mut count = 0;
        while count < MAX_PACKETS {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            if self.recv_one(&mut buf, deadline - now)?.is_some() {
                count += 1;
            }
        }
        Ok(count)
    }

    /// Collects `(source, length)` of received datagrams until `idle` passes with
    /// nothing new (or [`MAX_DURATION`] / [`MAX_PACKETS`] is reached).
    pub fn drain(&self, idle: Duration) -> anyhow::Result<Vec<(SocketAddr, usize)>> {
        let deadline = Instant::now() + MAX_DURATION;
        let mut buf = vec![0u8; 65536];
        let mut got = Vec::new();
        while got.len() < MAX_PACKETS {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            match self.recv_one(&mut buf, idle.min(deadline - now))? {
                Some(d) => got.push(d),
                None => break,
            }
        }
        Ok(got)
    }
}

/// Sends `count` datagrams of `payload_len` bytes from a socket bound to `from`
/// (port 0 is fine) inside `ns` to `to`, sleeping `interval` between them.
/// Bounded by [`MAX_PACKETS`] and [`MAX_DURATION`]. Returns how many were sent
/// without error.
pub fn udp_send(
    ns: &Netns,
    from: SocketAddr,
    to: SocketAddr,
    count: usize,
    payload_len: usize,
    interval: Duration,
) -> anyhow::Result<usize> {
    let socket = udp_socket_in(ns, from)?;
    let payload: Vec<u8> = (0..payload_len).map(|i| i as u8).collect();
    let deadline = Instant::now() + MAX_DURATION;
    let mut sent = 0;
    for i in 0..count.min(MAX_PACKETS) {
        if i > 0 && !interval.is_zero() {
            std::thread::sleep(interval.min(deadline.saturating_duration_since(Instant::now())));
        }
        if Instant::now() >= deadline {
            break;
        }
        if socket.send_to(&payload, to).is_ok() {
            sent += 1;
        }
    }
    Ok(sent)
}
