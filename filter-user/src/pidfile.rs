//! The service's pid file (`STATE_DIR/run.pid`), locked with `flock` for the service's whole
//! life. A pid in it counts only while that lock is held, so a pid left by a killed service
//! (and perhaps reused by an unrelated process) is never signalled, and a second `run` cannot
//! start beside the first.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read as _, Seek as _, Write as _},
    os::fd::AsRawFd as _,
    path::PathBuf,
};

use thiserror::Error;

use crate::paths::Paths;

#[derive(Debug, Error)]
pub enum PidFileError {
    #[error("floodwall run is already running (pid {pid}, holding `{path}`): stop it first")]
    AlreadyRunning { pid: i32, path: PathBuf },
    #[error("cannot use the pid file `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The pid file, claimed by this process until dropped.
#[derive(Debug)]
pub struct PidFile {
    file: File,
}

fn open(path: &PathBuf) -> io::Result<File> {
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(path)
}

fn read_pid(file: &mut File) -> Option<i32> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

/// `flock` without waiting; `Ok(false)` when another process holds the lock.
fn try_lock(file: &File, operation: libc::c_int) -> io::Result<bool> {
    // SAFETY: flock on an fd we own; released when the file is closed.
    if unsafe { libc::flock(file.as_raw_fd(), operation | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

impl PidFile {
    /// Locks the pid file and writes this process's pid into it.
    pub fn claim(paths: &Paths) -> Result<PidFile, PidFileError> {
        let path = paths.run_pid_file();
        let io = |source| PidFileError::Io {
            path: path.clone(),
            source,
        };
        let mut file = open(&path).map_err(io)?;
        if !try_lock(&file, libc::LOCK_EX).map_err(io)? {
            return Err(PidFileError::AlreadyRunning {
                pid: read_pid(&mut file).unwrap_or(0),
                path,
            });
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(PidFile { file })
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        // Emptied, not removed: a process that opened the file meanwhile still locks the
        // same one. The lock goes with the descriptor.
        let _ = self.file.set_len(0);
    }
}

/// The pid of the `floodwall run` that holds the pid file, if one does.
pub fn running_service(paths: &Paths) -> Option<i32> {
    let path = paths.run_pid_file();
    let mut file = File::open(&path).ok()?;
    match try_lock(&file, libc::LOCK_SH) {
        // Nobody holds it: whatever pid it names is not floodwall's.
        Ok(true) | Err(_) => None,
        Ok(false) => read_pid(&mut file).filter(|pid| *pid > 0),
    }
}
