//! Root tests of the namespace and traffic helpers themselves.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, ensure};
use floodwall_tests::netns::{BpffsDir, Netns, StateDir, VethPair};
use floodwall_tests::traffic::{udp_send, udp_sink};

fn netns_list() -> anyhow::Result<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn addr(s: &str) -> anyhow::Result<SocketAddr> {
    s.parse().with_context(|| format!("bad address {s}"))
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn udp_over_veth_v4_and_v6() -> anyhow::Result<()> {
    let a = Netns::new("ha")?;
    let b = Netns::new("hb")?;
    let veth = VethPair::new(
        &a,
        &b,
        "10.201.0.2/24",
        "10.201.0.1/24",
        "fd00:201::2/64",
        "fd00:201::1/64",
    )?;
    veth.add_a_addr(&a, &b, "10.201.0.3/24")?;
    veth.add_a_addr(&a, &b, "fd00:201::3/64")?;

    let sink4 = udp_sink(&b, addr("10.201.0.1:9000")?)?;
    let sink6 = udp_sink(&b, addr("[fd00:201::1]:9000")?)?;

    for (from, to, sink) in [
        ("10.201.0.2:0", "10.201.0.1:9000", &sink4),
        ("10.201.0.3:0", "10.201.0.1:9000", &sink4),
        ("[fd00:201::2]:0", "[fd00:201::1]:9000", &sink6),
        ("[fd00:201::3]:0", "[fd00:201::1]:9000", &sink6),
    ] {
        let from = addr(from)?;
        let sent = udp_send(&a, from, addr(to)?, 50, 100, Duration::ZERO)?;
        ensure!(sent == 50, "{from}: sent {sent} of 50");
        let got = sink.drain(Duration::from_millis(500))?;
        ensure!(got.len() == 50, "{from}: received {} of 50", got.len());
        let sources: HashSet<_> = got.iter().map(|(src, _)| src.ip()).collect();
        ensure!(
            sources == HashSet::from([from.ip()]),
            "{from}: sources {sources:?}"
        );
        ensure!(got.iter().all(|(_, len)| *len == 100), "wrong lengths");
    }

    // Nothing of this exists in the root namespace.
    let root_links = std::process::Command::new("ip")
        .args(["-o", "link"])
        .output()?;
    let root_links = String::from_utf8_lossy(&root_links.stdout);
    ensure!(!root_links.contains(veth.a_name()) && !root_links.contains(veth.b_name()));

    let names = [a.name().to_owned(), b.name().to_owned()];
    drop(veth);
    drop(a);
    drop(b);
    let list = netns_list()?;
    for n in names {
        ensure!(!list.contains(&n), "{n} left over: {list}");
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn panic_still_removes_namespaces() -> anyhow::Result<()> {
    let names = Arc::new(Mutex::new(Vec::<String>::new()));
    let names2 = Arc::clone(&names);
    let joined = std::thread::spawn(move || -> anyhow::Result<()> {
        let a = Netns::new("pa")?;
        let b = Netns::new("pb")?;
        let _veth = VethPair::new(
            &a,
            &b,
            "10.202.0.1/24",
            "10.202.0.2/24",
            "fd00:202::1/64",
            "fd00:202::2/64",
        )?;
        let _bpffs = BpffsDir::new()?;
        names2
            .lock()
            .map_err(|_| anyhow::anyhow!("poisoned"))?
            .extend([a.name().to_owned(), b.name().to_owned()]);
        let list = netns_list()?;
        assert!(list.contains(a.name()), "namespace not created");
        panic!("deliberate panic inside a test");
    })
    .join();
    ensure!(joined.is_err(), "thread should have panicked");
    let names = names.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    ensure!(names.len() == 2, "namespaces were not created");
    let list = netns_list()?;
    for n in names.iter() {
        ensure!(
            !list.contains(n.as_str()),
            "{n} left over after panic: {list}"
        );
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn bpffs_and_state_dir_are_removed() -> anyhow::Result<()> {
    let ns = Netns::new("fs")?;
    let bpffs = BpffsDir::new()?;
    let state = StateDir::new()?;
    let (bpf_path, state_path) = (bpffs.path().to_owned(), state.path().to_owned());
    std::fs::write(state_path.join("x"), b"x")?;
    // The bpffs is visible inside `ip netns exec` (which remounts /sys).
    let out = ns.exec(&["stat", "-f", "-c", "%T", &bpf_path.to_string_lossy()])?;
    let fstype = String::from_utf8_lossy(&out.stdout);
    ensure!(fstype.trim() == "bpf_fs", "fs type inside netns: {fstype}");
    drop(bpffs);
    drop(state);
    ensure!(!bpf_path.exists(), "{bpf_path:?} left over");
    ensure!(!state_path.exists(), "{state_path:?} left over");
    Ok(())
}
