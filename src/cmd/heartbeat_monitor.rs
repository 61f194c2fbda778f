//! `heartbeat-monitor`: the liveness daemon (or one `--once` pass for cron). Flags become
//! policy overrides on top of the policy file and `CORRAL_HEARTBEAT__…` env; the work is in
//! [`crate::liveness`].

use crate::cli::{self, Global};
use crate::error::Result;
use crate::liveness::{self as monitor, Options};
use clap::Parser;
use serde_json::Value;
use std::path::PathBuf;
use std::process::ExitCode;

/// Watch workers: heartbeats, process exits, health, resources, timeouts and restarts.
///
/// Runs in the foreground until SIGTERM or SIGINT (SIGHUP reloads the policy; so does any
/// change to config/heartbeat-policy.json). Reacts to inotify events on the state
/// directories and to pidfd exits of local workers, and keeps every time-based check in a
/// timer heap. On network filesystems (NFS, CIFS, …) it polls instead. A second monitor on
/// the same home is refused with exit 5.
///
/// Thresholds come from config/heartbeat-policy.json, then CORRAL_HEARTBEAT__KEY env
/// (CORRAL_HEARTBEAT__RESTART__MAX_RETRIES for a section), then these flags.
#[derive(Debug, Parser)]
#[command(
    name = "heartbeat-monitor",
    version,
    after_help = "Examples:\n  heartbeat-monitor                              # daemon, foreground\n  heartbeat-monitor --pidfile /run/corral-monitor.pid\n  heartbeat-monitor --once -q                    # one pass, from cron\n  heartbeat-monitor --zombie-seconds 120 --warning-seconds 30\n  heartbeat-monitor --print-config | jq .restart\n  CORRAL_HEARTBEAT__RESTART__MAX_RETRIES=1 heartbeat-monitor\n\nExit codes: 0 ok, 5 another monitor runs on this home, 6 invalid policy, 8 no home."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    /// One pass over the home, then exit (for cron).
    #[arg(long)]
    pub once: bool,
    /// Write the daemon's pid here; removed on a clean exit.
    #[arg(long, value_name = "FILE", conflicts_with = "once")]
    pub pidfile: Option<PathBuf>,
    /// Print the effective policy (file + env + flags) as JSON and exit.
    #[arg(long)]
    pub print_config: bool,
    /// Also rescan the state directories every S seconds (automatic on network filesystems).
    #[arg(long, value_name = "S")]
    pub poll_interval: Option<f64>,
    /// Expected seconds between beats (health loses points per missed interval).
    #[arg(long, value_name = "S")]
    pub heartbeat_interval_seconds: Option<f64>,
    /// Heartbeat age for heartbeat_warning.
    #[arg(long, value_name = "S")]
    pub warning_seconds: Option<f64>,
    /// Heartbeat age for heartbeat_critical (health "unresponsive").
    #[arg(long, value_name = "S")]
    pub critical_seconds: Option<f64>,
    /// Heartbeat age at which a worker is declared a zombie (moved to zombie/).
    #[arg(long, value_name = "S")]
    pub zombie_seconds: Option<f64>,
    /// A pending worker never confirmed alive within S seconds fails.
    #[arg(long, value_name = "S")]
    pub pending_timeout_seconds: Option<f64>,
    /// Stop workers idle longer than S seconds (0 = never).
    #[arg(long, value_name = "S")]
    pub idle_timeout_seconds: Option<f64>,
    /// SIGTERM → SIGKILL grace period of graceful stops.
    #[arg(long, value_name = "S")]
    pub grace_seconds: Option<f64>,
    /// Sample CPU and RSS of local workers every S seconds (default: the heartbeat interval).
    #[arg(long, value_name = "S")]
    pub sample_interval: Option<f64>,
    /// Stop local workers whose parent process is gone.
    #[arg(long)]
    pub check_orphans: bool,
}

impl Cli {
    /// The duration flags that were given, by flag name.
    fn durations(&self) -> [(&'static str, Option<f64>); 9] {
        [
            ("--poll-interval", self.poll_interval),
            (
                "--heartbeat-interval-seconds",
                self.heartbeat_interval_seconds,
            ),
            ("--warning-seconds", self.warning_seconds),
            ("--critical-seconds", self.critical_seconds),
            ("--zombie-seconds", self.zombie_seconds),
            ("--pending-timeout-seconds", self.pending_timeout_seconds),
            ("--idle-timeout-seconds", self.idle_timeout_seconds),
            ("--grace-seconds", self.grace_seconds),
            ("--sample-interval", self.sample_interval),
        ]
    }

    /// NaN and infinity parse as numbers but are no duration (JSON has neither: they would
    /// become `null`, which reads as "not set"). Ranges are the policy's ([`crate::policy`]),
    /// checked on the merged policy (exit 6 naming the key).
    pub fn check(&self) -> Result<()> {
        for (flag, v) in self.durations() {
            if let Some(x) = v.filter(|x| !x.is_finite()) {
                return Err(crate::error::Error::Invalid(format!(
                    "{flag} {x}: not a number of seconds"
                )));
            }
        }
        Ok(())
    }

    /// The flags that were given, as policy keys.
    pub fn overrides(&self) -> Vec<(String, Value)> {
        let mut v: Vec<(String, Value)> = [
            (monitor::KEY_POLL_INTERVAL, self.poll_interval),
            (
                "heartbeat_interval_seconds",
                self.heartbeat_interval_seconds,
            ),
            ("warning_seconds", self.warning_seconds),
            ("critical_seconds", self.critical_seconds),
            ("zombie_seconds", self.zombie_seconds),
            ("pending_timeout_seconds", self.pending_timeout_seconds),
            ("idle_timeout_seconds", self.idle_timeout_seconds),
            ("grace_seconds", self.grace_seconds),
            (monitor::KEY_SAMPLE_INTERVAL, self.sample_interval),
        ]
        .into_iter()
        .filter_map(|(k, v)| v.map(|x| (k.to_string(), Value::from(x))))
        .collect();
        if self.check_orphans {
            v.push(("check_orphans".into(), Value::Bool(true)));
        }
        v
    }
}

/// Entry point of the `heartbeat-monitor` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::run_main("heartbeat-monitor", || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    if let Err(e) = cli.check() {
        cli::init_logging(&cli.global);
        return Err(e);
    }
    let overrides = cli.overrides();
    if cli.print_config {
        cli::init_logging(&cli.global);
        let home = cli.global.home()?;
        return cli::out_json(&monitor::print_config(&home, &overrides)?);
    }
    let home = match cli.global.home() {
        Ok(h) => h,
        Err(e) => {
            cli::init_logging(&cli.global);
            return Err(e);
        }
    };
    if !cli.once {
        // Before the log writer's thread exists, so that it inherits the mask (stop, reload
        // and SIGCHLD are read from the daemon's signalfd, never delivered to a thread).
        crate::process::signals::block(&monitor::reactor::DAEMON_SIGNALS)?;
    }
    let _log = cli::init_daemon_logging(&cli.global, &home, "heartbeat-monitor")?;
    monitor::run(
        &home,
        &Options {
            overrides,
            once: cli.once,
            pidfile: cli.pidfile,
        },
    )
}
