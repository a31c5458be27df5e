//! A controller killed with SIGKILL in the middle of an import loses nothing and leaves no
//! half-applied list behind: the next command finds the change marker and makes the kernel
//! lists match the state file, which holds either everything before the import or everything
//! after it.

use std::{fmt::Write as _, time::Duration};

use anyhow::{Context, Result, ensure};
use aya::maps::{HashMap, Map, MapData};
use filter_common::{ListEntry, MAP_BLOCK4_HOST};
use floodwall_tests::{
    cli::{Floodwall, Host},
    netns::{Netns, VethPair},
};
use serde_json::Value;

/// Host entries in the kernel's IPv4 blocklist map, read directly (no floodwall command, so no
/// recovery runs first).
fn raw_kernel_block_hosts(fw: &Floodwall<'_>) -> Result<usize> {
    let data = MapData::from_pin(fw.pin_dir().join(MAP_BLOCK4_HOST))?;
    let map: HashMap<MapData, [u8; 4], ListEntry> = HashMap::try_from(Map::from_map_data(data)?)?;
    Ok(map.keys().filter(Result::is_ok).count())
}

fn block_count(fw: &Floodwall<'_>) -> Result<usize> {
    let list = fw.json(&["block", "list", "--json"])?;
    list.as_array()
        .map(Vec::len)
        .context("block list is not an array")
}

fn kernel_block_hosts(fw: &Floodwall<'_>) -> Result<u64> {
    let status = fw.json(&["status", "--json"])?;
    status["maps"]
        .as_array()
        .and_then(|maps| maps.iter().find(|m| m["name"] == "BLOCK4_HOST"))
        .and_then(|m| m["entries"].as_u64())
        .context("status has no BLOCK4_HOST fill")
}

