//! `attach` and `detach`: the program's life on interfaces. The first attach loads and pins
//! the program and restores lists and limits from the state directory; the last detach removes
//! every pin (the state directory keeps everything for the next attach).

use std::path::Path;

use thiserror::Error;

use crate::{
    config::{ConfigError, FileConfig},
    kernel::{self, AttachMode, KernelError},
    limits::LimitsError,
    lists::{self, ListError},
    paths::{Paths, PathsError},
    state::{Lock, StateError},
    store::Store,
};

#[derive(Debug, Error)]
pub enum AttachError {
    #[error(transparent)]
    Kernel(#[from] KernelError),
    #[error(transparent)]
    Syncookies(#[from] crate::syncookies::SyncookiesError),
    #[error(transparent)]
    Paths(#[from] PathsError),
    #[error(transparent)]
    State(#[from] StateError),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    List(#[from] ListError),
    #[error(transparent)]
    Limits(#[from] LimitsError),
    #[error("no interface given: name one or more, or use --all")]
    NoInterface,
}

impl AttachError {
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            AttachError::Kernel(
                KernelError::UnknownInterface { .. }
                    | KernelError::AlreadyAttached { .. }
                    | KernelError::NotAttached { .. }
                    | KernelError::NotLoaded
                    | KernelError::OtherBuild { .. }
            ) | AttachError::Config(_)
                | AttachError::Limits(_)
                | AttachError::NoInterface
        )
    }
}

/// Options of `attach`.
pub struct AttachOptions<'a> {
    pub mode: AttachMode,
    /// An explicit config file: its limits replace the persisted ones.
    pub config: Option<&'a Path>,
    pub dry_run: bool,
}

/// Attaches to every interface or to none.
pub fn attach(
    paths: &Paths,
    ifaces: &[String],
    options: &AttachOptions<'_>,
) -> Result<Vec<(String, AttachMode)>, AttachError> {
    if ifaces.is_empty() {
        return Err(AttachError::NoInterface);
    }
    let mut unique: Vec<String> = Vec::with_capacity(ifaces.len());
    for iface in ifaces {
        if !unique.contains(iface) {
            unique.push(iface.clone());
        }
    }
    let ifaces = &unique[..];
    for iface in ifaces {
        if kernel::ifindex(iface).is_none() {
            return Err(KernelError::UnknownInterface {
                iface: iface.clone(),
            }
            .into());
        }
    }
    let file = FileConfig::load(
        options.config.unwrap_or(&paths.config),
        options.config.is_some(),
    )?;
    paths.ensure_bpffs()?;
    let _lock = Lock::acquire(paths)?;
    let attached = paths.links()?;
    if let Some(iface) = ifaces
        .iter()
        .find(|i| attached.iter().any(|(a, _, _)| a == *i))
    {
        return Err(KernelError::AlreadyAttached {
            iface: iface.clone(),
        }
        .into());
    }
    let mut store = Store::open(paths)?;
    let before = store.limits()?;
    let loaded_now = !paths.is_loaded();
    if loaded_now {
        // Until the lists and limits are in: a kill before then leaves a filter with part of
        // the blocklist, which the next command must complete rather than believe.
        lists::mark_pending(paths)?;
        kernel::load(paths, &file.capacity)?;
    }
    let result = (|| -> Result<Vec<(String, AttachMode)>, AttachError> {
        if loaded_now {
            lists::restore(paths, &store)?;
        } else {
            lists::recover(paths, &store)?;
        }
        let mut limits = match (options.config, before.clone()) {
            (None, Some(persisted)) => persisted,
            _ => file.limits.clone(),
        };
        if options.dry_run {
            limits.dry_run = true;
        }
        limits.validate()?;
        let max_frame = ifaces
            .iter()
            .filter_map(|i| kernel::max_frame_of(i))
            .chain([kernel::max_frame(paths)])
            .max()
            .unwrap_or(kernel::DEFAULT_MAX_FRAME);
        limits.validate_frames(max_frame)?;
        // The store, then the kernel; the change marker (set above for a first load) goes
        // only when both hold the lists and the limits.
        lists::change_limits(paths, &mut store, &limits)?;
        crate::syncookies::sync(paths, &limits)?;
        let mut done = Vec::new();
        for iface in ifaces {
            match kernel::attach(paths, iface, options.mode) {
                Ok(mode) => done.push((iface.clone(), mode)),
                Err(e) => {
                    for (iface, _) in &done {
                        let _ = kernel::detach(paths, iface);
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(done)
    })();
    if result.is_err() {
        // A failed attach changes nothing: not the persisted limits, and not the policy of a
        // filter that keeps running on other interfaces.
        if let Ok(change) = store.change()
            && change.set_limits(before.as_ref()).is_ok()
        {
            let _ = change.commit();
        }
        if loaded_now {
            let _ = kernel::unload(paths);
            lists::clear_pending(paths);
        } else if let Ok(bits) = store.list_bits() {
            let limits = before.clone().unwrap_or_default();
            let _ = crate::limits::publish(paths, &limits, bits);
        }
    }
    result
}

/// Detaches from the given interfaces (all must be attached), or from all. Returns what was
/// detached.
pub fn detach(paths: &Paths, ifaces: &[String], all: bool) -> Result<Vec<String>, AttachError> {
    if ifaces.is_empty() && !all {
        return Err(AttachError::NoInterface);
    }
    let _lock = Lock::acquire(paths)?;
    let attached: Vec<String> = paths.links()?.into_iter().map(|(i, _, _)| i).collect();
    let targets: Vec<String> = if all {
        attached.clone()
    } else {
        if let Some(iface) = ifaces.iter().find(|i| !attached.contains(i)) {
            return Err(KernelError::NotAttached {
                iface: iface.clone(),
            }
            .into());
        }
        ifaces.to_vec()
    };
    for iface in &targets {
        kernel::detach(paths, iface)?;
    }
    if paths.links()?.is_empty() && paths.is_loaded() {
        kernel::unload(paths)?;
        // No filter, no challenge: the host's own SYN handling comes back.
        crate::syncookies::release(paths)?;
    }
    Ok(targets)
}
