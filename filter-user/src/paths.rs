//! Where floodwall keeps things: pins under bpffs, persistent state, the config file.
//! Every path is here, and each can be moved by an environment variable so tests run isolated.

use std::{
    ffi::CString,
    fs,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub const ENV_BPFFS: &str = "FLOODWALL_BPFFS";
pub const ENV_STATE_DIR: &str = "FLOODWALL_STATE_DIR";
pub const ENV_CONFIG: &str = "FLOODWALL_CONFIG";

pub const DEFAULT_BPFFS: &str = "/sys/fs/bpf/floodwall";
pub const DEFAULT_STATE_DIR: &str = "/var/lib/floodwall";
pub const DEFAULT_CONFIG: &str = "/etc/floodwall/floodwall.toml";

/// The bpffs mount point floodwall mounts when the default pin directory lacks one.
const SYSTEM_BPFFS: &str = "/sys/fs/bpf";
/// `statfs` magic of bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

/// The pinned program's file name.
const PROGRAM_PIN: &str = "prog";
/// Prefix of pinned XDP links: `link_<mode>_<ifname>`. bpffs refuses names with a dot, so
/// the interface name is escaped (`.` → `%2E`, `%` → `%25`).
const LINK_PIN_PREFIX: &str = "link_";

#[derive(Debug, Error)]
pub enum PathsError {
    #[error(
        "`{path}` is not on a mounted bpffs: mount one (`mkdir -p {path} && mount -t bpf bpf \
         {path}`) or point {ENV_BPFFS} at a directory on bpffs"
    )]
    NotBpffs { path: PathBuf },
    #[error(
        "permission denied on `{path}`: floodwall needs root (CAP_BPF, CAP_NET_ADMIN and \
         CAP_PERFMON, and read-write access to its pins and state directory)"
    )]
    PermissionDenied { path: PathBuf },
    #[error(
        "cannot mount bpffs at `{SYSTEM_BPFFS}`: {source}; mount it by hand (`mount -t bpf bpf {SYSTEM_BPFFS}`), which needs CAP_SYS_ADMIN"
    )]
    Mount {
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create `{path}`: {source}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The directories and files of one floodwall instance.
#[derive(Clone, Debug)]
pub struct Paths {
    pub bpffs: PathBuf,
    pub state_dir: PathBuf,
    pub config: PathBuf,
}

impl Paths {
    /// Paths from the environment, else the defaults.
    pub fn from_env() -> Paths {
        let var = |name: &str, default: &str| {
            std::env::var_os(name)
                .filter(|v| !v.is_empty())
                .map_or_else(|| PathBuf::from(default), PathBuf::from)
        };
        Paths {
            bpffs: var(ENV_BPFFS, DEFAULT_BPFFS),
            state_dir: var(ENV_STATE_DIR, DEFAULT_STATE_DIR),
            config: var(ENV_CONFIG, DEFAULT_CONFIG),
        }
    }

    pub fn program_pin(&self) -> PathBuf {
        self.bpffs.join(PROGRAM_PIN)
    }

    pub fn map_pin(&self, name: &str) -> PathBuf {
        self.bpffs.join(name)
    }

    pub fn link_pin(&self, mode: &str, iface: &str) -> PathBuf {
        let escaped = iface.replace('%', "%25").replace('.', "%2E");
        self.bpffs
            .join(format!("{LINK_PIN_PREFIX}{mode}_{escaped}"))
    }

    /// The SQLite store of lists and limits.
    pub fn store_file(&self) -> PathBuf {
        self.state_dir.join("floodwall.db")
    }

    /// The JSON state of floodwalls before the store: read once, to migrate it.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// Exists while a list change is being applied: if a command finds it, the one before it
    /// died half-way and the kernel lists are brought back in line with the state file.
    /// What `floodwall run`'s CrowdSec bouncer last reported, for `status`.
    pub fn crowdsec_status_file(&self) -> PathBuf {
        self.state_dir.join("crowdsec.json")
    }

    pub fn pending_file(&self) -> PathBuf {
        self.state_dir.join("lists.pending")
    }

    /// Holds the pid of `floodwall run` while it runs.
    pub fn run_pid_file(&self) -> PathBuf {
        self.state_dir.join("run.pid")
    }

    pub fn lock_file(&self) -> PathBuf {
        self.state_dir.join("lock")
    }

    /// Whether the program is loaded and pinned (floodwall is attached somewhere).
    pub fn is_loaded(&self) -> bool {
        self.program_pin().exists()
    }

    /// The pinned links: (interface, mode, pin path), sorted by interface.
    pub fn links(&self) -> Result<Vec<(String, String, PathBuf)>, PathsError> {
        let entries = match fs::read_dir(&self.bpffs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) if is_denied(&source) => {
                return Err(PathsError::PermissionDenied {
                    path: self.bpffs.clone(),
                });
            }
            Err(source) => {
                return Err(PathsError::Read {
                    path: self.bpffs.clone(),
                    source,
                });
            }
        };
        let mut links = Vec::new();
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(rest) = name.strip_prefix(LINK_PIN_PREFIX)
                && let Some((mode, escaped)) = rest.split_once('_')
            {
                let iface = escaped.replace("%2E", ".").replace("%25", "%");
                links.push((iface, mode.to_owned(), entry.path()));
            }
        }
        links.sort();
        Ok(links)
    }

    /// Makes sure the pin directory exists on bpffs. The default location gets bpffs mounted
    /// at /sys/fs/bpf when it is missing; an explicit `FLOODWALL_BPFFS` must already be on one.
    pub fn ensure_bpffs(&self) -> Result<(), PathsError> {
        if self.bpffs == Path::new(DEFAULT_BPFFS) && !is_bpffs(Path::new(SYSTEM_BPFFS)) {
            mount_bpffs(Path::new(SYSTEM_BPFFS))?;
        }
        // A directory still to be made lands on the filesystem of its nearest existing ancestor.
        let on_bpffs = self
            .bpffs
            .ancestors()
            .find(|p| p.exists())
            .is_some_and(is_bpffs);
        if !on_bpffs {
            return Err(PathsError::NotBpffs {
                path: self.bpffs.clone(),
            });
        }
        fs::create_dir_all(&self.bpffs).map_err(|source| create_error(&self.bpffs, source))
    }

    pub fn ensure_state_dir(&self) -> Result<(), PathsError> {
        fs::create_dir_all(&self.state_dir).map_err(|source| create_error(&self.state_dir, source))
    }

    /// Fails with [`PathsError::PermissionDenied`] when this process may not use the pinned
    /// program or the state directory (it is not root), so that it says so up front instead
    /// of "not attached" (from a pin it cannot see) or a bare EACCES half-way through.
    pub fn check_access(&self) -> Result<(), PathsError> {
        for (path, mode) in [
            (self.program_pin(), libc::R_OK | libc::W_OK),
            (self.state_dir.clone(), libc::R_OK | libc::W_OK | libc::X_OK),
        ] {
            let denied = match fs::metadata(&path) {
                Ok(_) => access_denied(&path, mode),
                Err(e) => is_denied(&e),
            };
            if denied {
                return Err(PathsError::PermissionDenied { path });
            }
        }
        Ok(())
    }
}

