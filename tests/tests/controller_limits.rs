//! The controller at its limits: a full list map, a user without privileges, a pin directory
//! that is not on bpffs. Each must fail with a status and a message that say what to do, and
//! change nothing: not the lists (in the state file or in the kernel), not the limits, not the
//! attachments. And `status` names the kernel's id of the program.
//!
//! Each test makes its own namespaces (a veth end in "host" for `attach` to attach to), bpffs
//! and state directory, all removed on drop. No traffic is sent.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, ensure};
use floodwall_tests::cli::{
    COMMAND_TIMEOUT, Floodwall, Host, check_code, floodwall_bin, wait_output,
};
use serde_json::{Value, json};

/// `nobody`, with no capabilities at all.
const UNPRIVILEGED: [&str; 5] = [
    "setpriv",
    "--reuid=65534",
    "--regid=65534",
    "--clear-groups",
    "--inh-caps=-all",
];

/// The kernel's view: the id of the XDP program on [`Host::iface`], if any.
fn xdp_prog_id(host: &Host) -> Result<Option<u64>> {
    let out = host
        .ns
        .exec(&["ip", "-d", "-o", "link", "show", "dev", host.iface()])?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    while let Some(word) = words.next() {
        if word.starts_with("prog/xdp") {
            ensure!(
                words.next() == Some("id"),
                "unexpected `ip link` output: {text}"
            );
            let id = words.next().context("no program id")?;
            return Ok(Some(id.parse().with_context(|| format!("id {id:?}"))?));
        }
    }
    ensure!(
        !text.contains(" xdp"),
        "`ip link` shows XDP without a program id: {text}"
    );
    Ok(None)
}

/// What a refused command must leave alone: both lists (exit status and entries, without the
/// `ttl_left_secs` that ticks by itself), the limits, `status --json` (minus the fill of maps
/// that only traffic changes), and the XDP program on the interface.
#[derive(Debug, PartialEq)]
struct Snapshot {
    block: (Option<i32>, Value),
    allow: (Option<i32>, Value),
    limits: (Option<i32>, Value),
    status: Value,
    xdp: Option<u64>,
}

fn without_ttl_left(mut list: Value) -> Value {
    if let Some(items) = list.as_array_mut() {
        for item in items {
            if let Some(obj) = item.as_object_mut() {
                obj.remove("ttl_left_secs");
            }
        }
    }
    list
}

fn snapshot(host: &Host, fw: &Floodwall<'_>) -> Result<Snapshot> {
    let read = |args: &[&str]| -> Result<(Option<i32>, Value)> {
        let out = fw.run(args)?;
        let value = if out.status.success() {
            without_ttl_left(
                serde_json::from_slice(&out.stdout)
                    .with_context(|| format!("{args:?} is not JSON"))?,
            )
        } else {
            Value::Null
        };
        Ok((out.status.code(), value))
    };
    let mut status = fw.status_json()?;
    if let Some(maps) = status.get_mut("maps").and_then(Value::as_array_mut) {
        maps.retain(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("ALLOW") || n.starts_with("BLOCK"))
        });
    }
    Ok(Snapshot {
        block: read(&["block", "list", "--json"])?,
        allow: read(&["allow", "list", "--json"])?,
        limits: read(&["limit", "show", "--json"])?,
        status,
        xdp: xdp_prog_id(host)?,
    })
}

/// Fails unless `stderr` holds every one of `needles`.
fn says(what: &str, stderr: &str, needles: &[&str]) -> Result<()> {
    for needle in needles {
        ensure!(
            stderr.contains(needle),
            "{what}: stderr lacks {needle:?}: {stderr}"
        );
    }
    Ok(())
}

/// Runs `cmd` (a floodwall command line, built by the caller), expects exit status `code` and
/// every one of `needles` in stderr, and nothing changed.
fn refused(
    host: &Host,
    fw: &Floodwall<'_>,
    what: &str,
    cmd: Command,
    code: i32,
    needles: &[&str],
) -> Result<()> {
    let before = snapshot(host, fw)?;
    let mut cmd = cmd;
    let child = cmd
        .spawn()
        .with_context(|| format!("starting {what}: {cmd:?}"))?;
    let out = wait_output(child, COMMAND_TIMEOUT).with_context(|| what.to_owned())?;
    let stderr = check_code(&[what], &out, code)?;
    says(what, &stderr, needles)?;
    let after = snapshot(host, fw)?;
    ensure!(
        before == after,
        "{what} changed state:\nbefore {before:#?}\nafter {after:#?}"
    );
    Ok(())
}

