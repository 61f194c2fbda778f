//! Command-line front ends, one module per binary. Each turns parsed flags into a library
//! call; `bin/*.rs` only call `main()` here. Keeping the clap definitions in the library lets
//! `corral completions` and `corral man` cover every binary.

pub mod cleanup_zombies;
pub mod corral;
pub mod heartbeat;
pub mod heartbeat_monitor;
pub mod recalc_budget;
pub mod spawn_worker;
pub mod stop_worker;
pub mod task_queue;
pub mod worker_monitor;

/// Every binary's clap command, for completions and man pages.
pub fn all_commands() -> Vec<clap::Command> {
    use clap::CommandFactory;
    vec![
        corral::Cli::command(),
        spawn_worker::Cli::command(),
        heartbeat::Cli::command(),
        heartbeat_monitor::Cli::command(),
        stop_worker::Cli::command(),
        cleanup_zombies::Cli::command(),
        worker_monitor::Cli::command(),
        recalc_budget::Cli::command(),
        task_queue::Cli::command(),
    ]
}
