//! A spoofed SYN flood against a real TCP listener, with clients the filter has never seen
//! connecting through it: the topology, the flood and one round of clients, shared by
//! `tests/syn_flood.rs` and the benchmark.
//!
//! Network rule: the flood and the clients live in a client namespace and reach a server
//! namespace only over the pair's own veth; the spoofed sources have no route anywhere. Every
//! loop is bounded in frames and time. Test-only settings on the client side, never in the
//! product: a bare `XDP_PASS` program on the client's veth end (a veth delivers frames sent
//! back with `XDP_TX` only to a peer that runs XDP, which the caller attaches) and
//! `ethtool -K ... tx off` (complete checksums, as a real wire delivers them).

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use socket2::{Domain, Socket, Type};

use crate::{
    netns::{Netns, VethPair, run_in},
    pktgen::{PacketSource, Sources},
    program::{cpus, pin_to_cpu},
};

pub const SERVER4: &str = "10.220.0.1";
pub const SERVER6: &str = "fd00:220::1";
pub const PORT: u16 = 8443;
pub const CLIENTS: u8 = 30;
/// Each client's connect must succeed within this.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const FLOOD_TIME: Duration = Duration::from_secs(6);
pub const FLOOD_FRAMES: u64 = 20_000_000;

pub struct Net {
    pub client: Netns,
    pub server: Netns,
    pub veth: VethPair,
}

pub fn client4(i: u8) -> String {
    format!("10.220.1.{i}")
}

/// Each in a /64 of its own: floodwall keys IPv6 sources by /64, so these are 30 sources.
pub fn client6(i: u8) -> String {
    format!("fd00:220:0:{i:x}::2")
}

impl Net {
    pub fn new() -> Result<Net> {
        let client = Netns::new("sync")?;
        let server = Netns::new("syns")?;
        let veth = VethPair::new(
            &client,
            &server,
            "10.220.0.2/16",
            &format!("{SERVER4}/16"),
            "fd00:220::2/48",
            &format!("{SERVER6}/48"),
        )?;
        for i in 1..=CLIENTS {
            veth.add_a_addr(&client, &server, &format!("{}/16", client4(i)))?;
            veth.add_a_addr(&client, &server, &format!("{}/48", client6(i)))?;
        }
        client.exec(&["ethtool", "-K", veth.a_name(), "tx", "off"])?;
        Ok(Net {
            client,
            server,
            veth,
        })
    }
}

/// A SYN from a spoofed address (the packet source rewrites it) to the server's port.
pub fn syn_template(v4: bool) -> Vec<u8> {
    let (src, dst): (IpAddr, IpAddr) = if v4 {
        (
            "10.221.0.1".parse().expect("address"),
            SERVER4.parse().expect("address"),
        )
    } else {
        (
            "fd00:221::1".parse().expect("address"),
            SERVER6.parse().expect("address"),
        )
    };
    crate::frames::tcp_syn(src, dst, PORT)
}

