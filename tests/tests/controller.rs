//! The controller: the real `floodwall` binary's exit statuses, messages, persistence, TTLs,
//! importers and JSON output. Bad input must change nothing.
//!
//! Each test makes its own namespaces (a veth end in "host" for `attach` to attach to), bpffs
//! and state directory, all removed on drop. No traffic is sent.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use aya::maps::{Array, Map, MapData};
use floodwall_tests::cli::{COMMAND_TIMEOUT, Floodwall, HOST4, Host, check_ok, wait_output};
use serde_json::{Value, json};

/// What bad input must leave alone: both lists (exit status and entries, without the
/// `ttl_left_secs` that ticks by itself), `status --json` (minus the fill of maps that only
/// traffic changes), and the limits the store holds.
#[derive(Debug, PartialEq)]
struct Snapshot {
    block: (Option<i32>, Value),
    allow: (Option<i32>, Value),
    status: Value,
    limits: (Option<i32>, Value),
}

/// `list` without the field that changes with the clock.
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

fn snapshot(fw: &Floodwall<'_>) -> Result<Snapshot> {
    let list = |kind: &str| -> Result<(Option<i32>, Value)> {
        let out = fw.run(&[kind, "list", "--json"])?;
        let entries = if out.status.success() {
            without_ttl_left(
                serde_json::from_slice(&out.stdout)
                    .with_context(|| format!("{kind} list --json is not JSON"))?,
            )
        } else {
            Value::Null
        };
        Ok((out.status.code(), entries))
    };
    let mut status = fw.status_json()?;
    if let Some(maps) = status.get_mut("maps").and_then(Value::as_array_mut) {
        maps.retain(|m| {
            m["name"]
                .as_str()
                .is_some_and(|n| n.starts_with("ALLOW") || n.starts_with("BLOCK"))
        });
    }
    let limits = {
        let out = fw.run(&["limit", "show", "--json"])?;
        let value = if out.status.success() {
            serde_json::from_slice(&out.stdout).context("limit show --json is not JSON")?
        } else {
            Value::Null
        };
        (out.status.code(), value)
    };
    Ok(Snapshot {
        block: list("block")?,
        allow: list("allow")?,
        status,
        limits,
    })
}

/// Runs `args`, expects exit status `code` and `needle` in stderr, and nothing changed.
fn rejected(fw: &Floodwall<'_>, args: &[&str], code: i32, needle: &str) -> Result<()> {
    let before = snapshot(fw)?;
    let stderr = fw.fails(args, code)?;
    ensure!(
        stderr.contains(needle),
        "floodwall {args:?}: stderr lacks {needle:?}: {stderr}"
    );
    let after = snapshot(fw)?;
    ensure!(
        before == after,
        "floodwall {args:?} changed state:\nbefore {before:#?}\nafter {after:#?}"
    );
    Ok(())
}

fn block_list(fw: &Floodwall<'_>) -> Result<Vec<Value>> {
    fw.json(&["block", "list", "--json"])?
        .as_array()
        .cloned()
        .context("block list --json is not an array")
}

fn block_cidrs(fw: &Floodwall<'_>) -> Result<BTreeSet<String>> {
    block_list(fw)?
        .iter()
        .map(|e| {
            e["cidr"]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("entry without cidr: {e}"))
        })
        .collect()
}

fn set(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| (*s).to_owned()).collect()
}