fn is_denied(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES | libc::EPERM))
}

fn create_error(path: &Path, source: std::io::Error) -> PathsError {
    let path = path.to_owned();
    if is_denied(&source) {
        PathsError::PermissionDenied { path }
    } else {
        PathsError::Create { path, source }
    }
}

/// Whether the effective user, with its capabilities, is refused `mode` on `path`.
fn access_denied(path: &Path, mode: libc::c_int) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: a NUL-terminated path that outlives the call.
    let rc = unsafe { libc::faccessat(libc::AT_FDCWD, c_path.as_ptr(), mode, libc::AT_EACCESS) };
    rc != 0 && is_denied(&std::io::Error::last_os_error())
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c_path) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid out-parameter; the path is NUL-terminated.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    rc == 0 && stat.f_type as i64 == BPF_FS_MAGIC
}

fn mount_bpffs(path: &Path) -> Result<(), PathsError> {
    let target = CString::new(path.as_os_str().as_bytes()).map_err(|e| PathsError::Mount {
        source: std::io::Error::other(e),
    })?;
    // SAFETY: all strings are NUL-terminated and outlive the call.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            target.as_ptr(),
            c"bpf".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(PathsError::Mount {
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_pins_round_trip_interface_names() {
        let dir = std::env::temp_dir().join(format!("floodwall-paths-{}", std::process::id()));
        let paths = Paths {
            bpffs: dir.clone(),
            state_dir: dir.clone(),
            config: dir.join("c.toml"),
        };
        fs::create_dir_all(&dir).expect("temp dir");
        for iface in ["eth0", "eth0.100", "we%rd_name"] {
            let pin = paths.link_pin("native", iface);
            assert!(
                !pin.file_name()
                    .is_some_and(|n| n.to_string_lossy().contains('.'))
            );
            fs::write(&pin, b"").expect("write");
        }
        let mut names: Vec<String> = paths
            .links()
            .expect("links")
            .into_iter()
            .map(|l| l.0)
            .collect();
        names.sort();
        assert_eq!(names, ["eth0", "eth0.100", "we%rd_name"]);
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
