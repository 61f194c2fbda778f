//! `corral`: set up, check and run a home as an operator: `init`, `status`, `doctor`,
//! worker `type`s, `pool`s, `purge`, `adopt`, the wrapper `scripts`, and shell completions
//! and man pages for every binary. Each subcommand turns its flags into a library call
//! (`setup`, `status`, `doctor`, `worker_types`, `pool`, `retention`, `adopt`) and prints
//! the result; the submodules hold the printing.

mod docs;
mod ops;
mod types;

use crate::cli::{self, Format, Global};
use crate::error::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Set up, check and run a corral home.
#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    after_help = "Examples:\n  corral init --home /srv/corral --total-tokens 2000000\n  corral status                 # exit 10 when something needs a human\n  corral doctor --fix\n  corral type set queue-worker --replicas 3 -- task-queue work --class convert -- ./convert.sh\n  corral purge --archived-older-than 30d\n  corral completions bash > /etc/bash_completion.d/corral\n  corral man --out-dir /usr/local/share/man/man1"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// `corral` subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a home from the template (coordination/, agents/logs/); re-run one with --force.
    #[command(
        after_help = "A new home is private (directories 0700, files 0600); --group G shares it with group G (2770/0660, setgid).\n--force on an existing home keeps its config, specs, tasks and logs and recounts the budget from the specs;\n--reset-config also rewrites the config files from the template after copying each to NAME.bak-<time>.\n\nExamples:\n  corral init --home /srv/corral --total-tokens 2000000 --group corral --with-scripts\n  corral init --force                  # safe on a live home\n  corral init --force --reset-config   # template config, old files kept as .bak-*"
    )]
    Init(Box<InitArgs>),
    /// One screen: monitor, workers, budget, queue, stuck tasks, quarantine, breakers, pools.
    #[command(
        after_help = "Exit 0 when healthy, 10 when something needs a human (the problems are listed last).\n\nExamples:\n  corral status\n  corral status --format json | jq .monitor"
    )]
    Status {
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Check the home's consistency, configuration and permissions; exit 10 on problems.
    Doctor {
        /// Repair what is safe: quarantine bad files, settle status/directory, recalc the
        /// budget, close permissions.
        #[arg(long)]
        fix: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Worker types (config/worker-types.json): list, show, set, remove.
    #[command(subcommand)]
    Type(types::TypeCommand),
    /// Keep every pool at its size: spawn the missing workers of each type with `replicas`,
    /// stop the extra ones.
    Pool(types::PoolArgs),
    /// Remove archived workers (spec, logs, lock files) and orphaned logs older than an age.
    #[command(
        after_help = "Examples:\n  corral purge --archived-older-than 30d --dry-run\n  corral purge --archived-older-than 30d --format json"
    )]
    Purge(ops::PurgeArgs),
    /// Adopt a hand-written spec placed straight into active/ (e.g. by a shell heredoc):
    /// validate it in place, fill its type's defaults, reserve its budget once.
    Adopt(ops::AdoptArgs),
    /// The shell wrapper scripts (cleanup-zombie-workers.sh, …) for cron and shell runbooks.
    #[command(subcommand)]
    Scripts(ops::ScriptsCommand),
    /// Print shell completions for every corral binary.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for every corral binary and subcommand (to stdout: corral's own).
    Man {
        /// Write NAME.1 (and NAME-SUBCOMMAND.1) for every binary into this directory.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// Flags of `corral init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Total token budget (on an existing home: the new total).
    #[arg(long, value_name = "N")]
    pub total_tokens: Option<u64>,
    /// Re-run on an existing home: keep its config, specs, tasks and logs; recount the budget.
    #[arg(long)]
    pub force: bool,
    /// With --force: rewrite the config files from the template (old ones kept as .bak-*).
    #[arg(long, requires = "force")]
    pub reset_config: bool,
    /// Share the home with this group: directories 2770 (setgid), files 0660.
    #[arg(long, value_name = "GROUP")]
    pub group: Option<String>,
    /// Install the shell wrapper scripts into <home>/scripts/ (for cron and runbooks).
    #[arg(long)]
    pub with_scripts: bool,
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

/// Entry point of the `corral` binary.
pub fn main() -> ExitCode {
    let cli = match cli::parse::<Cli>() {
        Ok(c) => c,
        Err(code) => return code,
    };
    cli::init_logging(&cli.global);
    cli::run_main("corral", || run(cli))
}

fn run(cli: Cli) -> Result<()> {
    let g = &cli.global;
    match cli.command {
        Command::Init(a) => ops::init(g, *a),
        Command::Status { format } => ops::status(&g.home()?, format),
        Command::Doctor { fix, format } => ops::doctor(&g.home()?, fix, format),
        Command::Type(c) => types::run(&g.home()?, c),
        Command::Pool(a) => types::pool(&g.home()?, a),
        Command::Purge(a) => ops::purge(&g.home()?, a),
        Command::Adopt(a) => ops::adopt(&g.home()?, a),
        Command::Scripts(ops::ScriptsCommand::Install) => ops::install_scripts(&g.home()?),
        Command::Completions { shell } => docs::completions(shell),
        Command::Man { out_dir } => docs::man(out_dir),
    }
}
