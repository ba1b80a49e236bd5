//! Runs one contender as a child process and measures it: wall time from spawn to exit, and
//! peak RSS and CPU seconds (user + system) from the kernel's accounting of that child.
//!
//! The child is reaped with `wait4`, which returns its `rusage`: on Linux that covers the
//! child and every descendant it waited for (fetchmail's MDA processes, getmail's delivery
//! children), so a contender that forks per message pays for it here. `ru_maxrss` is the
//! largest resident set among them, not a sum. std's `Child::wait` would reap the child and lose
//! that record, so it is never called on a measured child.
//!
//! A watchdog kills a child that outlives its time limit. It may only signal a pid that is
//! still ours: the main thread first waits with `WNOWAIT` (the child stays a zombie, its pid
//! reserved), stops the watchdog, and only then reaps.
//!
//! The benchmark process itself never spawns a measured child. Linux carries the peak RSS
//! of the address space a process replaces at `execve` into its own `ru_maxrss`, and a child
//! spawned by the benchmark starts out in the benchmark's address space (which holds the
//! whole corpus): every contender would report at least the benchmark's size. So the
//! benchmark starts a small wrapper, itself started afresh (`--measure-child`), which spawns
//! the contender, measures it and writes the figures to a file ([`run_wrapped`]). What a
//! contender inherits then is the wrapper's few megabytes.

use std::ffi::OsString;
use std::fs::File;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// What one measured run cost.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    /// Spawn to exit.
    pub wall: Duration,
    /// User + system CPU time of the child and its reaped descendants.
    pub cpu: Duration,
    /// Peak resident set size of the child (or its largest reaped descendant), bytes.
    pub peak_rss_bytes: u64,
    /// How it ended.
    pub exit: Exit,
}

/// How a measured child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
    /// Killed by the watchdog after the time limit.
    TimedOut,
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit code {c}"),
            Exit::Signal(s) => write!(f, "killed by signal {s}"),
            Exit::TimedOut => write!(f, "timed out (killed)"),
        }
    }
}

/// Runs `cmd` (its program, arguments, environment and working directory) under the
/// measuring wrapper, with stdin empty and stdout/stderr to the given files, and returns what
/// the wrapper measured. `report` is a file the wrapper writes its figures to.
pub fn run_wrapped(
    cmd: &Command,
    stdout: File,
    stderr: File,
    limit: Duration,
    report: &Path,
) -> std::io::Result<Measured> {
    let mut wrapper = Command::new(std::env::current_exe()?);
    wrapper
        .arg(WRAPPER_FLAG)
        .arg(limit.as_secs().to_string())
        .arg(report)
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr);
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapper.env(key, v),
            None => wrapper.env_remove(key),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapper.current_dir(dir);
    }
    let status = wrapper.status()?;
    let text = std::fs::read_to_string(report).map_err(|e| {
        std::io::Error::other(format!(
            "the measuring wrapper ({status}) left no report: {e}"
        ))
    })?;
    parse_report(&text)
        .ok_or_else(|| std::io::Error::other(format!("measuring wrapper report {text:?}")))
}

/// The first argument that makes the benchmark binary the measuring wrapper.
pub const WRAPPER_FLAG: &str = "--measure-child";

/// Entry point of `--measure-child LIMIT_SECS REPORT_FILE PROGRAM ARGS...`: runs the program
/// with this process' environment, directory and stdio, and writes
/// `wall_ns cpu_ns peak_rss_bytes exit` to REPORT_FILE.
pub fn wrapper_main(args: &[OsString]) -> ! {
    let [limit, report, program, rest @ ..] = args else {
        eprintln!("{WRAPPER_FLAG} LIMIT_SECS REPORT_FILE PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let limit = limit
        .to_str()
        .and_then(|l| l.parse().ok())
        .map_or(Duration::from_secs(3600), Duration::from_secs);
    let mut cmd = Command::new(program);
    cmd.args(rest);
    match run(&mut cmd, limit) {
        Ok(m) => {
            let exit = match m.exit {
                Exit::Code(c) => format!("code {c}"),
                Exit::Signal(s) => format!("signal {s}"),
                Exit::TimedOut => "timeout 0".into(),
            };
            let line = format!(
                "{} {} {} {exit}\n",
                m.wall.as_nanos(),
                m.cpu.as_nanos(),
                m.peak_rss_bytes
            );
            if let Err(e) = std::fs::write(report, line) {
                eprintln!(
                    "measuring wrapper: write {}: {e}",
                    Path::new(report).display()
                );
                std::process::exit(1);
            }
            std::process::exit(0)
        }
        Err(e) => {
            eprintln!(
                "measuring wrapper: spawn {}: {e}",
                Path::new(program).display()
            );
            std::process::exit(1)
        }
    }
}

fn parse_report(text: &str) -> Option<Measured> {
    let mut w = text.split_whitespace();
    let wall = Duration::from_nanos(w.next()?.parse().ok()?);
    let cpu = Duration::from_nanos(w.next()?.parse().ok()?);
    let peak_rss_bytes = w.next()?.parse().ok()?;
    let kind = w.next()?;
    let value: i32 = w.next()?.parse().ok()?;
    let exit = match kind {
        "code" => Exit::Code(value),
        "signal" => Exit::Signal(value),
        "timeout" => Exit::TimedOut,
        _ => return None,
    };
    Some(Measured {
        wall,
        cpu,
        peak_rss_bytes,
        exit,
    })
}

/// Spawns `cmd` and waits for it, with `limit` as the time limit.
fn run(cmd: &mut Command, limit: Duration) -> std::io::Result<Measured> {
    let started = Instant::now();
    let child = cmd.spawn()?;
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits in pid_t");
    // `child` is dropped without `wait`: dropping a std Child neither kills nor reaps it.
    drop(child);

    let (stop, stopped) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || match stopped.recv_timeout(limit) {
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // SAFETY: kill(2) has no memory-safety preconditions. The pid is not reaped yet
            // (the main thread reaps only after joining this thread), so it is still our child.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            true
        }
        _ => false,
    });

    wait_exited_not_reaped(pid)?;
    let wall = started.elapsed();
    let _ = stop.send(());
    let timed_out = watchdog.join().unwrap_or(false);

    let (status, usage) = reap(pid)?;
    let cpu = timeval(usage.ru_utime) + timeval(usage.ru_stime);
    // Linux reports ru_maxrss in kilobytes.
    let peak_rss_bytes = u64::try_from(usage.ru_maxrss).unwrap_or(0) * 1024;
    let exit = if timed_out {
        Exit::TimedOut
    } else if libc::WIFEXITED(status) {
        Exit::Code(libc::WEXITSTATUS(status))
    } else {
        Exit::Signal(libc::WTERMSIG(status))
    };
    Ok(Measured {
        wall,
        cpu,
        peak_rss_bytes,
        exit,
    })
}

