fn main() -> std::process::ExitCode {
    corral::cmd::worker_monitor::main()
}
