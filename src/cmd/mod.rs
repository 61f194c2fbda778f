//! Command-line front ends, one module per binary. Each turns parsed flags into a library
//! call; `bin/*.rs` only call `main()` here. Keeping the clap definitions in the library lets
//! `corral completions` and `corral man` cover every binary.

pub mod corral;
pub mod heartbeat;
pub mod recalc_budget;
pub mod spawn_worker;

/// Every binary's clap command, for completions and man pages.
pub fn all_commands() -> Vec<clap::Command> {
    use clap::CommandFactory;
    vec![
        corral::Cli::command(),
        spawn_worker::Cli::command(),
        heartbeat::Cli::command(),
        recalc_budget::Cli::command(),
    ]
}
