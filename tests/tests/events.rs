//! Drop-event sampling in the kernel: at most `events_per_sec` in all (a bucket with a burst of
//! one second), at most one per source per `event_interval_secs`, and a flood from one source
//! never spends the budget other sources' first drops need. Each CPU notes until when it found
//! the budget spent; the budget must still come back on time. Every dropped frame is counted
//! as sent or suppressed. Frames go through the kernel program with `BPF_PROG_TEST_RUN` from
//! one thread pinned to one CPU, so one CPU's notes are what is tested.

use std::{
    net::{IpAddr, Ipv4Addr},
    thread::sleep,
    time::{Duration, Instant},
};

use anyhow::{Result, ensure};
use filter_common::{MISC_EVENTS_RING_FULL, MISC_EVENTS_SENT, MISC_EVENTS_SUPPRESSED, Reason};
use floodwall::{kernel, limits::Limits, state::ListKind};
use floodwall_tests::{
    frames::udp,
    program::{Loaded, pin_to_cpu},
};

const XDP_DROP: u32 = 1;
const RATE: u64 = 20;

struct Events {
    sent: u64,
    suppressed: u64,
    ring_full: u64,
}

fn events(fw: &Loaded) -> Result<Events> {
    let misc = kernel::read_misc(&fw.paths)?;
    Ok(Events {
        sent: misc[MISC_EVENTS_SENT as usize],
        suppressed: misc[MISC_EVENTS_SUPPRESSED as usize],
        ring_full: misc[MISC_EVENTS_RING_FULL as usize],
    })
}

/// A blocked source: 10.9.0.0/16, the `n`th address in it.
fn source(n: u32) -> Vec<u8> {
    let [_, _, a, b] = n.to_be_bytes();
    udp(IpAddr::V4(Ipv4Addr::new(10, 9, a, b)), 16)
}

fn drop_all(fw: &Loaded, frames: impl IntoIterator<Item = Vec<u8>>) -> Result<u64> {
    let mut n = 0;
    for frame in frames {
        ensure!(fw.run(&frame)? == XDP_DROP, "a blocklisted frame passed");
        n += 1;
    }
    Ok(n)
}

/// Tokens the budget can have given out by `elapsed` after it was full: the burst, the rate
/// over the time, and one for the clock's tick.
fn allowed(elapsed: Duration) -> u64 {
    RATE + (RATE as f64 * elapsed.as_secs_f64()).ceil() as u64 + 1
}

#[test]
#[ignore = "needs root: run with cargo xtask test"]
fn events_keep_their_budget_and_interval_and_the_budget_comes_back() -> Result<()> {
    pin_to_cpu(0);
    let fw = Loaded::new()?;
    fw.add(ListKind::Block, &["10.9.0.0/16"], None)?;
    fw.set_limits(&Limits {
        events_per_sec: RATE,
        event_interval_secs: 10,
        ..Limits::default()
    })?;
    let start = Instant::now();
    let mut dropped = 0;

    // One source flooding: reported once, and the budget is left for the others.
    let flood = source(1);
    dropped += drop_all(&fw, std::iter::repeat_n(flood, 2_000))?;
    let e = events(&fw)?;
    ensure!(
        e.sent == 1,
        "a one-source flood sent {} events, not 1",
        e.sent
    );

    // Many sources: the budget's burst goes to the first of them, then it is spent.
    dropped += drop_all(&fw, (1_000..3_000).map(source))?;
    let spent = events(&fw)?;
    let elapsed = start.elapsed();
    ensure!(
        spent.sent >= RATE && spent.sent <= allowed(elapsed),
        "{} events sent in {elapsed:?} from 2,001 sources; the budget allows {RATE} at once \
         and {RATE}/s",
        spent.sent
    );

    // The budget comes back at its rate, on the CPU that found it spent: a new source is
    // reported as soon as a token has returned, whatever this CPU noted.
    sleep(Duration::from_millis(300));
    let before = Instant::now();
    dropped += drop_all(&fw, (4_000..4_400).map(source))?;
    let back = events(&fw)?;
    let returned = back.sent - spent.sent;
    let waited = before.elapsed() + Duration::from_millis(300);
    ensure!(
        returned >= 4 && back.sent <= allowed(start.elapsed()),
        "{returned} events after the budget refilled for {waited:?} at {RATE}/s (at least 4 \
         expected); {} in all",
        back.sent
    );

    // Two sources taking turns with budget to spare: each is reported once in its interval.
    sleep(Duration::from_millis(300));
    let turns = [source(5_000), source(5_001)];
    dropped += drop_all(&fw, (0..200).map(|i| turns[i % 2].clone()))?;
    let turned = events(&fw)?;
    ensure!(
        turned.sent - back.sent == 2,
        "two sources taking turns sent {} events in their interval, not 2",
        turned.sent - back.sent
    );

    // Every dropped frame was counted once: sent, suppressed or refused by a full ring.
    let counted = turned.sent + turned.suppressed + turned.ring_full;
    ensure!(
        counted == dropped && fw.counters()?[&Reason::Blocklisted] == dropped,
        "{dropped} frames dropped; events sent {}, suppressed {}, ring full {}",
        turned.sent,
        turned.suppressed,
        turned.ring_full
    );
    eprintln!(
        "events: one-source flood 1, {} from 2,001 sources, {returned} after {waited:?}, {} of \
         {dropped} dropped frames suppressed",
        spent.sent, turned.suppressed
    );
    Ok(())
}
