//! `floodwall limit set` and `limit show`.

use super::render::print_limits;
use super::*;

pub(super) fn current_limits(paths: &Paths) -> Result<Limits, CliError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded.into());
    }
    Ok(crate::store::Store::open(paths)?
        .limits()?
        .unwrap_or_default())
}

pub(super) fn limit_set(paths: &Paths, args: &LimitArgs) -> Result<(), CliError> {
    if !paths.is_loaded() {
        return Err(KernelError::NotLoaded.into());
    }
    let _lock = Lock::acquire(paths)?;
    let mut store = crate::store::Store::open(paths)?;
    let mut limits = store.limits()?.unwrap_or_default();
    macro_rules! apply {
        ($($field:ident),*) => { $( if let Some(v) = args.$field { limits.$field = v; } )* };
    }
    apply!(
        pps,
        burst,
        bps,
        burst_bytes,
        prefix4,
        prefix6,
        global_pps,
        global_bps,
        new_sources,
        newcomer_pps,
        dry_run,
        malformed,
        syn_cookies
    );
    if let Some(SynPorts(ports)) = &args.syn_ports {
        limits.syn_ports = ports.clone();
    }
    limits.validate()?;
    limits.validate_frames(kernel::max_frame(paths))?;
    // A change a killed command left half-done is finished first.
    lists::recover(paths, &store)?;
    lists::change_limits(paths, &mut store, &limits)?;
    if limits.syn_cookies != SynCookies::Auto {
        // Only the service switches `auto`; any other mode leaves nothing switched.
        kernel::set_syn_auto_active(paths, false)?;
    }
    crate::syncookies::sync(paths, &limits)?;
    if args.json {
        print_json(&serde_json::to_value(&limits).map_err(|e| CliError::Output(e.into()))?)?;
    } else {
        print_limits(&limits, kernel::max_frame(paths));
    }
    Ok(())
}

pub(super) fn limit_show(paths: &Paths, json: bool) -> Result<(), CliError> {
    let limits = current_limits(paths)?;
    if json {
        print_json(&serde_json::to_value(&limits).map_err(|e| CliError::Output(e.into()))?)?;
    } else {
        print_limits(&limits, kernel::max_frame(paths));
    }
    Ok(())
}
