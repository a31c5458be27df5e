//! The command line's arguments, as clap derives them.

use super::*;

#[derive(Debug, Parser)]
#[command(
    name = "floodwall",
    version,
    about = "XDP flood filter: per-source limits and CIDR lists, enforced before the kernel spends anything on a packet"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the filter (first time) and attach it to interfaces
    Attach {
        #[arg(required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
        /// XDP mode: native (driver), skb (generic), or auto (native, else skb)
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
        /// Config file whose limits to apply (default: the persisted limits)
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Decide and count, but pass every packet
        #[arg(long)]
        dry_run: bool,
        /// Print what was attached as JSON
        #[arg(long)]
        json: bool,
    },
    /// Detach from interfaces; the last detach unloads the filter (lists and limits persist)
    Detach {
        #[arg(
            value_name = "IFACE",
            required_unless_present = "all",
            conflicts_with = "all"
        )]
        ifaces: Vec<String>,
        /// Detach from every interface
        #[arg(long)]
        all: bool,
        /// Print what was detached as JSON
        #[arg(long)]
        json: bool,
    },
    /// Interfaces, limits, list sizes and map fill levels
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The blocklist: sources dropped before anything else
    #[command(subcommand)]
    Block(ListCommand),
    /// The allowlist: sources passed without any limit
    #[command(subcommand)]
    Allow(ListCommand),
    /// Per-source and global limits
    #[command(subcommand)]
    Limit(LimitCommand),
    /// Packets and bytes per reason and interface
    Stats {
        #[arg(long)]
        json: bool,
        /// Refresh every SECS seconds (default 1) and show rates per second
        #[arg(long, value_name = "SECS", num_args = 0..=1, default_missing_value = "1")]
        watch: Option<u64>,
    },
    /// Run as a service: attach (or adopt), log drops, ban repeat offenders, serve metrics
    Run {
        #[arg(required = true, value_name = "IFACE")]
        ifaces: Vec<String>,
        #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
        mode: AttachMode,
        /// Config file (default: $FLOODWALL_CONFIG or /etc/floodwall/floodwall.toml)
        #[arg(long, value_name = "PATH")]
        config: Option<PathBuf>,
        /// Address for the Prometheus endpoint (default 127.0.0.1:9477)
        #[arg(long, value_name = "ADDR")]
        metrics: Option<std::net::SocketAddr>,
        /// Detach from the interfaces on exit (by default the filter stays attached)
        #[arg(long)]
        detach_on_exit: bool,
    },
    /// Re-read the config file and apply its limits live (and tell `floodwall run`)
    Reload,
    /// Print a shell completion script
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff)
    Man,
    /// The heaviest sources and their state
    Top {
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        #[arg(long)]
        json: bool,
    },
    /// A live line per decided frame from CIDR (verdict, reason, interface, length), from
    /// the kernel; off again when the command ends or is killed
    Trace {
        #[arg(value_name = "CIDR")]
        cidr: String,
        /// Stop after this many seconds
        #[arg(long)]
        seconds: Option<u64>,
        /// Stop after this many lines
        #[arg(long)]
        count: Option<u64>,
        /// Lines per second at most; the kernel drops the rest and counts them
        /// (trace_suppressed in `stats`)
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..=100_000))]
        rate: u64,
    },
    /// Why a frame from this address gets the verdict it gets now: list entries, its source
    /// key, its limiter state, admission, the challenge, the global caps
    Explain {
        #[arg(value_name = "ADDR")]
        addr: std::net::IpAddr,
        /// The frame length the verdict is for (bytes, Ethernet header included)
        #[arg(long, default_value_t = 64)]
        len: u64,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ListCommand {
    /// Add addresses or CIDRs
    Add {
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        /// Remove the entry after this long (30s, 10m, 2h, 1d)
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        comment: Option<String>,
        /// Block even a prefix that holds one of this host's own addresses
        #[arg(long)]
        force: bool,
        /// Print what changed as JSON
        #[arg(long)]
        json: bool,
    },
    /// Remove addresses or CIDRs
    Del {
        #[arg(required = true, value_name = "CIDR")]
        cidrs: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Show the entries, with time left and origin
    List {
        #[arg(long)]
        json: bool,
        /// Only entries of this origin: manual, import, auto, crowdsec
        #[arg(long, value_parser = parse_origin)]
        origin: Option<Origin>,
        /// Only entries that cover this address
        #[arg(long, value_name = "ADDR")]
        contains: Option<std::net::IpAddr>,
    },
    /// Add every entry of a file (plain, ipset save, FireHOL, Spamhaus DROP), or - for stdin
    Import {
        #[arg(value_name = "FILE")]
        file: String,
        #[arg(long, value_parser = parse_duration)]
        ttl: Option<Duration>,
        #[arg(long)]
        comment: Option<String>,
        #[arg(long)]
        force: bool,
        /// Make the imported entries exactly this file: earlier imported entries missing from
        /// it are removed in the same change (for feeds); entries of other origins stay
        #[arg(long)]
        replace: bool,
        #[arg(long)]
        json: bool,
    },
    /// Remove every entry
    Flush {
        #[arg(long)]
        json: bool,
    },
}

fn parse_origin(text: &str) -> Result<Origin, String> {
    Origin::from_name(text)
        .ok_or_else(|| format!("`{text}` is not an origin: use manual, import, auto or crowdsec"))
}

#[derive(Debug, Subcommand)]
pub enum LimitCommand {
    /// Change limits live; flags not given keep their value
    Set(LimitArgs),
    /// Show the limits in force
    Show {
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
pub struct LimitArgs {
    /// Packets per second per source (0: off)
    #[arg(long)]
    pub pps: Option<u64>,
    /// Packets a source may send at once (0: one second's worth)
    #[arg(long)]
    pub burst: Option<u64>,
    /// Bytes per second per source (0: off)
    #[arg(long)]
    pub bps: Option<u64>,
    /// Bytes a source may send at once (0: one second's worth)
    #[arg(long)]
    pub burst_bytes: Option<u64>,
    /// IPv4 prefix length that counts as one source
    #[arg(long)]
    pub prefix4: Option<u32>,
    /// IPv6 prefix length that counts as one source
    #[arg(long)]
    pub prefix6: Option<u32>,
    /// Total packets per second (0: no cap)
    #[arg(long)]
    pub global_pps: Option<u64>,
    /// Total bytes per second (0: no cap)
    #[arg(long)]
    pub global_bps: Option<u64>,
    /// New sources given their own state per second (0: all)
    #[arg(long)]
    pub new_sources: Option<u64>,
    /// Packets per second shared by sources still without state
    #[arg(long)]
    pub newcomer_pps: Option<u64>,
    /// Pass everything but count what would be dropped
    #[arg(long)]
    pub dry_run: Option<bool>,
    /// What to do with frames that cannot be parsed
    #[arg(long, value_enum)]
    pub malformed: Option<MalformedAction>,
    /// Answer SYNs from sources without state with a SYN cookie (auto: while sources are shed
    /// as newcomers, switched by `floodwall run`)
    #[arg(long, value_enum)]
    pub syn_cookies: Option<SynCookies>,
    /// Ports the SYN challenge covers, comma-separated, or `all` (every port with a listener)
    #[arg(long, value_parser = parse_ports)]
    pub syn_ports: Option<SynPorts>,
    /// Print the limits in force afterwards as JSON
    #[arg(long)]
    pub json: bool,
}

/// `--syn-ports`: a list, or every port with a listener.
#[derive(Clone, Debug)]
pub struct SynPorts(pub Vec<u16>);

fn parse_ports(text: &str) -> Result<SynPorts, String> {
    if text.trim() == "all" {
        return Ok(SynPorts(Vec::new()));
    }
    text.split(',')
        .map(|p| {
            p.trim().parse::<u16>().map_err(|_| {
                format!(
                    "`{}` is not a port (1-65535), and the list not `all`",
                    p.trim()
                )
            })
        })
        .collect::<Result<Vec<_>, _>>()
        .map(SynPorts)
}

/// Parses `30s`, `10m`, `2h`, `1d`, `1w` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    // Plain seconds, or humantime's units and combinations (`90s`, `10m`, `1h30m`, `1d`, `1w`).
    let duration = match text.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => humantime::parse_duration(text).map_err(|e| {
            format!(
                "`{text}` is not a duration ({e}): use seconds or units such as 30s, 10m, 1h30m, \
                 1d, 1w"
            )
        })?,
    };
    if duration < Duration::from_secs(1) {
        return Err(format!("`{text}`: a TTL must be at least one second"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("1w"), Ok(Duration::from_secs(604_800)));
        for bad in [
            "",
            "s",
            "1x",
            "-1s",
            "0s",
            "0",
            "500ms",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn parses_the_documented_commands() {
        for args in [
            &[
                "floodwall",
                "attach",
                "eth0",
                "eth1",
                "--mode",
                "skb",
                "--dry-run",
            ][..],
            &["floodwall", "detach", "--all"],
            &[
                "floodwall",
                "block",
                "add",
                "10.0.0.0/8",
                "--ttl",
                "1h",
                "--comment",
                "x",
            ],
            &["floodwall", "allow", "import", "-"],
            &[
                "floodwall",
                "limit",
                "set",
                "--pps",
                "100",
                "--burst",
                "10",
                "--prefix6",
                "56",
            ],
            &["floodwall", "stats", "--watch"],
            &["floodwall", "stats", "--watch", "5", "--json"],
            &["floodwall", "top", "-n", "5", "--json"],
            &["floodwall", "completions", "bash"],
            &["floodwall", "man"],
            &["floodwall", "reload"],
            &[
                "floodwall",
                "run",
                "eth0",
                "--metrics",
                "127.0.0.1:9100",
                "--detach-on-exit",
            ],
        ] {
            Cli::try_parse_from(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
        assert!(Cli::try_parse_from(["floodwall", "detach"]).is_err());
        assert!(Cli::try_parse_from(["floodwall", "attach", "--mode", "fast", "eth0"]).is_err());
    }
}
