//! `corral type list|show|set|remove` and `corral pool`.

use crate::cli::{self, Format};
use crate::error::{Error, Result};
use crate::home::Home;
use crate::policy::WorkerType;
use crate::spec::Priority;
use crate::worker_types::{self, TypeChange};
use clap::{Args, Subcommand};

/// `corral type` subcommands.
#[derive(Debug, Subcommand)]
pub enum TypeCommand {
    /// List the configured worker types.
    List {
        /// Only the names, one per line.
        #[arg(long)]
        names: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Show one type.
    Show {
        name: String,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Create or change a type; only the given fields change.
    #[command(
        after_help = "The command is argv, run without a shell: give it after `--`, or as repeated --command ARG.\n\nExamples:\n  corral type set converter --tokens 0 --timeout-minutes 10 -- ./convert.sh --fast\n  corral type set queue-worker --replicas 3 -- task-queue work --class convert -- ./handle.sh\n  corral type set converter --env LANG=C.UTF-8 --env-file /etc/corral/converter.env --cwd /srv/work\n  corral type set converter --unset replicas --unset-env LANG"
    )]
    Set(Box<SetArgs>),
    /// Remove a type (refused while workers of it are active, unless --force).
    Remove {
        name: String,
        /// Remove it although workers of the type are active.
        #[arg(long)]
        force: bool,
    },
}

/// Flags of `corral type set`.
#[derive(Debug, Args)]
pub struct SetArgs {
    /// The type's name (the runbook's `implementation-worker`, …).
    pub name: String,
    /// Tokens reserved per worker.
    #[arg(long, value_name = "N")]
    pub tokens: Option<u64>,
    /// Stop a worker running longer than this.
    #[arg(long, value_name = "MIN")]
    pub timeout_minutes: Option<u64>,
    /// Restarts per failed worker.
    #[arg(long, value_name = "N")]
    pub max_retries: Option<u32>,
    #[arg(long, value_enum)]
    pub priority: Option<PriorityArg>,
    #[arg(long, value_name = "TEXT")]
    pub description: Option<String>,
    /// One argument of the command (repeat for each), instead of `-- CMD ARGS…`.
    #[arg(long = "command", value_name = "ARG", allow_hyphen_values = true)]
    pub command_args: Vec<String>,
    /// Environment of every worker of the type (repeatable).
    #[arg(long, value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Remove a key from the type's environment (repeatable).
    #[arg(long, value_name = "KEY")]
    pub unset_env: Vec<String>,
    /// A KEY=VALUE file read at each launch (never copied into specs).
    #[arg(long, value_name = "FILE")]
    pub env_file: Option<String>,
    /// Working directory of the type's workers.
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<String>,
    /// Keep N workers of this type running (0 stops the pool; --unset replicas ends it).
    #[arg(long, value_name = "N")]
    pub replicas: Option<u32>,
    /// Remove a field (repeatable): tokens, timeout_minutes, command, max_retries, priority,
    /// description, env, env_file, cwd, replicas.
    #[arg(long, value_name = "FIELD")]
    pub unset: Vec<String>,
    /// With --replicas: only write the config; leave starting and stopping to `corral pool`
    /// or the monitor.
    #[arg(long)]
    pub no_apply: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// The command (argv, no shell).
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// `--priority` values.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum PriorityArg {
    Critical,
    High,
    Medium,
    Low,
}

impl From<PriorityArg> for Priority {
    fn from(p: PriorityArg) -> Priority {
        match p {
            PriorityArg::Critical => Priority::Critical,
            PriorityArg::High => Priority::High,
            PriorityArg::Medium => Priority::Medium,
            PriorityArg::Low => Priority::Low,
        }
    }
}

