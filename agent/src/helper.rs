//! The container helper: a short-lived, single-threaded child of the agent
//! (`moat-agent __helper`) that runs libcontainer's create or exec, reports the new
//! process's pid, and exits once the agent has acknowledged it. See the reaper module
//! for why this runs in its own process. It owns the helper's side of that exchange and
//! the workload executor; it must not touch the agent's state.
//!
//! Exchange: the agent writes one [`HelperRequest`] JSON line on the helper's stdin and
//! keeps stdin open; the helper writes one [`HelperReply`] JSON line on stdout, then
//! reads stdin to its end (the agent closes it after registering the pid) and exits.
//! The container's stdin, stdout and stderr, when given, are descriptors 3, 4 and 5.

use std::ffi::CString;
use std::io::{BufRead, Read, Write};
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::PathBuf;

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::error::LibcontainerError;
use libcontainer::syscall::syscall::SyscallType;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::protocol::ErrorCode;

/// The argument that selects helper mode.
pub const HELPER_ARG: &str = "__helper";

/// Descriptor numbers of the container's stdio in the helper.
pub const STDIO_FDS: [i32; 3] = [3, 4, 5];

/// What the agent asks the helper to do.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum HelperRequest {
    /// `libcontainer` init container: `bundle/config.json`, state under `state_root`.
    Create {
        container: String,
        bundle: PathBuf,
        state_root: PathBuf,
        console_socket: Option<PathBuf>,
        /// Descriptors 3, 4, 5 carry the container's stdio.
        stdio_fds: bool,
    },
    /// `libcontainer` tenant process described by the OCI process in `process_file`.
    Exec {
        container: String,
        state_root: PathBuf,
        process_file: PathBuf,
        console_socket: Option<PathBuf>,
        stdio_fds: bool,
    },
}

/// The helper's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum HelperReply {
    Ok { pid: i32 },
    Err { code: ErrorCode, message: String },
}

/// Runs the workload: `execvp` of `process.args`. On failure it writes Docker's message
/// on the process's stderr and exits 127 (not found) or 126 (found, not executable),
/// the codes a shell and `docker run` use. Validation is left to `exec` itself so that
/// both cases become exit statuses rather than create errors.
#[derive(Debug, Clone, Copy)]
pub struct MoatExecutor;

impl Executor for MoatExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let process = spec.process().as_ref().ok_or(ExecutorError::InvalidArg)?;
        let args = process.args().as_ref().ok_or(ExecutorError::InvalidArg)?;
        // libcontainer ignores `process.consoleSize`: set it on the terminal here, in
        // the container process right before exec, so the workload sees it from its
        // first instruction (the agent could only race it, for an exec).
        if process.terminal() == Some(true) {
            if let Some(size) = process.console_size() {
                set_terminal_size(size.height(), size.width());
            }
        }
        let c_args = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        let (Some(first), Some(c_first)) = (args.first(), c_args.first()) else {
            return Err(ExecutorError::InvalidArg);
        };
        let errno = match nix::unistd::execvp(c_first, &c_args) {
            Err(e) => e,
            Ok(never) => match never {},
        };
        let (code, msg) = exec_failure(first, errno);
        let _ = std::io::stderr().write_all(msg.as_bytes());
        // SAFETY: `_exit` ends the process at once; nothing here needs unwinding.
        unsafe { libc::_exit(code) }
    }

    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        Ok(())
    }
}

/// `TIOCSWINSZ` on stdin (the pty slave); a zero size is left alone.
fn set_terminal_size(rows: u64, cols: u64) {
    let (Ok(rows), Ok(cols)) = (u16::try_from(rows), u16::try_from(cols)) else {
        return;
    };
    if rows == 0 || cols == 0 {
        return;
    }
    let ws = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCSWINSZ reads the `winsize` we own; descriptor 0 is the terminal.
    let _ = unsafe { libc::ioctl(0, libc::TIOCSWINSZ, &ws) };
}

/// Exit code and message for a failed `execvp` of `arg0`.
pub fn exec_failure(arg0: &str, errno: nix::Error) -> (i32, String) {
    match errno {
        nix::Error::ENOENT | nix::Error::ENOTDIR if !arg0.contains('/') => (
            127,
            format!("exec: {arg0:?}: executable file not found in $PATH\n"),
        ),
        nix::Error::ENOENT | nix::Error::ENOTDIR => {
            (127, format!("exec: {arg0:?}: no such file or directory\n"))
        }
        nix::Error::EACCES | nix::Error::EPERM => {
            (126, format!("exec: {arg0:?}: permission denied\n"))
        }
        e => (126, format!("exec: {arg0:?}: {}\n", e.desc())),
    }
}

/// The error and its causes in one line.
fn chain(err: &LibcontainerError) -> String {
    let mut msg = match err {
        // Its Display drops the text it carries.
        LibcontainerError::InvalidInput(what) => format!("invalid input: {what}"),
        other => other.to_string(),
    };
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        let s_msg = s.to_string();
        if !msg.contains(&s_msg) {
            msg.push_str(": ");
            msg.push_str(&s_msg);
        }
        source = s.source();
    }
    msg
}

