//! The reaper: the one place in the agent process that waits for children. It owns
//! `waitid`/`waitpid`; no other code in the agent process may wait (no
//! `Child::wait`, no `Command::status`), or it would steal exit statuses.
//!
//! # Design (the PID-1 reaper problem)
//! As PID 1 (or, in host mode, a child subreaper) the agent inherits every orphan and
//! must reap them all, while libcontainer waits for its intermediate process with
//! `waitpid(pid)`. A `waitpid(-1)` loop in the same process would steal that status.
//! The agent therefore never calls libcontainer's create/exec in its own process: it
//! runs them in a short-lived, single-threaded *helper* child (`moat-agent __helper`),
//! so libcontainer's intermediate process is the helper's child, waited for by the
//! helper, out of this reaper's reach. (Forking a multi-threaded process, which
//! libcontainer's `clone3` would do from the agent, is unsafe anyway.) The container's
//! init process is cloned with `CLONE_PARENT`, so it is the helper's child too; the
//! helper reports its pid and exits only after the agent has registered that pid here,
//! so the init process reaches this reaper (re-parented) only once it is watched.
//!
//! The reaper thread blocks in `waitid(P_ALL, WEXITED | WNOWAIT)`, which reports a
//! zombie without reaping it, then reaps exactly that pid under the table lock. Code
//! that signals a pid takes the same lock and checks the pid has not been reaped, so a
//! signal never reaches a recycled pid. Statuses of pids nobody watches (orphans) are
//! dropped.

use std::collections::HashMap;
use std::process::{Child, Command};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::sys::wait::{waitid, waitpid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use crate::protocol::ExitStatus;
use crate::util::{lock, wait, wait_timeout};

/// The exit status of one watched process, once known.
#[derive(Debug, Default)]
pub struct ExitCell {
    status: Mutex<Option<(ExitStatus, Instant)>>,
    cv: Condvar,
}

impl ExitCell {
    fn set(&self, status: ExitStatus) {
        *lock(&self.status) = Some((status, Instant::now()));
        self.cv.notify_all();
    }

    /// The status if the process has exited.
    pub fn get(&self) -> Option<ExitStatus> {
        lock(&self.status).map(|(s, _)| s)
    }

    /// How long ago the process exited.
    pub fn exited_for(&self) -> Option<Duration> {
        lock(&self.status).map(|(_, at)| at.elapsed())
    }

    /// Blocks until the process has exited.
    pub fn wait(&self) -> ExitStatus {
        let mut g = lock(&self.status);
        loop {
            if let Some((s, _)) = *g {
                return s;
            }
            g = wait(&self.cv, g);
        }
    }

    /// Blocks until the process has exited or `timeout` passed.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        let mut g = lock(&self.status);
        loop {
            if let Some((s, _)) = *g {
                return Some(s);
            }
            let now = Instant::now();
            if now >= deadline {
                return None;
            }
            g = wait_timeout(&self.cv, g, deadline - now);
        }
    }
}

#[derive(Debug, Default)]
struct Table {
    watched: HashMap<i32, Arc<ExitCell>>,
    /// Bumped on every spawn, so the reaper thread does not sleep through one.
    generation: u64,
}

/// Owner of all waiting in the agent process.
#[derive(Debug, Default)]
pub struct Reaper {
    table: Mutex<Table>,
    spawned: Condvar,
}

/// Converts a wait status into Docker's exit code convention.
pub fn exit_status(ws: WaitStatus) -> Option<ExitStatus> {
    match ws {
        WaitStatus::Exited(_, code) => Some(ExitStatus::exited(code)),
        WaitStatus::Signaled(_, sig, _) => Some(ExitStatus::signaled(sig as i32)),
        _ => None,
    }
}

impl Reaper {
    /// Creates the reaper and starts its thread.
    pub fn start() -> std::io::Result<Arc<Self>> {
        let reaper = Arc::new(Self::default());
        let r = reaper.clone();
        std::thread::Builder::new()
            .name("reaper".into())
            .spawn(move || r.run())?;
        Ok(reaper)
    }

