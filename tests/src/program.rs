//! The XDP program loaded privately (its own bpffs and state directory) and run on crafted
//! frames with `BPF_PROG_TEST_RUN`, for verdict, accuracy and flood tests.

use std::{
    collections::BTreeMap,
    sync::Barrier,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use aya::programs::{TestRun as _, TestRunOptions, Xdp};
use aya_obj::programs::XdpAttachType;
use filter_common::Reason;
use floodwall::{
    config::Capacity,
    kernel,
    limits::Limits,
    lists::{self, AddOptions},
    paths::Paths,
    state::{ListKind, Lock, Origin},
};

use crate::netns::{BpffsDir, StateDir};

/// A loaded, unattached floodwall program; everything is removed on drop.
pub struct Loaded {
    pub paths: Paths,
    program: Xdp,
    // Dropped after `program`: the pins live in this bpffs.
    _state: StateDir,
    _bpffs: BpffsDir,
}

impl Loaded {
    /// Loads with default capacities and default limits (no per-source limit).
    pub fn new() -> Result<Loaded> {
        Loaded::with_capacity(&Capacity::default())
    }

    pub fn with_capacity(capacity: &Capacity) -> Result<Loaded> {
        let bpffs = BpffsDir::new()?;
        let state = StateDir::new()?;
        let paths = Paths {
            bpffs: bpffs.path().join("fw"),
            state_dir: state.path().to_owned(),
            config: state.path().join("floodwall.toml"),
        };
        paths.ensure_bpffs().context("bpffs for the test")?;
        kernel::load(&paths, capacity).context("loading the XDP program")?;
        let program = Xdp::from_pin(paths.program_pin(), XdpAttachType::Interface)
            .context("reopening the pinned program")?;
        let loaded = Loaded {
            paths,
            program,
            _state: state,
            _bpffs: bpffs,
        };
        loaded.set_limits(&Limits::default())?;
        Ok(loaded)
    }

    /// Writes `limits` (with the list bits of the current lists) into the live config, and
    /// resets the global buckets so each test starts from full bursts.
    pub fn set_limits(&self, limits: &Limits) -> Result<()> {
        // The controller's own limits transaction, as `limit set` runs it.
        let _lock = Lock::acquire(&self.paths)?;
        let mut store = floodwall::store::Store::open(&self.paths)?;
        lists::change_limits(&self.paths, &mut store, limits)?;
        kernel::reset_globals(&self.paths)?;
        Ok(())
    }

    /// Adds CIDRs to a list through the controller's own code path.
    pub fn add(
        &self,
        kind: ListKind,
        cidrs: &[&str],
        ttl: Option<std::time::Duration>,
    ) -> Result<()> {
        let cidrs = cidrs
            .iter()
            .map(|c| c.parse().with_context(|| format!("cidr {c}")))
            .collect::<Result<Vec<_>>>()?;
        let options = AddOptions {
            ttl,
            comment: None,
            origin: Origin::Manual,
            force: true,
        };
        lists::add(&self.paths, kind, &cidrs, &options)?;
        Ok(())
    }

    /// Instructions the verifier processed to accept the program: its complexity budget in use
    /// (the kernel's limit is 1,000,000).
    pub fn verified_insns(&self) -> Result<u32> {
        Ok(self
            .program
            .info()
            .context("program info")?
            .verified_instruction_count()
            .unwrap_or(0))
    }

    /// The program's descriptor (to put it in a program array).
    pub fn fd(&self) -> Result<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd as _;
        Ok(self
            .program
            .fd()
            .context("the program is not loaded")?
            .as_fd())
    }

    /// Runs the program once on `frame`; returns the XDP verdict.
    pub fn run(&self, frame: &[u8]) -> Result<u32> {
        Ok(self.run_repeat(frame, 1)?.0)
    }

    /// Runs the program once on `frame`; returns the verdict and the frame as the program left
    /// it (rewritten, for a challenged SYN).
    pub fn run_out(&self, frame: &[u8]) -> Result<(u32, Vec<u8>)> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat: 1,
            ..TestRunOptions::default()
        };
        let result = self.program.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        out.truncate(result.data_size_out as usize);
        Ok((result.return_value, out))
    }

    /// Runs the program `repeat` times on `frame` in the kernel; returns the last verdict and
    /// the mean time per run in ns as the kernel measured it.
    pub fn run_repeat(&self, frame: &[u8], repeat: u32) -> Result<(u32, u64)> {
        let mut out = vec![0u8; frame.len() + 256];
        let opts = TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..TestRunOptions::default()
        };
        let result = self.program.test_run(opts).context("BPF_PROG_TEST_RUN")?;
        let per_run = result.duration.as_nanos() as u64;
        Ok((result.return_value, per_run))
    }

    /// Packets per reason, summed over interfaces and CPUs.
    pub fn counters(&self) -> Result<BTreeMap<Reason, u64>> {
        let mut out: BTreeMap<Reason, u64> = Reason::ALL.iter().map(|r| (*r, 0)).collect();
        for (_, reason, counter) in kernel::read_counters(&self.paths)? {
            *out.entry(reason).or_default() += counter.packets;
        }
        Ok(out)
    }

    /// Runs `frame` once and returns the verdict and the one reason it was counted under
    /// (besides `dry_run`, which is returned second when it was also counted).
    pub fn verdict(&self, frame: &[u8]) -> Result<(u32, Reason, bool)> {
        let before = self.counters()?;
        let verdict = self.run(frame)?;
        let after = self.counters()?;
        let changed: Vec<Reason> = Reason::ALL
            .iter()
            .copied()
            .filter(|r| after[r] != before[r])
            .collect();
        let dry = changed.contains(&Reason::DryRunPassed);
        let main: Vec<Reason> = changed
            .into_iter()
            .filter(|r| *r != Reason::DryRunPassed)
            .collect();
        anyhow::ensure!(
            main.len() == 1,
            "frame counted under {main:?}, expected exactly one reason"
        );
        Ok((verdict, main[0], dry))
    }
}

/// CPUs this process may run on.
pub fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Pins the calling thread to `cpu`.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; we set one bit and apply it to this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

impl Loaded {
    /// Runs `frame` for `duration` from `workers` threads pinned round-robin to the CPUs, all
    /// at once. Returns how long they ran: from when every worker was ready to when the last
    /// one's final run returned.
    pub fn run_from_cpus(
        &self,
        frame: &[u8],
        workers: usize,
        duration: Duration,
    ) -> Result<Duration> {
        let ready = Barrier::new(workers + 1);
        std::thread::scope(|s| -> Result<Duration> {
            let handles: Vec<_> = (0..workers)
                .map(|cpu| {
                    let ready = &ready;
                    s.spawn(move || -> Result<Instant> {
                        pin_to_cpu(cpu % cpus());
                        ready.wait();
                        let start = Instant::now();
                        while start.elapsed() < duration {
                            self.run_repeat(frame, 20_000)?;
                        }
                        Ok(Instant::now())
                    })
                })
                .collect();
            ready.wait();
            let start = Instant::now();
            let mut end = start;
            for h in handles {
                end = end.max(
                    h.join()
                        .map_err(|_| anyhow::anyhow!("sender thread panicked"))??,
                );
            }
            Ok(end - start)
        })
    }
}