fn classify(err: &LibcontainerError) -> ErrorCode {
    match err {
        LibcontainerError::Exist => ErrorCode::AlreadyExists,
        LibcontainerError::InvalidInput(_)
        | LibcontainerError::InvalidID(_)
        | LibcontainerError::MissingSpec(_)
        | LibcontainerError::InvalidSpec(_) => ErrorCode::BadRequest,
        LibcontainerError::IncorrectStatus(_) => ErrorCode::InvalidState,
        _ => ErrorCode::Internal,
    }
}

fn stdio_fds() -> [OwnedFd; 3] {
    // SAFETY: the agent dup2'ed the container's stdio onto exactly these descriptors
    // before exec (`stdio_fds: true`); this process owns them from here on.
    STDIO_FDS.map(|fd| unsafe { OwnedFd::from_raw_fd(fd) })
}

fn run(req: HelperRequest) -> Result<i32, LibcontainerError> {
    match req {
        HelperRequest::Create {
            container,
            bundle,
            state_root,
            console_socket,
            stdio_fds: with_stdio,
        } => {
            let mut b = ContainerBuilder::new(container, SyscallType::default())
                .with_root_path(state_root)?
                .with_executor(MoatExecutor)
                .with_console_socket(console_socket);
            if with_stdio {
                let [i, o, e] = stdio_fds();
                b = b.with_stdin(i).with_stdout(o).with_stderr(e);
            }
            let c = b
                .validate_id()?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()?;
            c.pid()
                .map(|p| p.as_raw())
                .ok_or_else(|| LibcontainerError::Other("container has no pid after create".into()))
        }
        HelperRequest::Exec {
            container,
            state_root,
            process_file,
            console_socket,
            stdio_fds: with_stdio,
        } => {
            let mut b = ContainerBuilder::new(container, SyscallType::default())
                .with_root_path(state_root)?
                .with_executor(MoatExecutor)
                .with_console_socket(console_socket);
            if with_stdio {
                let [i, o, e] = stdio_fds();
                b = b.with_stdin(i).with_stdout(o).with_stderr(e);
            }
            let pid = b
                .validate_id()?
                .as_tenant()
                .with_process(Some(process_file))
                .with_detach(true)
                .build()?;
            Ok(pid.as_raw())
        }
    }
}

/// Entry point of helper mode; returns the process exit code.
pub fn main() -> i32 {
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let mut line = String::new();
    let reply = match input.read_line(&mut line) {
        Ok(0) | Err(_) => HelperReply::Err {
            code: ErrorCode::Internal,
            message: "container helper: no request on stdin".into(),
        },
        Ok(_) => match serde_json::from_str::<HelperRequest>(&line) {
            Err(e) => HelperReply::Err {
                code: ErrorCode::Internal,
                message: format!("container helper: decode request: {e}"),
            },
            Ok(req) => match run(req) {
                Ok(pid) => HelperReply::Ok { pid },
                Err(e) => HelperReply::Err {
                    code: classify(&e),
                    message: chain(&e),
                },
            },
        },
    };
    let mut out = std::io::stdout().lock();
    let encoded = serde_json::to_string(&reply).unwrap_or_else(|_| {
        r#"{"err":{"code":"internal","message":"container helper: encode reply"}}"#.to_owned()
    });
    if writeln!(out, "{encoded}")
        .and_then(|()| out.flush())
        .is_err()
    {
        return 1;
    }
    drop(out);
    // Wait for the agent's acknowledgement: the end of stdin.
    let mut rest = Vec::new();
    let _ = input.read_to_end(&mut rest);
    i32::from(!matches!(reply, HelperReply::Ok { .. }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exec_failures_map_to_shell_codes() {
        assert_eq!(exec_failure("nope", nix::Error::ENOENT).0, 127);
        assert!(exec_failure("nope", nix::Error::ENOENT)
            .1
            .contains("executable file not found in $PATH"));
        assert_eq!(exec_failure("/bin/nope", nix::Error::ENOENT).0, 127);
        assert_eq!(exec_failure("/etc/passwd", nix::Error::EACCES).0, 126);
        assert_eq!(exec_failure("/x", nix::Error::ENOEXEC).0, 126);
    }

    #[test]
    fn wire_format() {
        let req = HelperRequest::Exec {
            container: "c".into(),
            state_root: "/run/moat/state".into(),
            process_file: "/run/moat/containers/c/exec-e.json".into(),
            console_socket: None,
            stdio_fds: true,
        };
        let json = serde_json::to_string(&req).unwrap();
        assert_eq!(serde_json::from_str::<HelperRequest>(&json).unwrap(), req);
        assert_eq!(
            serde_json::to_string(&HelperReply::Ok { pid: 42 }).unwrap(),
            r#"{"ok":{"pid":42}}"#
        );
    }

    #[test]
    fn error_chain_reads_as_one_line() {
        let e = LibcontainerError::InvalidInput("bad root path".into());
        assert_eq!(classify(&e), ErrorCode::BadRequest);
        assert_eq!(chain(&e), "invalid input: bad root path");
    }
}