    /// Spawns `cmd` and watches the child. The table is locked across the spawn so the
    /// child cannot be reaped before it is watched.
    pub fn spawn(&self, cmd: &mut Command) -> std::io::Result<(Child, Arc<ExitCell>)> {
        let mut t = lock(&self.table);
        let child = cmd.spawn()?;
        let cell = Arc::new(ExitCell::default());
        let pid = i32::try_from(child.id()).unwrap_or(i32::MAX);
        t.watched.insert(pid, cell.clone());
        t.generation = t.generation.wrapping_add(1);
        drop(t);
        self.spawned.notify_all();
        Ok((child, cell))
    }

    /// Watches `pid`, a child or a future child (re-parented to the agent). The caller
    /// must make sure the process cannot have been reaped yet (see the module doc).
    pub fn watch(&self, pid: i32) -> Arc<ExitCell> {
        let mut t = lock(&self.table);
        t.generation = t.generation.wrapping_add(1);
        let cell = t.watched.entry(pid).or_default().clone();
        drop(t);
        self.spawned.notify_all();
        cell
    }

    /// Sends `sig` to a watched pid that has not been reaped. `ESRCH` when the process
    /// is gone or not watched.
    pub fn signal(&self, pid: i32, sig: Option<Signal>) -> Result<(), nix::Error> {
        let t = lock(&self.table);
        match t.watched.get(&pid) {
            Some(cell) if cell.get().is_none() => nix::sys::signal::kill(Pid::from_raw(pid), sig),
            _ => Err(nix::Error::ESRCH),
        }
    }

    /// Forgets a watched pid (after its status was consumed).
    pub fn forget(&self, pid: i32) {
        let mut t = lock(&self.table);
        if t.watched.get(&pid).is_some_and(|c| c.get().is_some()) {
            t.watched.remove(&pid);
        }
    }

    fn run(&self) {
        loop {
            let generation = lock(&self.table).generation;
            match waitid(Id::All, WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT) {
                Ok(peeked) => {
                    let Some(pid) = peeked.pid() else { continue };
                    self.reap(pid);
                }
                Err(nix::Error::ECHILD) => {
                    // No children: sleep until a spawn or watch. Orphans cannot appear
                    // without a child of ours to descend from.
                    let t = lock(&self.table);
                    if t.generation == generation {
                        drop(wait_timeout(&self.spawned, t, Duration::from_secs(1)));
                    }
                }
                Err(nix::Error::EINTR) => {}
                Err(e) => {
                    tracing::error!("reaper: waitid: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn reap(&self, pid: Pid) {
        let t = lock(&self.table);
        match waitpid(pid, Some(WaitPidFlag::WNOHANG)) {
            Ok(ws) => {
                let Some(status) = exit_status(ws) else {
                    return;
                };
                match t.watched.get(&pid.as_raw()) {
                    Some(cell) => {
                        tracing::debug!(pid = pid.as_raw(), ?status, "reaped");
                        cell.set(status);
                    }
                    None => tracing::debug!(pid = pid.as_raw(), ?status, "reaped an orphan"),
                }
            }
            Err(e) => tracing::debug!(pid = pid.as_raw(), "reaper: waitpid: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_exit_codes() {
        let p = Pid::from_raw(1);
        assert_eq!(
            exit_status(WaitStatus::Exited(p, 3)),
            Some(ExitStatus::exited(3))
        );
        assert_eq!(
            exit_status(WaitStatus::Signaled(p, Signal::SIGKILL, false)),
            Some(ExitStatus {
                code: 137,
                signal: Some(9)
            })
        );
        assert_eq!(
            exit_status(WaitStatus::Signaled(p, Signal::SIGTERM, true)).map(|s| s.code),
            Some(143)
        );
        assert_eq!(exit_status(WaitStatus::StillAlive), None);
    }

    #[test]
    fn exit_cell_wakes_waiters() {
        let cell = Arc::new(ExitCell::default());
        assert_eq!(cell.wait_timeout(Duration::from_millis(10)), None);
        let c = cell.clone();
        let t = std::thread::spawn(move || c.wait());
        std::thread::sleep(Duration::from_millis(20));
        cell.set(ExitStatus::exited(4));
        assert_eq!(t.join().unwrap(), ExitStatus::exited(4));
        assert_eq!(cell.get(), Some(ExitStatus::exited(4)));
    }
}