/// Blocks until `pid` has exited, leaving it a zombie (`WNOWAIT`).
fn wait_exited_not_reaped(pid: libc::pid_t) -> std::io::Result<()> {
    let id = libc::id_t::try_from(pid).expect("a child's pid is positive");
    loop {
        // SAFETY: siginfo_t is plain data that waitid fills in; all-zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is a valid, writable siginfo_t for the duration of the call.
        let r = unsafe { libc::waitid(libc::P_PID, id, &mut info, libc::WEXITED | libc::WNOWAIT) };
        if r == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Reaps `pid` and returns its wait status and resource usage.
fn reap(pid: libc::pid_t) -> std::io::Result<(libc::c_int, libc::rusage)> {
    loop {
        let mut status: libc::c_int = 0;
        // SAFETY: rusage is plain data that wait4 fills in; all-zero is a valid value.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: `status` and `usage` are valid, writable and live across the call.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn timeval(t: libc::timeval) -> Duration {
    Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
        + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
}

/// What the benchmark reads of a process' `/proc/PID/stat`.
pub struct ProcStat {
    pub pgrp: u32,
    /// User + system time of the process, all its threads.
    pub cpu: Duration,
    /// User + system time of the children it has reaped (`cutime` + `cstime`).
    pub children_cpu: Duration,
}

/// Reads `/proc/PID/stat` (`None` when the process is gone or this is not Linux).
pub fn proc_stat(pid: u32) -> Option<ProcStat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

fn parse_stat(stat: &str) -> Option<ProcStat> {
    // The command name (field 2) is in parentheses and may hold anything; from the last ')'
    // on: state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    // cutime cstime ...
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let field = |i: usize| fields.get(i)?.parse::<u64>().ok();
    // SAFETY: sysconf has no memory-safety preconditions.
    let per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .ok()
        .filter(|&t| t > 0)
        .unwrap_or(100);
    let ticks = |t: u64| Duration::from_nanos(t * 1_000_000_000 / per_second);
    Some(ProcStat {
        pgrp: u32::try_from(field(2)?).ok()?,
        cpu: ticks(field(11)? + field(12)?),
        children_cpu: ticks(field(13)? + field(14)?),
    })
}

/// CPU time (user + system) of every process in process group `pgid` so far, including the
/// children each of them has reaped: a server that forks a process per connection counts
/// that process while it lives and, once the master reaps it, in the master's children's
/// time. The difference of two readings is what the group used in between. `None` when
/// `/proc` cannot be read (not Linux) or no process is in the group.
pub fn group_cpu(pgid: u32) -> Option<Duration> {
    let mut total = Duration::ZERO;
    let mut members = 0;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process may exit between the listing and this read: it is then counted in its
        // parent's children's time instead, at the next reading.
        let Some(stat) = proc_stat(pid).filter(|s| s.pgrp == pgid) else {
            continue;
        };
        members += 1;
        total += stat.cpu + stat.children_cpu;
    }
    (members > 0).then_some(total)
}

/// Bytes written to the machine's block devices so far (`/sys/block/*/stat`, sectors of 512
/// bytes; whole devices only, so partitions are not counted twice; loop, RAM and zram
/// devices left out). The difference of two readings counts every process' writes, the
/// server's included.
pub fn disk_written() -> Option<u64> {
    let mut sectors = 0;
    let mut any = false;
    for entry in std::fs::read_dir("/sys/block").ok()?.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if ["loop", "ram", "zram"].iter().any(|p| name.starts_with(p)) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // read I/Os, read merges, read sectors, read ticks, write I/Os, write merges,
        // write sectors, ...
        if let Some(written) = stat
            .split_whitespace()
            .nth(6)
            .and_then(|v| v.parse::<u64>().ok())
        {
            sectors += written;
            any = true;
        }
    }
    any.then_some(sectors * 512)
}

/// The disk's sequential write rate in `dir`, bytes per second: `bytes` written in 1 MiB
/// pieces, then `fsync`, timed together (what `dd conv=fdatasync` measures).
pub fn disk_write_rate(dir: &Path, bytes: usize) -> std::io::Result<f64> {
    use std::io::Write as _;
    let piece: Vec<u8> = (0..1 << 20)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    // A file without a name (gone when closed): a fixed name in a shared directory could be
    // a link planted by another user to a file of ours, which would then be overwritten.
    let mut file = tempfile::tempfile_in(dir)?;
    let started = Instant::now();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(piece.len());
        file.write_all(&piece[..n])?;
        left -= n;
    }
    file.sync_all()?;
    let took = started.elapsed();
    Ok(bytes as f64 / took.as_secs_f64().max(1e-9))
}
