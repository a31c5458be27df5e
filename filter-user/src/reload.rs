//! `floodwall reload` and SIGHUP: re-read the config file and apply its limits live.

use filter_common::{MAP_BLOCK4_HOST, MAP_BLOCK4_NET, MAP_SOURCES};
use thiserror::Error;

use crate::{
    config::{ConfigError, FileConfig},
    kernel::{self, KernelError},
    paths::Paths,
    state::{Lock, StateError},
};

#[derive(Debug, Error)]
pub enum ReloadError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Syncookies(#[from] crate::syncookies::SyncookiesError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    List(#[from] crate::lists::ListError),
}

impl ReloadError {
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            ReloadError::Config(_) | ReloadError::Kernel(KernelError::NotLoaded)
        )
    }
}

pub struct ReloadReport {
    /// The `floodwall run` process told to reload its own settings.
    pub signalled: Option<i32>,
    /// The file asks for other map capacities than the loaded program has.
    pub capacity_changed: bool,
}

/// Reads the config file and applies its limits; then signals a running service.
pub fn reload(paths: &Paths) -> Result<ReloadReport, ReloadError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded.into());
    }
    let file = FileConfig::load(&paths.config, true)?;
    let capacity_changed = apply(paths, &file)?;
    let signalled = crate::pidfile::running_service(paths).filter(|pid| {
        // SAFETY: plain kill(2) on the pid of the process that holds our pid file's lock.
        unsafe { libc::kill(*pid, libc::SIGHUP) == 0 }
    });
    Ok(ReloadReport {
        signalled,
        capacity_changed,
    })
}

/// Applies the limits of `file` to the kernel and the state. Returns whether the file's map
/// capacities differ from the loaded ones (those need a fresh attach).
pub fn apply(paths: &Paths, file: &FileConfig) -> Result<bool, ReloadError> {
    let _lock = Lock::acquire(paths)?;
    let mut store = crate::store::Store::open(paths)?;
    file.limits
        .validate_frames(kernel::max_frame(paths))
        .map_err(|source| ConfigError::Limits {
            path: paths.config.clone(),
            source,
        })?;
    crate::lists::recover(paths, &store)?;
    crate::lists::change_limits(paths, &mut store, &file.limits)?;
    crate::syncookies::sync(paths, &file.limits)?;
    let fill = kernel::map_fill(paths)?;
    let capacity = |name: &str| fill.iter().find(|m| m.name == name).map(|m| m.capacity);
    Ok(capacity(MAP_BLOCK4_HOST) != Some(file.capacity.block_hosts)
        || capacity(MAP_BLOCK4_NET) != Some(file.capacity.block_nets)
        || capacity(MAP_SOURCES) != Some(file.capacity.sources))
}