/// Writes `entries` addresses from 11.0.0.0 on, one per line, into an import file in the
/// state directory; returns its path.
fn big_import_file(fw: &Floodwall<'_>, entries: u32) -> Result<String> {
    let mut text = String::with_capacity(entries as usize * 16);
    for i in 0..entries {
        let a = 0x0b00_0000 + i;
        writeln!(
            text,
            "{}.{}.{}.{}",
            a >> 24,
            (a >> 16) & 255,
            (a >> 8) & 255,
            a & 255
        )?;
    }
    let file = fw.state_dir().join("big.txt");
    std::fs::write(&file, text)?;
    Ok(file.to_str().context("path is not UTF-8")?.to_owned())
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sigkill_during_import_loses_nothing_and_leaves_nothing_half_done() -> Result<()> {
    let ns = Netns::new("crash")?;
    let peer = Netns::new("crashp")?;
    let veth = VethPair::new(
        &peer,
        &ns,
        "10.213.0.2/24",
        "10.213.0.1/24",
        "fd00:213::2/64",
        "fd00:213::1/64",
    )?;
    let fw = Floodwall::new(Some(&ns))?;
    fw.ok(&["attach", veth.b_name(), "--mode", "native"])?;
    fw.ok(&[
        "block",
        "add",
        "192.0.2.1",
        "--comment",
        "before the import",
    ])?;

    let entries = 300_000u32;
    let file = big_import_file(&fw, entries)?;

    let marker = fw.state_dir().join("lists.pending");
    let mut outcomes = Vec::new();
    let mut half_applied = 0;
    // Kill ever later until a kill has left the kernel half-way through the import; bounded.
    for delay_ms in (1..=60u64).map(|i| i * 75) {
        if half_applied >= 2 {
            break;
        }
        let before = block_count(&fw)?;
        let mut child = fw.command(&["block", "import", &file]).spawn()?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        // SIGKILL: no destructor, no rollback, no cleanup runs in the victim.
        child.kill()?;
        let status = child.wait()?;
        let interrupted = marker.exists();
        let raw = raw_kernel_block_hosts(&fw)?;
        if raw != before && raw != 1 + entries as usize {
            half_applied += 1;
        }
        let after = block_count(&fw)?;
        let kernel = kernel_block_hosts(&fw)?;
        println!(
            "killed after {delay_ms} ms ({status}, mid-change: {interrupted}, {raw} in the kernel \
             at the kill): {before} before, {after} after, {kernel} in the kernel after recovery"
        );
        ensure!(
            after == before || after == 1 + entries as usize,
            "after a kill at {delay_ms} ms the list has {after} entries: neither before ({before}) nor after the import"
        );
        ensure!(
            kernel == after as u64,
            "kernel holds {kernel} host entries but the list shows {after}"
        );
        let list = fw.json(&["block", "list", "--json"])?;
        let kept = list
            .as_array()
            .and_then(|l| l.iter().find(|e| e["cidr"] == "192.0.2.1"))
            .cloned()
            .unwrap_or(Value::Null);
        ensure!(
            kept["comment"] == "before the import",
            "earlier entry lost: {kept}"
        );
        outcomes.push(after);
        if after > before {
            // Start the next round from the small list again.
            fw.ok(&["block", "flush"])?;
            fw.ok(&[
                "block",
                "add",
                "192.0.2.1",
                "--comment",
                "before the import",
            ])?;
        }
    }
    ensure!(
        half_applied > 0,
        "no kill landed while the kernel was half-way through the import: {outcomes:?}"
    );
    // The controller still works normally afterwards.
    fw.ok(&["block", "import", &file])?;
    ensure!(block_count(&fw)? == 1 + entries as usize);
    ensure!(kernel_block_hosts(&fw)? == 1 + u64::from(entries));
    println!("outcomes per kill: {outcomes:?}");
    Ok(())
}

/// The kernel's live per-source packet rate, read directly from the pinned config (no
/// floodwall command, so no recovery runs first).
fn raw_kernel_pps(fw: &Floodwall<'_>) -> Result<u64> {
    // The record the frames read: the one `CONFIG_ACTIVE` names.
    let data = MapData::from_pin(fw.pin_dir().join(filter_common::MAP_CONFIG_ACTIVE))?;
    let active: aya::maps::Array<MapData, u32> =
        aya::maps::Array::try_from(Map::from_map_data(data)?)?;
    let slot = active.get(&0, 0)? % filter_common::CONFIG_SLOTS;
    let data = MapData::from_pin(fw.pin_dir().join(filter_common::MAP_CONFIG))?;
    let config: aya::maps::Array<MapData, filter_common::Config> =
        aya::maps::Array::try_from(Map::from_map_data(data)?)?;
    Ok(config.get(&slot, 0)?.source_pkt.rate(false))
}

/// `limit set` killed at any point never leaves the kernel on limits the store does not
/// hold once the next command has run. A large store makes the window between writing the
/// kernel and saving the store wide enough to hit.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sigkill_during_limit_set_leaves_kernel_and_store_agreeing() -> Result<()> {
    let host = Host::new("crl")?;
    let fw = host.attached()?;
    let entries = 200_000u32;
    fw.ok(&["block", "import", &big_import_file(&fw, entries)?])?;
    let started = std::time::Instant::now();
    fw.ok(&["limit", "set", "--pps", "1000"])?;
    println!(
        "limit set with {entries} entries stored: {:?}",
        started.elapsed()
    );
    let mut disagreements = Vec::new();
    // Spread over the whole command (about 1.3 s here with this store).
    for (i, delay_ms) in (0..40u64).map(|i| (i, 20 + i * 35)).collect::<Vec<_>>() {
        let pps = (2000 + i).to_string();
        let mut child = fw.command(&["limit", "set", "--pps", &pps]).spawn()?;
        std::thread::sleep(Duration::from_millis(delay_ms));
        child.kill()?;
        let status = child.wait()?;
        // Any command finds a change a kill left half-done and finishes it.
        fw.ok(&["status"])?;
        let stored = fw.json(&["limit", "show", "--json"])?["pps"]
            .as_u64()
            .context("limit show has no pps")?;
        let kernel = raw_kernel_pps(&fw)?;
        println!("killed after {delay_ms} ms ({status}): kernel {kernel} pps, store {stored}");
        if kernel != stored {
            disagreements.push(format!(
                "killed after {delay_ms} ms ({status}): kernel {kernel} pps, store {stored}"
            ));
        }
    }
    ensure!(
        disagreements.is_empty(),
        "the kernel and the store disagree after a killed limit set:\n{}",
        disagreements.join("\n")
    );
    Ok(())
}

/// Whether `addr` is in the kernel's IPv4 host blocklist map, read directly.
fn raw_kernel_has(fw: &Floodwall<'_>, addr: [u8; 4]) -> Result<bool> {
    let data = MapData::from_pin(fw.pin_dir().join(MAP_BLOCK4_HOST))?;
    let map: HashMap<MapData, [u8; 4], ListEntry> = HashMap::try_from(Map::from_map_data(data)?)?;
    Ok(map.get(&addr, 0).is_ok())
}

