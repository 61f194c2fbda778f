fn main() -> std::process::ExitCode {
    corral::cmd::heartbeat_monitor::main()
}
