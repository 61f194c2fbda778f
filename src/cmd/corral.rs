//! `corral`: set up and check a home; shell completions and man pages for every binary.

use crate::cli::{self, Format, Global};
use crate::error::{Error, Result};
use crate::home::Home;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// Set up, check and document a corral home.
#[derive(Debug, Parser)]
#[command(
    name = "corral",
    version,
    after_help = "Examples:\n  corral init --home /srv/corral --total-tokens 2000000\n  corral doctor            # exit 10 when it finds problems\n  corral doctor --fix\n  corral completions bash > /etc/bash_completion.d/corral\n  corral man --out-dir /usr/local/share/man/man1"
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
    /// Create a home from the template (coordination/, agents/logs/).
    Init {
        /// Total token budget.
        #[arg(long, value_name = "N")]
        total_tokens: Option<u64>,
        /// Rewrite config and budget files of an existing home (specs, tasks, logs are kept).
        #[arg(long)]
        force: bool,
    },
    /// Check the home's consistency; exit 10 when something is wrong.
    Doctor {
        /// Repair what is safe: quarantine bad files, settle status/directory, recalc budget.
        #[arg(long)]
        fix: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Print shell completions for every corral binary.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Write man pages for every corral binary (to stdout: corral's own).
    Man {
        /// Write NAME.1 for every binary into this directory.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
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
    match cli.command {
        Command::Init {
            total_tokens,
            force,
        } => {
            let home = Home::locate(cli.global.home.as_deref())?;
            home.init(force)?;
            let total = match total_tokens {
                Some(t) => t,
                None => crate::budget::read(&home)?.total,
            };
            crate::budget::initialise(&home, total)?;
            let root =
                std::path::absolute(home.root()).unwrap_or_else(|_| home.root().to_path_buf());
            cli::out(root.display())
        }
        Command::Doctor { fix, format } => {
            let home = cli.global.home()?;
            let findings = crate::doctor::run(&home, fix)?;
            match format {
                Format::Table => {
                    if findings.is_empty() {
                        cli::out("ok: no problems found")?;
                    }
                    for f in &findings {
                        let fixed = f
                            .fixed
                            .as_ref()
                            .map(|x| format!(" -> {x}"))
                            .unwrap_or_default();
                        cli::out(format!("{}: {}: {}{fixed}", f.kind, f.path, f.detail))?;
                    }
                }
                Format::Json => cli::out_json(
                    &serde_json::json!({ "problems": findings.len(), "fixed": fix, "findings": findings }),
                )?,
                Format::Jsonl => {
                    for f in &findings {
                        cli::out_jsonl(
                            &serde_json::to_value(f).map_err(|e| Error::Internal(e.to_string()))?,
                        )?;
                    }
                }
            }
            if findings.is_empty() {
                Ok(())
            } else if fix {
                // Everything found was handled; say so but do not fail a --fix run.
                Ok(())
            } else {
                Err(Error::CheckFailed(format!(
                    "{} problem(s) found (run `corral doctor --fix`)",
                    findings.len()
                )))
            }
        }
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            for mut c in crate::cmd::all_commands() {
                let name = c.get_name().to_string();
                clap_complete::generate(shell, &mut c, name, &mut out);
            }
            Ok(())
        }
        Command::Man { out_dir } => {
            let render = |c: clap::Command| -> Result<Vec<u8>> {
                let mut buf = Vec::new();
                clap_mangen::Man::new(c)
                    .render(&mut buf)
                    .map_err(|e| Error::io("cannot render man page", e))?;
                Ok(buf)
            };
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
                    for c in crate::cmd::all_commands() {
                        let path = dir.join(format!("{}.1", c.get_name()));
                        std::fs::write(&path, render(c)?).map_err(|e| {
                            Error::io(format!("cannot write {}", path.display()), e)
                        })?;
                        cli::out(path.display())?;
                    }
                    Ok(())
                }
                None => {
                    use clap::CommandFactory;
                    let page = render(Cli::command())?;
                    cli::out(String::from_utf8_lossy(&page))
                }
            }
        }
    }
}