/// The first attach loads the program and then restores the lists: killed in between, it
/// used to leave a filter with part of the blocklist and nothing to say so, which the next
/// command believed. Expired records are not restored at all.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sigkill_during_the_first_attach_leaves_nothing_half_restored() -> Result<()> {
    let host = Host::new("cra")?;
    let fw = host.attached()?;
    let iface = host.iface().to_owned();
    let entries = 50_000u32;
    fw.ok(&["block", "import", &big_import_file(&fw, entries)?])?;
    fw.ok(&["block", "add", "192.0.2.77", "--ttl", "1s"])?;
    std::thread::sleep(Duration::from_millis(2100));
    fw.ok(&["detach", "--all"])?;
    let started = std::time::Instant::now();
    fw.ok(&["attach", &iface, "--mode", "native"])?;
    let took = started.elapsed();
    println!("first attach with {entries} entries stored: {took:?}");
    ensure!(
        !raw_kernel_has(&fw, [192, 0, 2, 77])?,
        "an expired record was restored into the kernel"
    );
    fw.ok(&["detach", "--all"])?;
    let steps = 20u32;
    let mut disagreements = Vec::new();
    for i in 0..steps {
        let delay = took * i / steps;
        let mut child = fw
            .command(&["attach", &iface, "--mode", "native"])
            .spawn()?;
        std::thread::sleep(delay);
        child.kill()?;
        child.wait()?;
        // Any command finds a change a kill left half-done and finishes it.
        let status = fw.run(&["status", "--json"])?;
        let loaded = fw.pin_dir().join("prog").exists();
        if loaded {
            let kernel = raw_kernel_block_hosts(&fw)?;
            let listed = block_count(&fw)?;
            println!("killed after {delay:?}: kernel {kernel} hosts, list {listed}");
            if kernel != listed {
                disagreements.push(format!(
                    "killed after {delay:?}: kernel {kernel} host entries, list {listed} ({})",
                    String::from_utf8_lossy(&status.stderr).trim()
                ));
            }
            fw.ok(&["detach", "--all"])?;
        }
    }
    ensure!(
        disagreements.is_empty(),
        "after a killed first attach the kernel and the list disagree:\n{}",
        disagreements.join("\n")
    );
    Ok(())
}

/// Entries on the blocklist as the store holds them (`status`, faster than a whole list).
fn listed_count(fw: &Floodwall<'_>) -> Result<usize> {
    Ok(fw.status_json()?["lists"]["block"]
        .as_u64()
        .context("status has no block count")? as usize)
}

/// `block del` and `block flush` killed at any point: once the next command has run, the
/// kernel holds exactly what the list shows, which is everything before the change or
/// everything after it.
#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn sigkill_during_del_and_flush_leaves_kernel_and_store_agreeing() -> Result<()> {
    let host = Host::new("crd")?;
    let fw = host.attached()?;
    let entries = 50_000u32;
    let file = big_import_file(&fw, entries)?;
    fw.ok(&["block", "import", &file])?;
    // The first 5,000 entries, as `block del` arguments.
    let doomed: Vec<String> = (0..5_000u32)
        .map(|i| std::net::Ipv4Addr::from(0x0b00_0000 + i).to_string())
        .collect();
    let mut del_args = vec!["block", "del"];
    del_args.extend(doomed.iter().map(String::as_str));
    // How long each takes whole, to spread the kills over it.
    let timed = |args: &[&str]| -> Result<Duration> {
        let started = std::time::Instant::now();
        fw.ok(args)?;
        Ok(started.elapsed())
    };
    let del_time = timed(&del_args)?;
    let flush_time = timed(&["block", "flush"])?;
    println!("with {entries} entries: del of 5,000 {del_time:?}, flush {flush_time:?}");
    let mut disagreements = Vec::new();
    for i in 0..12u32 {
        fw.ok(&["block", "import", &file])?;
        let before = listed_count(&fw)?;
        let (what, whole, args) = if i % 2 == 0 {
            ("del", del_time, del_args.clone())
        } else {
            ("flush", flush_time, vec!["block", "flush"])
        };
        // From early to a little past the whole command.
        let delay = whole.mul_f64(f64::from(i / 2 + 1) / 5.0);
        let mut child = fw.command(&args).spawn()?;
        std::thread::sleep(delay);
        child.kill()?;
        let status = child.wait()?;
        let listed = listed_count(&fw)?;
        let kernel = raw_kernel_block_hosts(&fw)?;
        println!("{what} killed after {delay:?} ({status}): kernel {kernel}, list {listed}");
        let after = if what == "del" {
            before - doomed.len()
        } else {
            0
        };
        if kernel != listed || (listed != before && listed != after) {
            disagreements.push(format!(
                "{what} killed after {delay:?}: kernel {kernel}, list {listed} (before {before})"
            ));
        }
    }
    ensure!(
        disagreements.is_empty(),
        "a killed del or flush left kernel and store apart or half done:\n{}",
        disagreements.join("\n")
    );
    Ok(())
}