/// Accepts connections until `stop`, echoing one message back on each; returns the peers.
fn serve(listeners: &[TcpListener], stop: &AtomicBool) -> Result<Vec<IpAddr>> {
    let mut peers = Vec::new();
    let deadline = Instant::now() + FLOOD_TIME + Duration::from_secs(10);
    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
        let mut idle = true;
        for l in listeners {
            match l.accept() {
                Ok((mut conn, peer)) => {
                    idle = false;
                    peers.push(peer.ip());
                    conn.set_nonblocking(false)?;
                    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
                    let mut buf = [0u8; 64];
                    if let Ok(n) = conn.read(&mut buf) {
                        let _ = conn.write_all(&buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.into()),
            }
        }
        if idle {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    Ok(peers)
}

/// Connects from `local` within the timeout and checks an echo. Whether it worked.
fn client(local: IpAddr, server: IpAddr) -> bool {
    let attempt = || -> Result<()> {
        let domain = if local.is_ipv4() {
            Domain::IPV4
        } else {
            Domain::IPV6
        };
        let socket = Socket::new(domain, Type::STREAM, None)?;
        socket.bind(&SocketAddr::new(local, 0).into())?;
        socket.connect_timeout(&SocketAddr::new(server, PORT).into(), CONNECT_TIMEOUT)?;
        let mut stream: TcpStream = socket.into();
        stream.set_read_timeout(Some(Duration::from_secs(2)))?;
        stream.write_all(b"hello floodwall")?;
        let mut buf = [0u8; 15];
        stream.read_exact(&mut buf)?;
        ensure!(&buf == b"hello floodwall", "echo garbled");
        Ok(())
    };
    attempt().is_ok()
}

pub struct Round {
    pub connected: usize,
    pub flood_frames: u64,
    pub accepted_spoofed: usize,
    pub secs: f64,
}

/// One flood with every client connecting once during it.
pub fn round(net: &Net, v4: bool) -> Result<Round> {
    let server_ip: IpAddr = if v4 { SERVER4 } else { SERVER6 }.parse()?;
    let listeners = run_in(&net.server, || -> Result<Vec<TcpListener>> {
        let l = TcpListener::bind(SocketAddr::new(server_ip, PORT))?;
        l.set_nonblocking(true)?;
        Ok(vec![l])
    })??;
    // The challenge rewrites SYNs into SYN-ACKs in the sender's own pages: restore each frame.
    let sources = [
        PacketSource::new(&net.client, net.veth.a_name())?.restore_template(true),
        PacketSource::new(&net.client, net.veth.a_name())?.restore_template(true),
    ];
    let template = syn_template(v4);
    let spoofed = if v4 {
        Sources::Random {
            base: "10.221.0.0".parse()?,
            prefix_len: 16,
        }
    } else {
        // Random bits from /32 on: a different /64 (a different source) for nearly every SYN.
        Sources::Random {
            base: "fd00:221::".parse()?,
            prefix_len: 32,
        }
    };
    let stop = AtomicBool::new(false);
    let results = Mutex::new(Vec::new());
    let start = Instant::now();
    let (frames, peers) = std::thread::scope(|s| -> Result<(u64, Vec<IpAddr>)> {
        let server = s.spawn(|| serve(&listeners, &stop));
        let floods: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(cpu, source)| {
                let (template, spoofed) = (&template, spoofed.clone());
                s.spawn(move || -> Result<u64> {
                    pin_to_cpu(cpu % cpus());
                    Ok(source
                        .send(template, spoofed, FLOOD_FRAMES, FLOOD_TIME)?
                        .frames)
                })
            })
            .collect();
        // Clients start once the flood is under way, all at once.
        std::thread::sleep(Duration::from_secs(1));
        let clients: Vec<_> = (1..=CLIENTS)
            .map(|i| {
                let local: IpAddr = if v4 { client4(i) } else { client6(i) }
                    .parse()
                    .expect("address");
                let results = &results;
                let ns = &net.client;
                s.spawn(move || -> Result<()> {
                    let ok = run_in(ns, || client(local, server_ip))?;
                    results
                        .lock()
                        .map_err(|_| anyhow::anyhow!("poisoned"))?
                        .push((local, ok));
                    Ok(())
                })
            })
            .collect();
        for c in clients {
            c.join().map_err(|_| anyhow::anyhow!("client panicked"))??;
        }
        let mut frames = 0;
        for f in floods {
            frames += f.join().map_err(|_| anyhow::anyhow!("flood panicked"))??;
        }
        stop.store(true, Ordering::Relaxed);
        let peers = server
            .join()
            .map_err(|_| anyhow::anyhow!("server panicked"))??;
        Ok((frames, peers))
    })?;
    let results = results
        .into_inner()
        .map_err(|_| anyhow::anyhow!("poisoned"))?;
    let clients: Vec<IpAddr> = results.iter().map(|(a, _)| *a).collect();
    Ok(Round {
        connected: results.iter().filter(|(_, ok)| *ok).count(),
        flood_frames: frames,
        accepted_spoofed: peers.iter().filter(|p| !clients.contains(p)).count(),
        secs: start.elapsed().as_secs_f64(),
    })
}

/// A SYN flood from both CPUs for `time`, from random sources: the frames sent.
pub fn flood(net: &Net, time: Duration) -> Result<u64> {
    let sources = [
        PacketSource::new(&net.client, net.veth.a_name())?.restore_template(true),
        PacketSource::new(&net.client, net.veth.a_name())?.restore_template(true),
    ];
    let template = syn_template(true);
    std::thread::scope(|s| -> Result<u64> {
        let handles: Vec<_> = sources
            .iter()
            .enumerate()
            .map(|(cpu, source)| {
                let template = &template;
                s.spawn(move || -> Result<u64> {
                    pin_to_cpu(cpu % cpus());
                    let spoofed = Sources::Random {
                        base: "10.221.0.0".parse()?,
                        prefix_len: 16,
                    };
                    Ok(source.send(template, spoofed, FLOOD_FRAMES, time)?.frames)
                })
            })
            .collect();
        let mut frames = 0;
        for h in handles {
            frames += h.join().map_err(|_| anyhow::anyhow!("flood panicked"))??;
        }
        Ok(frames)
    })
}
