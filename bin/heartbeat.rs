fn main() -> std::process::ExitCode {
    corral::cmd::heartbeat::main()
}