/// `floodwall ARGS...` as the test's own user (root).
fn as_root(fw: &Floodwall<'_>, args: &[&str]) -> Command {
    fw.command(args)
}

fn map_fill(status: &Value, name: &str) -> Option<(u64, u64)> {
    let map = status["maps"]
        .as_array()?
        .iter()
        .find(|m| m["name"] == name)?;
    Some((map["entries"].as_u64()?, map["capacity"].as_u64()?))
}

fn block_cidrs(fw: &Floodwall<'_>) -> Result<BTreeSet<String>> {
    fw.json(&["block", "list", "--json"])?
        .as_array()
        .context("block list --json is not an array")?
        .iter()
        .map(|e| {
            e["cidr"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("entry without cidr: {e}"))
        })
        .collect()
}

/// `192.0.2.<first>` .. `192.0.2.<first + count - 1>`.
fn hosts(first: u8, count: u8) -> Vec<String> {
    (first..first + count)
        .map(|i| format!("192.0.2.{i}"))
        .collect()
}

fn args_with<'a>(head: &[&'a str], tail: &'a [String]) -> Vec<&'a str> {
    head.iter()
        .copied()
        .chain(tail.iter().map(String::as_str))
        .collect()
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_full_list_map_refuses_the_whole_change() -> Result<()> {
    let host = Host::new("lim")?;
    let fw = host.floodwall()?;
    let config = fw.state_dir().join("small.toml");
    std::fs::write(&config, "[capacity]\nblock_hosts = 16\nblock_nets = 4\n")?;
    fw.ok(&[
        "attach",
        host.iface(),
        "--mode",
        "native",
        "--config",
        &config.to_string_lossy(),
    ])?;
    let status = fw.json(&["status", "--json"])?;
    for (name, capacity) in [
        ("BLOCK4_HOST", 16),
        ("BLOCK6_HOST", 16),
        ("BLOCK4_NET", 4),
        ("BLOCK6_NET", 4),
    ] {
        ensure!(
            map_fill(&status, name) == Some((0, capacity)),
            "{name} after attach: {status}"
        );
    }
    fw.ok(&["allow", "add", "198.51.100.0/24"])?;
    fw.ok(&["limit", "set", "--pps", "77"])?;
    let first = hosts(1, 10);
    fw.ok(&args_with(&["block", "add", "--comment", "first"], &first))?;
    let nets = ["10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "10.4.0.0/16"];
    fw.ok(&args_with(&["block", "add"], &nets.map(str::to_owned)))?;

    let hosts_full = [
        "the blocklist is full",
        "BLOCK4_HOST",
        "16 entries",
        "block_hosts",
        "[capacity]",
        "floodwall detach --all",
    ];
    let nets_full = [
        "the blocklist is full",
        "BLOCK4_NET",
        "4 entries",
        "block_nets",
    ];

    // An import of 10 more hosts into 6 free slots: a runtime limit (exit 1), none applied,
    // neither from a file nor from stdin (the batch update that failed half-way is undone).
    let mut more = String::new();
    for i in 1..=10 {
        writeln!(more, "203.0.113.{i}")?;
    }
    let file = fw.state_dir().join("more.txt");
    std::fs::write(&file, &more)?;
    let file = file.to_string_lossy().into_owned();
    refused(
        &host,
        &fw,
        "block import FILE",
        as_root(&fw, &["block", "import", &file]),
        1,
        &hosts_full,
    )?;
    let before = snapshot(&host, &fw)?;
    let out = fw.run_with_stdin(&["block", "import", "-"], Some(more.as_bytes()))?;
    let stderr = check_code(&["block", "import", "-"], &out, 1)?;
    says("block import -", &stderr, &hosts_full)?;
    ensure!(
        snapshot(&host, &fw)? == before,
        "a refused stdin import changed state"
    );

    // The same for `block add` crossing the limit, also when the entries that fit went to
    // other maps first (hosts are inserted before prefixes, and undone).
    let seven: Vec<String> = (1..=7).map(|i| format!("203.0.113.{i}")).collect();
    refused(
        &host,
        &fw,
        "block add (7 hosts)",
        as_root(&fw, &args_with(&["block", "add"], &seven)),
        1,
        &hosts_full,
    )?;
    refused(
        &host,
        &fw,
        "block add (hosts and a 5th prefix)",
        as_root(
            &fw,
            &["block", "add", "203.0.113.1", "2001:db8::1", "10.5.0.0/16"],
        ),
        1,
        &nets_full,
    )?;
    let v6_nets: Vec<String> = (1..=5).map(|i| format!("2001:db8:{i}::/48")).collect();
    refused(
        &host,
        &fw,
        "block add (5 IPv6 prefixes)",
        as_root(&fw, &args_with(&["block", "add"], &v6_nets)),
        1,
        &[
            "the blocklist is full",
            "BLOCK6_NET",
            "4 entries",
            "block_nets",
        ],
    )?;

    // State and kernel still hold exactly the first entries.
    let mut expected: BTreeSet<String> = first.iter().cloned().collect();
    expected.extend(nets.map(str::to_owned));
    let cidrs = block_cidrs(&fw)?;
    ensure!(cidrs == expected, "blocklist after refusals: {cidrs:?}");
    let status = fw.json(&["status", "--json"])?;
    for (name, entries) in [
        ("BLOCK4_HOST", 10),
        ("BLOCK6_HOST", 0),
        ("BLOCK4_NET", 4),
        ("BLOCK6_NET", 0),
    ] {
        ensure!(
            map_fill(&status, name).map(|f| f.0) == Some(entries),
            "{name} should hold {entries}: {status}"
        );
    }

    // The limit is exact: the kernel takes the 16th host and refuses the 17th (the hash map
    // is BPF_F_NO_PREALLOC, which counts its elements; it accepts none beyond max_entries).
    fw.ok(&args_with(&["block", "add"], &hosts(11, 6)))?;
    let status = fw.json(&["status", "--json"])?;
    ensure!(
        map_fill(&status, "BLOCK4_HOST") == Some((16, 16)) && status["lists"]["block"] == 20,
        "after filling up: {status}"
    );
    refused(
        &host,
        &fw,
        "block add (17th host)",
        as_root(&fw, &["block", "add", "192.0.2.17"]),
        1,
        &hosts_full,
    )?;
    // Replacing an entry needs no room, even in a full map...
    fw.ok(&["block", "add", "192.0.2.1", "--comment", "refreshed"])?;
    let list = fw.json(&["block", "list", "--json"])?;
    let refreshed = list
        .as_array()
        .and_then(|a| a.iter().find(|e| e["cidr"] == "192.0.2.1"))
        .context("192.0.2.1 missing")?;
    ensure!(refreshed["comment"] == "refreshed", "{refreshed}");
    // ...but one that comes with a new entry is undone with it: its comment stays "first".
    refused(
        &host,
        &fw,
        "block add (a replacement and a new host)",
        as_root(
            &fw,
            &[
                "block",
                "add",
                "192.0.2.2",
                "192.0.2.18",
                "--comment",
                "lost",
            ],
        ),
        1,
        &hosts_full,
    )?;
    let status = fw.json(&["status", "--json"])?;
    ensure!(
        map_fill(&status, "BLOCK4_HOST") == Some((16, 16)),
        "BLOCK4_HOST at the end: {status}"
    );
    Ok(())
}

/// `floodwall ARGS...` as `nobody` without capabilities, inside the namespace, with `fw`'s
/// environment.
fn unprivileged(host: &Host, fw: &Floodwall<'_>, args: &[&str]) -> Result<Command> {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", host.ns.name()])
        .args(UNPRIVILEGED)
        .arg(floodwall_bin()?)
        .args(args)
        .env("FLOODWALL_BPFFS", fw.pin_dir())
        .env("FLOODWALL_STATE_DIR", fw.state_dir())
        .env("FLOODWALL_CONFIG", fw.config_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    Ok(cmd)
}

const NEEDS_ROOT: [&str; 4] = [
    "permission denied",
    "needs root",
    "CAP_BPF",
    "CAP_NET_ADMIN",
];

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn without_privileges_every_command_says_it_needs_root() -> Result<()> {
    let host = Host::new("lim")?;
    let iface = host.iface();
    let fw = host.floodwall()?;

    // Before anything is loaded: no attach, no pins.
    refused(
        &host,
        &fw,
        "attach as nobody",
        unprivileged(&host, &fw, &["attach", iface])?,
        1,
        &NEEDS_ROOT,
    )?;
    ensure!(
        !fw.pin_dir().join("prog").exists(),
        "an unprivileged attach left the program pinned"
    );

    fw.ok(&["attach", iface, "--mode", "native"])?;
    fw.ok(&["block", "add", "192.0.2.1", "--comment", "seed"])?;
    fw.ok(&["allow", "add", "198.51.100.0/24"])?;
    fw.ok(&["limit", "set", "--pps", "77"])?;
    ensure!(xdp_prog_id(&host)?.is_some(), "attach did not attach");

    let import = fw.state_dir().join("list.txt");
    std::fs::write(&import, "203.0.113.1\n")?;
    std::fs::set_permissions(&import, std::fs::Permissions::from_mode(0o644))?;
    let import = import.to_string_lossy().into_owned();
    let commands: [&[&str]; 18] = [
        &["status"],
        &["status", "--json"],
        &["block", "add", "192.0.2.2"],
        &["block", "del", "192.0.2.1"],
        &["block", "flush"],
        &["block", "import", &import],
        &["block", "list"],
        &["allow", "add", "192.0.2.3"],
        &["limit", "set", "--pps", "5"],
        &["limit", "show"],
        &["attach", iface],
        &["attach", "lo"],
        &["detach", iface],
        &["detach", "--all"],
        &["stats"],
        &["top"],
        &["reload"],
        &["run", iface],
    ];
    for args in commands {
        refused(
            &host,
            &fw,
            &format!("{args:?} as nobody"),
            unprivileged(&host, &fw, args)?,
            1,
            &NEEDS_ROOT,
        )?;
    }

    // With the bpffs mount closed to others, as systemd mounts /sys/fs/bpf (mode 0700), the
    // pins cannot even be seen: still "needs root", never "not attached".
    std::fs::set_permissions(fw.bpffs(), std::fs::Permissions::from_mode(0o700))?;
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["block", "list", "--json"],
        &["block", "add", "192.0.2.2"],
        &["attach", iface],
    ] {
        let what = format!("{args:?} as nobody, bpffs 0700");
        refused(
            &host,
            &fw,
            &what,
            unprivileged(&host, &fw, args)?,
            1,
            &NEEDS_ROOT,
        )?;
    }
    let out = unprivileged(&host, &fw, &["status"])?
        .output()
        .context("status as nobody")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !text.contains("not attached") && !stderr.contains("not attached"),
        "an unprivileged status claims floodwall is not attached: {text}{stderr}"
    );
    ensure!(
        stderr.contains(&fw.pin_dir().join("prog").display().to_string()),
        "the message does not name the pin it could not read: {stderr}"
    );
    Ok(())
}

/// `floodwall ARGS...` with `FLOODWALL_BPFFS` pointed at `bpffs` instead of `fw`'s.
fn with_bpffs(fw: &Floodwall<'_>, bpffs: &Path, args: &[&str]) -> Command {
    let mut cmd = fw.command(args);
    cmd.env("FLOODWALL_BPFFS", bpffs);
    cmd
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_pin_directory_off_bpffs_is_refused() -> Result<()> {
    let host = Host::new("lim")?;
    let iface = host.iface();
    let fw = host.floodwall()?;
    // The state directory is on the temp dir's filesystem: anything but bpffs.
    let plain = fw.state_dir().join("plain");
    std::fs::create_dir(&plain)?;
    for bpffs in [plain.clone(), plain.join("fw"), plain.join("a/b/fw")] {
        refused(
            &host,
            &fw,
            &format!("attach with FLOODWALL_BPFFS={}", bpffs.display()),
            with_bpffs(&fw, &bpffs, &["attach", iface, "--mode", "native"]),
            1,
            &[
                &format!("`{}` is not on a mounted bpffs", bpffs.display()),
                &format!("mount -t bpf bpf {}", bpffs.display()),
                "FLOODWALL_BPFFS",
            ],
        )?;
        ensure!(xdp_prog_id(&host)?.is_none(), "XDP attached to {iface}");
        let left: Vec<_> = std::fs::read_dir(&plain)?
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(left.is_empty(), "a refused attach left {left:?}");
        ensure!(
            !fw.state_dir().join("floodwall.db").exists(),
            "a refused attach created the store"
        );
    }

    // A pin directory still to be made, several levels down on a real bpffs, is fine.
    let nested = fw.bpffs().join("a/b/fw");
    let out = with_bpffs(&fw, &nested, &["attach", iface, "--mode", "native"]).output()?;
    let attached = xdp_prog_id(&host)?;
    let detach = with_bpffs(&fw, &nested, &["detach", "--all"]).output()?;
    ensure!(
        out.status.success(),
        "attach with FLOODWALL_BPFFS={} failed: {}",
        nested.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    ensure!(
        attached.is_some(),
        "attach succeeded but nothing is attached"
    );
    ensure!(
        detach.status.success() && xdp_prog_id(&host)?.is_none(),
        "detach --all: {}",
        String::from_utf8_lossy(&detach.stderr)
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn status_names_the_program_id() -> Result<()> {
    let host = Host::new("lim")?;
    let iface = host.iface();
    let fw = host.floodwall()?;
    let status = fw.status_json()?;
    ensure!(
        status == json!({ "loaded": false, "interfaces": [] }),
        "status before attach: {status}"
    );

    fw.ok(&["attach", iface, "--mode", "native"])?;
    let status = fw.json(&["status", "--json"])?;
    let id = status["program_id"]
        .as_u64()
        .with_context(|| format!("no numeric program_id: {status}"))?;
    ensure!(id > 0, "program_id {id}");
    // The id the kernel shows for the program on the interface.
    ensure!(
        xdp_prog_id(&host)? == Some(id),
        "status says program {id}, `ip link` says {:?}",
        xdp_prog_id(&host)?
    );
    let text = fw.ok(&["status"])?;
    ensure!(
        text.lines()
            .any(|l| l.starts_with("program:") && l.contains(&format!("id {id}"))),
        "human status lacks the program id {id}: {text}"
    );

    // A second interface shares the program; a reload after detach --all is a new one.
    fw.ok(&["attach", "lo", "--mode", "skb"])?;
    let status = fw.json(&["status", "--json"])?;
    ensure!(status["program_id"] == id, "with two interfaces: {status}");
    fw.ok(&["detach", "--all"])?;
    fw.ok(&["attach", iface, "--mode", "native"])?;
    let status = fw.json(&["status", "--json"])?;
    let new_id = status["program_id"]
        .as_u64()
        .with_context(|| format!("no program_id after re-attach: {status}"))?;
    ensure!(
        new_id != id && xdp_prog_id(&host)? == Some(new_id),
        "after re-attach: program_id {new_id} (was {id}), `ip link`: {:?}",
        xdp_prog_id(&host)?
    );
    Ok(())
}

/// A byte burst below the largest frame the attached interface delivers could never pass such
/// a frame: refused, naming the minimum, and nothing changes; a burst that fits is taken as
/// given and shown.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_byte_burst_below_one_frame_is_refused() -> Result<()> {
    let host = Host::new("clb")?;
    let fw = host.attached()?;
    // The veth's MTU is 1500: frames up to 1522 bytes with two VLAN tags.
    let args = ["limit", "set", "--bps", "200000", "--burst-bytes", "1000"];
    refused(
        &host,
        &fw,
        "limit set --burst-bytes 1000",
        as_root(&fw, &args),
        2,
        &["burst_bytes 1000", "1522"],
    )?;
    fw.ok(&["limit", "set", "--bps", "200000", "--burst-bytes", "20000"])?;
    let shown = fw.ok(&["limit", "show"])?;
    ensure!(
        shown.contains("200000 B/s (burst 20000)"),
        "limit show: {shown}"
    );
    Ok(())
}