/// Flags of `corral pool`.
#[derive(Debug, Args)]
pub struct PoolArgs {
    /// Only this type's pool.
    #[arg(long = "type", value_name = "T")]
    pub worker_type: Option<String>,
    /// Grace for stopping extra workers (default: the policy's grace_seconds).
    #[arg(long, value_name = "S", value_parser = crate::time::parse_secs)]
    pub grace: Option<f64>,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value> {
    serde_json::to_value(v).map_err(|e| Error::Internal(format!("serialise: {e}")))
}

fn show_type(name: &str, t: &WorkerType, format: Format) -> Result<()> {
    if format != Format::Table {
        let v = serde_json::json!({ "name": name, "type": to_value(t)? });
        return if format == Format::Json {
            cli::out_json(&v)
        } else {
            cli::out_jsonl(&v)
        };
    }
    let mut lines = vec![format!("name              {name}")];
    let mut kv = |k: &str, v: Option<String>| {
        if let Some(v) = v {
            lines.push(format!("{k:<18}{v}"));
        }
    };
    kv("description", t.description.clone());
    kv("tokens", t.tokens.map(|x| x.to_string()));
    kv("timeout_minutes", t.timeout_minutes.map(|x| x.to_string()));
    kv("max_retries", t.max_retries.map(|x| x.to_string()));
    kv("priority", t.priority.map(|p| p.as_str().to_string()));
    kv("command", t.command.as_ref().map(|c| argv_text(c)));
    kv("cwd", t.cwd.clone());
    kv("env_file", t.env_file.clone());
    for (k, v) in &t.env {
        kv("env", Some(format!("{k}={v}")));
    }
    kv("replicas", t.replicas.map(|x| x.to_string()));
    kv("execution_mode", t.execution_mode.clone());
    cli::out(crate::view::term::escape(&lines.join("\n")))
}

/// An argv as a shell would need it typed (for display only; nothing runs through a shell).
fn argv_text(argv: &[String]) -> String {
    argv.iter()
        .map(|a| {
            if !a.is_empty()
                && a.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c))
            {
                a.clone()
            } else {
                format!("'{}'", a.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs a `corral type` subcommand.
pub fn run(home: &Home, c: TypeCommand) -> Result<()> {
    match c {
        TypeCommand::List { names, format } => {
            let types = worker_types::list(home)?;
            if names {
                for n in types.types.keys() {
                    cli::out(n)?;
                }
                return Ok(());
            }
            match format {
                Format::Json => cli::out_json(&to_value(&types.types)?),
                Format::Jsonl => {
                    for (n, t) in &types.types {
                        cli::out_jsonl(&serde_json::json!({"name": n, "type": to_value(t)?}))?;
                    }
                    Ok(())
                }
                Format::Table => {
                    let rows: Vec<Vec<String>> = types
                        .types
                        .iter()
                        .map(|(n, t)| {
                            let o = |x: Option<String>| x.unwrap_or_else(|| "-".into());
                            vec![
                                n.clone(),
                                o(t.tokens.map(|x| x.to_string())),
                                o(t.timeout_minutes.map(|x| format!("{x}m"))),
                                o(t.max_retries.map(|x| x.to_string())),
                                o(t.priority.map(|p| p.as_str().to_string())),
                                o(t.replicas.map(|x| x.to_string())),
                                o(t.command.as_ref().map(|c| argv_text(c))),
                            ]
                        })
                        .collect();
                    cli::out(crate::view::term::table(
                        &[
                            "TYPE", "TOKENS", "TIMEOUT", "RETRIES", "PRIORITY", "REPLICAS",
                            "COMMAND",
                        ],
                        &rows,
                    ))
                }
            }
        }
        TypeCommand::Show { name, format } => {
            let t = worker_types::show(home, &name)?;
            show_type(&name, &t, format)
        }
        TypeCommand::Set(a) => set(home, *a),
        TypeCommand::Remove { name, force } => {
            worker_types::remove(home, &name, force)?;
            eprintln!("removed worker type {name}");
            Ok(())
        }
    }
}

fn set(home: &Home, a: SetArgs) -> Result<()> {
    if !a.command.is_empty() && !a.command_args.is_empty() {
        return Err(Error::Usage(
            "give the command either after `--` or as --command ARG, not both".into(),
        ));
    }
    let command = if !a.command.is_empty() {
        Some(a.command.clone())
    } else if !a.command_args.is_empty() {
        Some(a.command_args.clone())
    } else {
        None
    };
    let change = TypeChange {
        tokens: a.tokens,
        timeout_minutes: a.timeout_minutes,
        max_retries: a.max_retries,
        priority: a.priority.map(Priority::from),
        description: a.description.clone(),
        command,
        env: a.env.clone(),
        unset_env: a.unset_env.clone(),
        env_file: a.env_file.clone(),
        cwd: a.cwd.clone(),
        replicas: a.replicas,
        unset: a.unset.clone(),
    };
    if change.is_empty() {
        return Err(Error::Usage(format!(
            "nothing to set for {}: give at least one field (see corral type set --help)",
            a.name
        )));
    }
    let (t, created) = worker_types::set(home, &a.name, &change)?;
    for w in worker_types::warnings(&a.name, &t) {
        eprintln!("warning: {w}");
    }
    eprintln!(
        "{} worker type {}",
        if created { "created" } else { "updated" },
        a.name
    );
    show_type(&a.name, &t, a.format)?;
    let pool_changed = a.replicas.is_some() || a.unset.iter().any(|f| f == "replicas");
    if pool_changed && !a.no_apply {
        apply_pools(home, Some(&a.name), None, true)?;
    }
    Ok(())
}

/// Reconciles pools and stops extras; reports on stderr (or returns the reports).
fn apply_pools(
    home: &Home,
    only: Option<&str>,
    grace: Option<f64>,
    quiet_stdout: bool,
) -> Result<Vec<serde_json::Value>> {
    let grace = match grace {
        Some(g) => g,
        // An invalid policy is doctor's to report; stopping still needs a grace.
        None => crate::policy::HeartbeatPolicy::load(home)
            .map(|p| p.grace_seconds)
            .unwrap_or(crate::policy::HeartbeatPolicy::default().grace_seconds),
    };
    let grace = crate::time::duration(crate::time::check_secs("--grace", grace)?);
    let mut out = Vec::new();
    let reports = crate::pool::reconcile_only(home, only, crate::time::now())?;
    for r in &reports {
        let stopped = crate::pool::scale_down(home, r, grace)?;
        let line = format!(
            "pool {}: {} of {} running{}{}{}",
            r.worker_type,
            r.running + r.restarting,
            r.replicas,
            if r.spawned.is_empty() {
                String::new()
            } else {
                format!(", started {}", r.spawned.len())
            },
            if stopped.is_empty() {
                String::new()
            } else {
                format!(", stopped {}", stopped.len())
            },
            r.note
                .as_deref()
                .map(|n| format!(" ({n})"))
                .unwrap_or_default()
        );
        if quiet_stdout {
            eprintln!("{line}");
        }
        let mut v = to_value(r)?;
        v["stopped"] = serde_json::json!(stopped);
        v["line"] = serde_json::json!(line);
        out.push(v);
    }
    Ok(out)
}

/// `corral pool`: spawn missing pool workers, stop extra ones; one line per pool.
pub fn pool(home: &Home, a: PoolArgs) -> Result<()> {
    if let Some(t) = &a.worker_type {
        worker_types::show(home, t)?;
    }
    let reports = apply_pools(home, a.worker_type.as_deref(), a.grace, false)?;
    match a.format {
        Format::Table => {
            if reports.is_empty() {
                cli::out("no pools: no worker type has replicas (corral type set T --replicas N)")?;
            }
            for r in &reports {
                cli::out(r["line"].as_str().unwrap_or_default())?;
            }
            Ok(())
        }
        Format::Json => cli::out_json(&serde_json::Value::Array(reports)),
        Format::Jsonl => {
            for r in &reports {
                cli::out_jsonl(r)?;
            }
            Ok(())
        }
    }
}