/// Some state worth keeping, so that "unchanged" means something.
fn seed(fw: &Floodwall<'_>) -> Result<()> {
    fw.ok(&["block", "add", "192.0.2.1", "--comment", "seed"])?;
    fw.ok(&["block", "add", "2001:db8:5eed::/48", "--ttl", "1h"])?;
    fw.ok(&["allow", "add", "198.51.100.0/24"])?;
    fw.ok(&["limit", "set", "--pps", "77"])?;
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn invalid_cidrs_change_nothing() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    seed(&fw)?;
    for (args, needle) in [
        (&["block", "add", "10.0.0.0/33"][..], "prefix length"),
        (&["block", "add", "300.1.1.1"], "not an IP address"),
        (&["block", "add", "2001:db8::/129"], "prefix length"),
        (&["block", "add", "garbage"], "not an IP address"),
        (&["block", "add", "10.0.0.1/8"], "host bits"),
        // A valid entry before a bad one is not applied either.
        (&["block", "add", "203.0.113.9", "10.0.0.1/8"], "10.0.0.0/8"),
        (&["allow", "add", "10.0.0.0/33"], "prefix length"),
        (&["block", "del", "garbage"], "not an IP address"),
        (&["block", "del", "203.0.113.9"], "not on the blocklist"),
        (&["block", "del", "192.0.2.1", "203.0.113.9"], "203.0.113.9"),
        (&["block", "add", "127.0.0.0/8"], "loopback"),
        (&["block", "add", "127.0.0.0/8", "--force"], "loopback"),
        (&["block", "add", "::1"], "loopback"),
        (&["block", "add", "0.0.0.0/0", "--force"], "loopback"),
        (&["block", "add", "192.0.2.2", "--ttl", "0s"], "TTL"),
        (&["limit", "set", "--prefix4", "33"], "prefix4"),
    ] {
        rejected(&fw, args, 2, needle)?;
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn blocking_own_address_needs_force() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    seed(&fw)?;
    for cidr in ["10.212.0.0/24", HOST4, "fd00:212::/64", "10.0.0.0/8"] {
        rejected(&fw, &["block", "add", cidr], 2, "--force")?;
    }
    rejected(&fw, &["block", "add", "10.212.0.0/24"], 2, HOST4)?;
    fw.ok(&["block", "add", "10.212.0.0/24", "--force"])?;
    fw.ok(&["block", "add", "fd00:212::/64", "--force"])?;
    let cidrs = block_cidrs(&fw)?;
    ensure!(
        cidrs.contains("10.212.0.0/24") && cidrs.contains("fd00:212::/64"),
        "forced entries missing: {cidrs:?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn interface_errors_change_nothing() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.floodwall()?;
    let iface = host.iface();

    // Nothing attached yet.
    rejected(&fw, &["attach", "fwnosuch0"], 2, "does not exist")?;
    rejected(&fw, &["detach", iface], 2, "not attached")?;
    // `lo` has no native XDP: the kernel refuses, and neither --dry-run nor the config's
    // limits may stick (exit 1: the system refused, not the input).
    let good = fw.state_dir().join("good.toml");
    std::fs::write(&good, "[limits]\npps = 999\n")?;
    let good = good.to_string_lossy().into_owned();
    let native_lo = [
        "attach",
        "lo",
        "--mode",
        "native",
        "--dry-run",
        "--config",
        &good,
    ];
    rejected(&fw, &native_lo, 1, "native")?;
    ensure!(
        !fw.pin_dir().join("prog").exists(),
        "a failed attach left the program pinned"
    );

    fw.ok(&["attach", iface, "--mode", "native"])?;
    let limits = fw.json(&["limit", "show", "--json"])?;
    ensure!(
        limits["dry_run"] == false && limits["pps"] == 0,
        "a failed first attach left its limits behind: {limits}"
    );
    seed(&fw)?;
    // Nor may a failed attach change the policy of the filter running on `iface`.
    rejected(&fw, &native_lo, 1, "native")?;
    rejected(&fw, &["attach", iface], 2, "already attached")?;
    rejected(
        &fw,
        &["attach", iface, "--mode", "skb"],
        2,
        "already attached",
    )?;
    rejected(&fw, &["attach", "fwnosuch0"], 2, "does not exist")?;
    // All or nothing: `lo` is not attached when the second name is unknown.
    rejected(&fw, &["attach", "lo", "fwnosuch0"], 2, "fwnosuch0")?;
    rejected(&fw, &["detach", "lo"], 2, "not attached")?;
    rejected(&fw, &["detach", "fwnosuch0"], 2, "not attached")?;
    rejected(&fw, &["detach", iface, "lo"], 2, "`lo`")?;
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn commands_before_attach_say_how_to_attach() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.floodwall()?;
    for args in [
        &["block", "add", "192.0.2.1"][..],
        &["block", "del", "192.0.2.1"],
        &["block", "list"],
        &["block", "flush"],
        &["allow", "add", "192.0.2.1"],
        &["limit", "set", "--pps", "5"],
        &["limit", "show"],
        &["top"],
        &["stats", "--json"],
    ] {
        rejected(&fw, args, 2, "floodwall attach")?;
    }
    let import = fw.state_dir().join("list.txt");
    std::fs::write(&import, "192.0.2.1\n")?;
    rejected(
        &fw,
        &["block", "import", &import.to_string_lossy()],
        2,
        "floodwall attach",
    )?;
    // A health check: shown, and exit 3.
    let out = fw.run(&["status", "--json"])?;
    ensure!(
        out.status.code() == Some(3),
        "status before attach: {out:?}"
    );
    let status: Value = serde_json::from_slice(&out.stdout)?;
    ensure!(
        status == json!({ "loaded": false, "interfaces": [] }),
        "status before attach: {status}"
    );
    Ok(())
}

/// A filter that another floodwall build loaded may lay its maps out otherwise, or hash
/// addresses to other bits, so an entry written into it now could be missed. Every command
/// that would read or change it is refused with what to do, and changes nothing (neither the
/// kernel's maps nor the store, as the reload shows); `detach --all` and `attach` then load
/// this build with the lists and limits kept.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_filter_another_build_loaded_is_refused_until_reloaded() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    fw.ok(&["block", "add", "192.0.2.1"])?;
    fw.ok(&["limit", "set", "--pps", "50"])?;
    let pin = fw.pin_dir().join(filter_common::MAP_BUILD);
    let build = || -> Result<Array<MapData, u64>> {
        Ok(Array::try_from(Map::from_map_data(MapData::from_pin(
            &pin,
        )?)?)?)
    };
    let ours = floodwall::kernel::build_id();
    ensure!(
        build()?.get(&0, 0)? == ours,
        "the load did not record its build"
    );
    build()?.set(0, ours ^ 1, 0)?;
    for args in [
        &["block", "add", "192.0.2.2"][..],
        &["block", "del", "192.0.2.1"],
        &["block", "flush"],
        &["allow", "add", "203.0.113.5"],
        &["limit", "set", "--pps", "5"],
        &["top"],
        &["stats", "--json"],
    ] {
        let stderr = fw.fails(args, 2)?;
        ensure!(
            stderr.contains("loaded by another build") && stderr.contains("detach --all"),
            "floodwall {args:?}: {stderr}"
        );
    }
    // One loaded before builds were recorded has none.
    std::fs::remove_file(&pin)?;
    let stderr = fw.fails(&["block", "add", "192.0.2.2"], 2)?;
    ensure!(stderr.contains("an older floodwall"), "{stderr}");
    let data = MapData::from_pin(fw.pin_dir().join(filter_common::MAP_BLOCK4_HOST))?;
    let hosts: aya::maps::HashMap<MapData, [u8; 4], filter_common::ListEntry> =
        aya::maps::HashMap::try_from(Map::from_map_data(data)?)?;
    let hosts: Vec<[u8; 4]> = hosts.keys().collect::<Result<_, _>>()?;
    ensure!(
        hosts == [[192, 0, 2, 1]],
        "the refused filter's hosts: {hosts:?}"
    );

    fw.ok(&["detach", "--all"])?;
    fw.ok(&["attach", host.iface(), "--mode", "native"])?;
    ensure!(
        build()?.get(&0, 0)? == ours,
        "the reload did not record its build"
    );
    fw.ok(&["block", "add", "192.0.2.2"])?;
    ensure!(
        block_cidrs(&fw)? == set(&["192.0.2.1", "192.0.2.2"]),
        "block list after the reload: {:?}",
        block_cidrs(&fw)?
    );
    let limits = fw.json(&["limit", "show", "--json"])?;
    ensure!(limits["pps"] == 50, "limits after the reload: {limits}");
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn bad_import_files_change_nothing() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    seed(&fw)?;
    let dir = fw.state_dir();

    let malformed = dir.join("malformed.txt");
    std::fs::write(
        &malformed,
        "# good lines first\n203.0.113.1\n203.0.113.0/28\n\n10.0.0.0/33\n203.0.113.7\n",
    )?;
    rejected(
        &fw,
        &["block", "import", &malformed.to_string_lossy()],
        2,
        "line 5",
    )?;
    rejected(
        &fw,
        &["allow", "import", &malformed.to_string_lossy()],
        2,
        "10.0.0.0/33",
    )?;

    let range = dir.join("range.txt");
    std::fs::write(
        &range,
        "create s hash:net\nadd s 203.0.113.1\nadd s 203.0.113.4-203.0.113.9\n",
    )?;
    rejected(
        &fw,
        &["block", "import", &range.to_string_lossy()],
        2,
        "line 3",
    )?;

    // A line that would lock the host out stops the whole import as well.
    let own = dir.join("own.txt");
    std::fs::write(&own, "203.0.113.1\n10.212.0.0/16\n")?;
    rejected(
        &fw,
        &["block", "import", &own.to_string_lossy()],
        2,
        "--force",
    )?;

    let missing = dir.join("no-such-list.txt");
    rejected(
        &fw,
        &["block", "import", &missing.to_string_lossy()],
        2,
        "no-such-list.txt",
    )?;
    rejected(
        &fw,
        &["block", "import", &dir.to_string_lossy()],
        2,
        "cannot read",
    )?;

    // From stdin.
    let before = snapshot(&fw)?;
    let out = fw.run_with_stdin(
        &["block", "import", "-"],
        Some(b"203.0.113.1\nnot-an-address\n"),
    )?;
    let stderr = floodwall_tests::cli::check_code(&["block", "import", "-"], &out, 2)?;
    ensure!(stderr.contains("line 2"), "stdin import: {stderr}");
    ensure!(snapshot(&fw)? == before, "a bad stdin import changed state");
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn bad_config_file_is_rejected_with_the_key_named() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.floodwall()?;
    let dir = fw.state_dir();
    let unknown = dir.join("bad.toml");
    std::fs::write(&unknown, "[limits]\npps = 10\nppps = 20\n")?;
    let top_level = dir.join("bad-top.toml");
    std::fs::write(&top_level, "bogus_key = 1\n")?;
    let bad_value = dir.join("bad-value.toml");
    std::fs::write(&bad_value, "[limits]\nprefix4 = 40\n")?;
    let iface = host.iface();

    // Before anything is loaded, and while attached elsewhere: nothing changes either way.
    for round in 0..2 {
        for (file, needle) in [
            (&unknown, "ppps"),
            (&top_level, "bogus_key"),
            (&bad_value, "prefix4"),
        ] {
            let target = if round == 0 { iface } else { "lo" };
            rejected(
                &fw,
                &["attach", target, "--config", &file.to_string_lossy()],
                2,
                needle,
            )?;
        }
        let missing = dir.join("missing.toml");
        rejected(
            &fw,
            &["attach", iface, "--config", &missing.to_string_lossy()],
            2,
            "missing.toml",
        )?;
        if round == 0 {
            ensure!(
                !fw.pin_dir().join("prog").exists(),
                "a rejected config left the program pinned"
            );
            fw.ok(&["attach", iface, "--mode", "native"])?;
            seed(&fw)?;
        }
    }

    // The default config file (FLOODWALL_CONFIG) is checked the same way.
    fw.ok(&["detach", "--all"])?;
    std::fs::write(fw.config_path(), "[capacity]\nblock_hostz = 5\n")?;
    rejected(&fw, &["attach", iface], 2, "block_hostz")?;
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn lists_and_limits_survive_detach_and_attach() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    fw.ok(&["block", "add", "192.0.2.1", "--comment", "by hand"])?;
    fw.ok(&[
        "block",
        "add",
        "2001:db8:1::/48",
        "--ttl",
        "1h",
        "--comment",
        "for an hour",
    ])?;
    fw.ok_with_stdin(&["block", "import", "-"], b"198.51.100.0/24\n")?;
    fw.ok(&["allow", "add", "203.0.113.5"])?;
    fw.ok(&[
        "limit",
        "set",
        "--pps",
        "50",
        "--burst",
        "7",
        "--prefix6",
        "56",
    ])?;
    let blocks = fw.json(&["block", "list", "--json"])?;
    let allows = fw.json(&["allow", "list", "--json"])?;
    let limits = fw.json(&["limit", "show", "--json"])?;

    let by_cidr = |cidr: &str| {
        blocks
            .as_array()
            .and_then(|a| a.iter().find(|e| e["cidr"] == cidr))
            .cloned()
    };
    let manual = by_cidr("192.0.2.1").context("192.0.2.1 missing")?;
    ensure!(
        manual["origin"] == "manual"
            && manual["comment"] == "by hand"
            && manual["expires_at"].is_null(),
        "{manual}"
    );
    let ttl = by_cidr("2001:db8:1::/48").context("2001:db8:1::/48 missing")?;
    let left = ttl["ttl_left_secs"].as_u64().context("no ttl_left_secs")?;
    ensure!(
        (3590..=3600).contains(&left) && ttl["comment"] == "for an hour",
        "{ttl}"
    );
    let imported = by_cidr("198.51.100.0/24").context("198.51.100.0/24 missing")?;
    ensure!(imported["origin"] == "import", "{imported}");
    ensure!(
        limits["pps"] == 50 && limits["burst"] == 7 && limits["prefix6"] == 56,
        "{limits}"
    );

    fw.ok(&["detach", "--all"])?;
    ensure!(
        !fw.pin_dir().join("prog").exists(),
        "detach --all left the program pinned"
    );
    let status = fw.status_json()?;
    ensure!(status["loaded"] == false, "status after detach: {status}");
    fw.ok(&["attach", host.iface()])?;

    // ttl_left_secs may have ticked; everything else is identical.
    let strip = without_ttl_left;
    let blocks_after = fw.json(&["block", "list", "--json"])?;
    ensure!(
        strip(blocks_after.clone()) == strip(blocks.clone()),
        "blocklist changed:\n{blocks}\n{blocks_after}"
    );
    ensure!(
        fw.json(&["allow", "list", "--json"])? == allows,
        "allowlist changed"
    );
    let limits_after = fw.json(&["limit", "show", "--json"])?;
    ensure!(
        limits_after == limits,
        "limits changed:\n{limits}\n{limits_after}"
    );
    let status = fw.json(&["status", "--json"])?;
    ensure!(
        status["limits"]["pps"] == 50
            && status["lists"]["block"] == 3
            && status["lists"]["allow"] == 1,
        "status after re-attach: {status}"
    );
    // And the entries are back in the kernel maps, not only in the state file.
    let fill = |name: &str| {
        status["maps"]
            .as_array()
            .and_then(|m| m.iter().find(|e| e["name"] == name))
            .and_then(|e| e["entries"].as_u64())
    };
    ensure!(
        fill("BLOCK4_HOST") == Some(1)
            && fill("BLOCK4_NET") == Some(1)
            && fill("BLOCK6_NET") == Some(1)
            && fill("ALLOW4_HOST") == Some(1),
        "map fill after re-attach: {status}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn ttl_entries_expire() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    fw.ok(&["block", "add", "192.0.2.9", "--ttl", "2s"])?;
    fw.ok(&["block", "add", "192.0.2.10"])?;
    let cidrs = block_cidrs(&fw)?;
    ensure!(cidrs == set(&["192.0.2.9", "192.0.2.10"]), "{cidrs:?}");
    std::thread::sleep(Duration::from_secs(3));
    let cidrs = block_cidrs(&fw)?;
    ensure!(cidrs == set(&["192.0.2.10"]), "after 3 s: {cidrs:?}");
    let text = fw.ok(&["block", "list"])?;
    ensure!(
        !text.contains("192.0.2.9 "),
        "human list still shows it: {text}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn imports_every_format_from_file_and_stdin() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    let formats: [(&str, &str, &[&str]); 4] = [
        (
            "plain",
            "# my list\n192.0.2.1\n\n198.51.100.0/24   # trailing comment\n\t2001:db8:1::/48\n2001:db8:2::1\n",
            &[
                "192.0.2.1",
                "198.51.100.0/24",
                "2001:db8:1::/48",
                "2001:db8:2::1",
            ],
        ),
        (
            "ipset",
            "create set hash:net family inet hashsize 1024 maxelem 65536\nadd set 1.2.3.0/24\nadd set 5.6.7.8 timeout 0\n",
            &["1.2.3.0/24", "5.6.7.8"],
        ),
        (
            "firehol",
            "#\n# firehol_level1\n#\n# ipv4 hash:net ipset\n#\n1.10.16.0/20\n1.19.0.0/16\n5.188.10.179\n",
            &["1.10.16.0/20", "1.19.0.0/16", "5.188.10.179"],
        ),
        (
            "spamhaus",
            "; Spamhaus DROP List 2024/01/01 - (c) 2024 The Spamhaus Project\n; Last-Modified: Mon, 01 Jan 2024\n1.2.4.0/24 ; SBL1\n2.56.192.0/22 ; SBL459831\n",
            &["1.2.4.0/24", "2.56.192.0/22"],
        ),
    ];
    for (name, text, expected) in formats {
        let file = fw.state_dir().join(format!("{name}.list"));
        std::fs::write(&file, text)?;
        for source in ["file", "stdin"] {
            fw.ok(&["block", "flush"])?;
            let out = if source == "file" {
                fw.ok(&["block", "import", &file.to_string_lossy()])?
            } else {
                fw.ok_with_stdin(&["block", "import", "-"], text.as_bytes())?
            };
            ensure!(
                out.contains(&format!("imported {}", expected.len())),
                "{name} from {source}: {out}"
            );
            let list = block_list(&fw)?;
            let cidrs: BTreeSet<String> = list
                .iter()
                .filter_map(|e| e["cidr"].as_str().map(str::to_owned))
                .collect();
            ensure!(cidrs == set(expected), "{name} from {source}: {cidrs:?}");
            ensure!(
                list.iter().all(|e| e["origin"] == "import"),
                "{name} from {source}: origin: {list:?}"
            );
        }
    }
    // Import into the allowlist, with a comment and a TTL for every entry.
    let out = fw.ok_with_stdin(
        &[
            "allow",
            "import",
            "-",
            "--comment",
            "partners",
            "--ttl",
            "1d",
        ],
        b"203.0.113.0/24\n2001:db8:ff::1\n",
    )?;
    ensure!(out.contains("imported 2"), "{out}");
    let allows = fw.json(&["allow", "list", "--json"])?;
    let allows = allows.as_array().context("allow list is not an array")?;
    ensure!(
        allows.len() == 2
            && allows
                .iter()
                .all(|e| e["comment"] == "partners" && e["ttl_left_secs"].as_u64() > Some(86_000)),
        "{allows:?}"
    );
    Ok(())
}

/// `count` distinct IPv4 host addresses in `10.<second>.0.0/16`.
fn host_list(second: u8, count: u32) -> String {
    let mut text = String::with_capacity(count as usize * 14);
    for i in 0..count {
        let _ = writeln!(text, "10.{second}.{}.{}", i / 256, i % 256);
    }
    text
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn concurrent_imports_are_both_applied() -> Result<()> {
    const EACH: u32 = 20_000;
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    let mut files = Vec::new();
    for second in [1u8, 2] {
        let path = fw.state_dir().join(format!("hosts-{second}.txt"));
        std::fs::write(&path, host_list(second, EACH))?;
        files.push(path.to_string_lossy().into_owned());
    }
    // Both running at once; the lock serialises them, and neither may lose the other's work.
    let children = files
        .iter()
        .map(|f| {
            fw.command(&["block", "import", f])
                .spawn()
                .with_context(|| format!("starting import of {f}"))
        })
        .collect::<Result<Vec<_>>>()?;
    for (child, file) in children.into_iter().zip(&files) {
        let out = wait_output(child, COMMAND_TIMEOUT)?;
        let stdout = check_ok(&["block", "import", file], &out)?;
        ensure!(
            stdout.contains(&format!("imported {EACH}")),
            "{file}: {stdout}"
        );
    }
    let cidrs = block_cidrs(&fw)?;
    ensure!(
        cidrs.len() == 2 * EACH as usize,
        "{} entries after two imports of {EACH}",
        cidrs.len()
    );
    for second in [1u8, 2] {
        for i in [0, 1, EACH / 2, EACH - 1] {
            let addr = format!("10.{second}.{}.{}", i / 256, i % 256);
            ensure!(cidrs.contains(&addr), "{addr} missing");
        }
    }
    let status = fw.json(&["status", "--json"])?;
    ensure!(
        status["lists"]["block"] == 2 * EACH,
        "status lists: {}",
        status["lists"]
    );
    let kernel = status["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["name"] == "BLOCK4_HOST"))
        .and_then(|e| e["entries"].as_u64());
    ensure!(
        kernel == Some(u64::from(2 * EACH)),
        "BLOCK4_HOST holds {kernel:?}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn import_is_streamed_in_bounded_memory_and_counts_repeats_once() -> Result<()> {
    const SMALL: u32 = 20_000;
    // Over two batches of lines, so a repeat can come a batch after its first line.
    const LARGE: u32 = 200_000;
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    let mut peak = Vec::new();
    for (second, count) in [(1u8, SMALL), (2, LARGE)] {
        let hosts = |count: u32| {
            let base = u32::from(std::net::Ipv4Addr::new(10, second, 0, 0));
            (0..count)
                .map(|i| format!("{}\n", std::net::Ipv4Addr::from(base + i)))
                .collect::<String>()
        };
        // The first 10,000 lines again, at the end.
        let text = hosts(count) + &hosts(10_000);
        let path = fw.state_dir().join(format!("hosts-{second}.txt"));
        std::fs::write(&path, text)?;
        let (out, rss_kib) = fw.ok_with_peak_rss(&["block", "import", &path.to_string_lossy()])?;
        ensure!(
            out.contains(&format!(
                "imported {count} entries into the blocklist: {count} new, 0 updated"
            )),
            "{out}"
        );
        eprintln!("import of {count} distinct lines: peak {rss_kib} KiB");
        peak.push(rss_kib);
    }
    // Holding the list would cost about 400 bytes an entry: 70 MB more for the large one.
    ensure!(
        peak[1] < peak[0] + 10 * 1024,
        "memory grows with the list: {} KiB for {SMALL} entries, {} KiB for {LARGE}",
        peak[0],
        peak[1]
    );
    let status = fw.json(&["status", "--json"])?;
    ensure!(
        status["lists"]["block"] == SMALL + LARGE
            && status["kernel_lists"]["block"] == SMALL + LARGE,
        "status: {status}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn limit_set_and_show_round_trip() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    let defaults = fw.json(&["limit", "show", "--json"])?;
    ensure!(defaults["pps"] == 0, "default pps: {defaults}");
    fw.ok(&[
        "limit",
        "set",
        "--pps",
        "100",
        "--burst",
        "20",
        "--bps",
        "1000000",
        "--burst-bytes",
        "6000",
        "--prefix4",
        "24",
        "--prefix6",
        "48",
        "--global-pps",
        "50000",
        "--new-sources",
        "10",
    ])?;
    let limits = fw.json(&["limit", "show", "--json"])?;
    for (key, want) in [
        ("pps", json!(100)),
        ("burst", json!(20)),
        ("bps", json!(1_000_000)),
        ("burst_bytes", json!(6000)),
        ("prefix4", json!(24)),
        ("prefix6", json!(48)),
        ("global_pps", json!(50_000)),
        ("new_sources", json!(10)),
        ("global_bps", defaults["global_bps"].clone()),
        ("dry_run", json!(false)),
    ] {
        ensure!(
            limits[key] == want,
            "{key}: {} != {want}: {limits}",
            limits[key]
        );
    }
    // Flags not given keep their value.
    fw.ok(&["limit", "set", "--pps", "5"])?;
    let again = fw.json(&["limit", "show", "--json"])?;
    let mut expected = limits.clone();
    expected["pps"] = json!(5);
    ensure!(again == expected, "{again} != {expected}");
    let text = fw.ok(&["limit", "show"])?;
    ensure!(text.contains("5 pps"), "human limit show: {text}");
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn status_stats_and_top_json() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    fw.ok(&["block", "add", "192.0.2.1"])?;

    let status = fw.json(&["status", "--json"])?;
    ensure!(status["loaded"] == true, "{status}");
    ensure!(
        status["interfaces"] == json!([{ "iface": host.iface(), "mode": "native" }]),
        "interfaces: {}",
        status["interfaces"]
    );
    ensure!(
        status["dry_run"] == false && status["lists"]["block"] == 1,
        "{status}"
    );
    ensure!(
        status["maps"].is_array() && status["limits"].is_object(),
        "{status}"
    );
    let text = fw.ok(&["status"])?;
    ensure!(
        text.contains(host.iface()) && text.contains("native"),
        "{text}"
    );

    // A second interface, in skb mode, shows up with its own mode.
    fw.ok(&["attach", "lo", "--mode", "skb"])?;
    let status = fw.json(&["status", "--json"])?;
    let ifaces = status["interfaces"].as_array().context("no interfaces")?;
    ensure!(
        ifaces.contains(&json!({ "iface": "lo", "mode": "skb" }))
            && ifaces.contains(&json!({ "iface": host.iface(), "mode": "native" })),
        "interfaces: {ifaces:?}"
    );
    fw.ok(&["detach", "lo"])?;

    let stats = fw.json(&["stats", "--json"])?;
    ensure!(stats["interfaces"].is_array(), "{stats}");
    ensure!(stats["health"].is_object(), "{stats}");
    let totals = stats["totals"].as_object().context("no totals")?;
    for reason in [
        "passed",
        "non_ip",
        "allowlist",
        "blocklist",
        "over_pps",
        "over_bps",
        "newcomer",
        "global_cap",
        "malformed",
        "dry_run",
    ] {
        let c = &totals
            .get(reason)
            .with_context(|| format!("totals lacks {reason}"))?;
        ensure!(
            c["packets"].is_u64() && c["bytes"].is_u64(),
            "totals.{reason}: {c}"
        );
    }
    let text = fw.ok(&["stats"])?;
    ensure!(text.contains("blocklist"), "{text}");

    // Five sources with limiter state, each sending a different number of packets (on lo in
    // the host's namespace, where 127.0.0.0/8 is local): `top` must rank and cut them.
    fw.ok(&["attach", "lo", "--mode", "skb"])?;
    fw.ok(&["limit", "set", "--pps", "100000"])?;
    floodwall_tests::netns::run_in(&host.ns, || -> Result<()> {
        // A bound receiver, so nothing is answered (an ICMP error would be a frame too).
        let sink = std::net::UdpSocket::bind("127.0.0.9:0")?;
        for i in 1..=5u8 {
            let socket = std::net::UdpSocket::bind((std::net::Ipv4Addr::new(127, 0, 0, i), 0))?;
            for _ in 0..u32::from(i) * 20 {
                socket.send_to(&[0u8; 16], sink.local_addr()?)?;
            }
        }
        Ok(())
    })??;
    let top = fw.json(&["top", "--json"])?;
    let all = top.as_array().context("top --json is not an array")?;
    let sources: Vec<&str> = all.iter().filter_map(|s| s["source"].as_str()).collect();
    for i in 1..=5 {
        let want = format!("127.0.0.{i}");
        ensure!(sources.contains(&want.as_str()), "{want} not in top: {top}");
    }
    ensure!(
        all.first().and_then(|s| s["source"].as_str()) == Some("127.0.0.5"),
        "the heaviest source (127.0.0.5, 100 packets) is not first: {top}"
    );
    let top3 = fw.json(&["top", "-n", "3", "--json"])?;
    ensure!(
        top3.as_array().is_some_and(|a| a.len() == 3),
        "top -n 3: {top3}"
    );
    ensure!(
        fw.ok(&["top"])?.contains("127.0.0.5"),
        "the table misses the heaviest source"
    );
    fw.ok(&["detach", "lo"])?;
    Ok(())
}

/// `stats --watch` while an interface with traffic is detached: its counters leave the
/// totals, which must never show up as a negative (wrapped) rate.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn stats_watch_survives_a_detach() -> Result<()> {
    let host = Host::new("ctw")?;
    let fw = host.attached()?;
    fw.ok(&["attach", "lo", "--mode", "skb"])?;
    // Traffic on lo (inside the host's namespace), counted by the filter on lo.
    let sent = floodwall_tests::netns::run_in(&host.ns, || -> Result<usize> {
        let socket = std::net::UdpSocket::bind("127.0.0.1:0")?;
        for _ in 0..2_000 {
            socket.send_to(&[0u8; 32], "127.0.0.1:9")?;
        }
        Ok(2_000)
    })??;
    let stats = fw.json(&["stats", "--json"])?;
    ensure!(
        stats["totals"]["passed"]["packets"].as_u64().unwrap_or(0) >= sent as u64,
        "the traffic on lo was not counted: {stats}"
    );
    let mut watch = fw
        .command(&["stats", "--watch", "1", "--json"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("starting stats --watch")?;
    std::thread::sleep(Duration::from_millis(1500));
    fw.ok(&["detach", "lo"])?;
    std::thread::sleep(Duration::from_millis(2500));
    let _ = watch.kill();
    let out = wait_output(watch, COMMAND_TIMEOUT)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<Value> = text
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()
        .with_context(|| format!("stats --watch printed: {text}"))?;
    ensure!(lines.len() >= 3, "only {} samples: {text}", lines.len());
    for line in &lines {
        for (reason, rate) in line["pps"].as_object().context("no pps")? {
            let rate = rate.as_f64().unwrap_or(f64::NAN);
            ensure!(
                (0.0..1e9).contains(&rate),
                "{reason} at {rate}/s after the detach: {text}"
            );
        }
    }
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn import_replace_follows_a_feed_and_list_filters_by_origin_and_address() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    fw.ok(&["block", "add", "192.0.2.1", "--comment", "mine"])?;
    fw.ok_with_stdin(
        &["block", "import", "-"],
        b"198.51.100.1\n198.51.100.2\n203.0.113.0/24\n",
    )?;
    // The feed's next version: .1 and the /24 are gone, .3 is new, and 192.0.2.1 is in it too
    // but stays the operator's own entry.
    let out = fw.run_with_stdin(
        &["block", "import", "-", "--replace", "--json", "--ttl", "1h"],
        Some(b"198.51.100.2\n198.51.100.3\n192.0.2.1\n192.0.2.1\n198.51.100.3\n"),
    )?;
    let summary: Value = serde_json::from_str(&check_ok(&["block", "import"], &out)?)?;
    ensure!(
        summary["new"] == 1
            && summary["updated"] == 1
            && summary["removed"] == 2
            && summary["kept_other_origin"] == 1,
        "import --replace said {summary}"
    );
    ensure!(
        block_cidrs(&fw)? == set(&["192.0.2.1", "198.51.100.2", "198.51.100.3"]),
        "after the replace: {:?}",
        block_cidrs(&fw)?
    );
    let mine = block_list(&fw)?
        .into_iter()
        .find(|e| e["cidr"] == "192.0.2.1")
        .context("the manual entry")?;
    ensure!(
        mine["origin"] == "manual" && mine["expires_at"].is_null(),
        "the manual entry was taken over by the feed: {mine}"
    );
    // The kernel holds exactly what the list shows.
    let status = fw.json(&["status", "--json"])?;
    let hosts = status["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["name"] == "BLOCK4_HOST"))
        .and_then(|e| e["entries"].as_u64());
    let nets = status["maps"]
        .as_array()
        .and_then(|m| m.iter().find(|e| e["name"] == "BLOCK4_NET"))
        .and_then(|e| e["entries"].as_u64());
    ensure!(
        hosts == Some(3) && nets == Some(0),
        "kernel maps: {hosts:?} hosts, {nets:?} nets"
    );

    let cidrs = |args: &[&str]| -> Result<BTreeSet<String>> {
        let mut all = vec!["block", "list", "--json"];
        all.extend_from_slice(args);
        Ok(fw
            .json(&all)?
            .as_array()
            .context("not an array")?
            .iter()
            .filter_map(|e| e["cidr"].as_str().map(str::to_owned))
            .collect())
    };
    ensure!(cidrs(&["--origin", "import"])? == set(&["198.51.100.2", "198.51.100.3"]));
    ensure!(cidrs(&["--origin", "manual"])? == set(&["192.0.2.1"]));
    ensure!(cidrs(&["--contains", "198.51.100.3"])? == set(&["198.51.100.3"]));
    ensure!(cidrs(&["--origin", "manual", "--contains", "198.51.100.3"])?.is_empty());
    rejected(
        &fw,
        &["block", "list", "--origin", "feed"],
        2,
        "not an origin",
    )?;
    // A lock-out entry refuses the whole replace: nothing changes.
    let before = block_cidrs(&fw)?;
    let out = fw.run_with_stdin(
        &["block", "import", "-", "--replace"],
        Some(format!("198.51.100.9\n{HOST4}\n").as_bytes()),
    )?;
    ensure!(
        out.status.code() == Some(2),
        "a lock-out entry was not refused: {out:?}"
    );
    ensure!(
        block_cidrs(&fw)? == before,
        "a refused replace changed the list"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn status_is_a_health_check() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    fw.ok(&["block", "add", "192.0.2.1", "198.51.100.0/24"])?;
    let status = fw.json(&["status", "--json"])?;
    ensure!(
        status["enforcing"] == true
            && status["service_pid"].is_null()
            && status["kernel_lists"] == json!({ "allow": 0, "block": 2 })
            && status["lists"]["block"] == 2,
        "status while enforcing: {status}"
    );
    let text = fw.ok(&["status"])?;
    ensure!(
        text.contains("kernel maps: 0 allow, 2 block entries") && text.contains("not running"),
        "status: {text}"
    );
    fw.ok(&["limit", "set", "--dry-run", "true"])?;
    let stderr = fw.fails(&["status"], 3)?;
    ensure!(stderr.contains("dry-run"), "status in dry-run: {stderr}");
    fw.ok(&["limit", "set", "--dry-run", "false"])?;
    fw.ok(&["status"])?;
    let limits = fw.json(&["limit", "set", "--pps", "5", "--json"])?;
    ensure!(limits["pps"] == 5, "limit set --json: {limits}");
    let detached = fw.json(&["detach", "--all", "--json"])?;
    ensure!(
        detached == json!({ "detached": [host.iface()] }),
        "detach --json: {detached}"
    );
    let stderr = fw.fails(&["status"], 3)?;
    ensure!(stderr.contains("not attached"), "status detached: {stderr}");
    let attached = fw.json(&["attach", host.iface(), "--mode", "native", "--json"])?;
    ensure!(
        attached == json!({ "attached": [{ "iface": host.iface(), "mode": "native" }] }),
        "attach --json: {attached}"
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_state_json_is_migrated_into_the_store_once_and_nothing_is_lost() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.floodwall()?;
    let later = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    // A state file as floodwalls before the store wrote it.
    let old = json!({
        "version": 1,
        "limits": { "pps": 50, "burst": 7, "prefix6": 56 },
        "allow": [{ "cidr": "192.0.2.9", "origin": "manual", "added_at": 1_700_000_000 }],
        "block": [
            { "cidr": "198.51.100.0/24", "comment": "scanner", "origin": "import",
              "added_at": 1_700_000_001 },
            { "cidr": "2001:db8::/32", "expires_at": later, "origin": "auto",
              "added_at": 1_700_000_002 },
            { "cidr": "203.0.113.7", "origin": "crowdsec", "comment": "ssh-bf",
              "added_at": 1_700_000_003 }
        ]
    });
    std::fs::write(fw.state_dir().join("state.json"), old.to_string())?;
    fw.ok(&["attach", host.iface(), "--mode", "native"])?;
    let check = |when: &str| -> Result<()> {
        let block = block_list(&fw)?;
        let find = |cidr: &str| block.iter().find(|e| e["cidr"] == cidr).cloned();
        let scanner = find("198.51.100.0/24").context("the imported prefix")?;
        ensure!(
            scanner["comment"] == "scanner"
                && scanner["origin"] == "import"
                && scanner["added_at"] == 1_700_000_001,
            "{when}: {scanner}"
        );
        let ban = find("2001:db8::/32").context("the ban")?;
        ensure!(
            ban["expires_at"] == later && ban["origin"] == "auto",
            "{when}: {ban}"
        );
        ensure!(
            find("203.0.113.7").is_some_and(|e| e["origin"] == "crowdsec"),
            "{when}: {block:?}"
        );
        ensure!(block.len() == 3, "{when}: {block:?}");
        let allow = fw.json(&["allow", "list", "--json"])?;
        ensure!(allow[0]["cidr"] == "192.0.2.9", "{when}: {allow}");
        let limits = fw.json(&["limit", "show", "--json"])?;
        ensure!(
            limits["pps"] == 50 && limits["burst"] == 7 && limits["prefix6"] == 56,
            "{when}: {limits}"
        );
        // And in the kernel, not only in the store.
        let status = fw.json(&["status", "--json"])?;
        ensure!(
            status["kernel_lists"] == json!({ "allow": 1, "block": 3 }),
            "{when}: {status}"
        );
        Ok(())
    };
    check("after the migration")?;
    ensure!(
        !fw.state_dir().join("state.json").exists()
            && fw.state_dir().join("state.json.migrated").exists()
            && fw.state_dir().join("floodwall.db").exists(),
        "the state file was not moved aside"
    );
    fw.ok(&["detach", "--all"])?;
    fw.ok(&["attach", host.iface(), "--mode", "native"])?;
    check("after a detach and attach, from the store")?;
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_version_1_store_is_upgraded_in_place_keeping_everything() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    fw.ok(&["block", "add", "192.0.2.1", "--comment", "mine"])?;
    fw.ok_with_stdin(&["block", "import", "-"], b"198.51.100.1\n198.51.100.2\n")?;
    fw.ok(&["limit", "set", "--pps", "300"])?;
    let before = snapshot(&fw)?;
    let db = fw.state_dir().join("floodwall.db");
    {
        // Version 1 as it was written: no `changed` column.
        let conn = rusqlite::Connection::open(&db)?;
        conn.execute_batch(
            "ALTER TABLE entries DROP COLUMN changed;
             UPDATE meta SET value = 1 WHERE key = 'schema_version';",
        )?;
    }
    ensure!(
        snapshot(&fw)? == before,
        "the upgrade changed what is shown"
    );
    let conn = rusqlite::Connection::open(&db)?;
    let version: i64 = conn.query_row(
        "SELECT value FROM meta WHERE key = 'schema_version'",
        [],
        |r| r.get(0),
    )?;
    ensure!(version == 2, "schema version {version} after the upgrade");
    // The upgraded store takes a feed replace, which needs the new column.
    let summary: Value = serde_json::from_str(&fw.ok_with_stdin(
        &["block", "import", "-", "--replace", "--json"],
        b"198.51.100.2\n198.51.100.3\n",
    )?)?;
    ensure!(
        summary["new"] == 1 && summary["updated"] == 1 && summary["removed"] == 1,
        "{summary}"
    );
    ensure!(
        block_cidrs(&fw)? == set(&["192.0.2.1", "198.51.100.2", "198.51.100.3"]),
        "{:?}",
        block_cidrs(&fw)?
    );
    Ok(())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn a_store_from_a_newer_floodwall_is_refused_and_left_alone() -> Result<()> {
    let host = Host::new("ctl")?;
    let fw = host.attached()?;
    fw.ok(&["block", "add", "192.0.2.1"])?;
    let db = fw.state_dir().join("floodwall.db");
    {
        let conn = rusqlite::Connection::open(&db)?;
        conn.execute(
            "UPDATE meta SET value = 99 WHERE key = 'schema_version'",
            [],
        )?;
    }
    let stderr = fw.fails(&["block", "add", "192.0.2.2"], 1)?;
    ensure!(
        stderr.contains("schema version 99") && stderr.contains("newer floodwall"),
        "{stderr}"
    );
    let conn = rusqlite::Connection::open(&db)?;
    let rows: i64 = conn.query_row("SELECT COUNT(*) FROM entries", [], |r| r.get(0))?;
    ensure!(
        rows == 1,
        "the refused command changed the store ({rows} rows)"
    );
    Ok(())
}
