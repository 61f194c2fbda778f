fn main() -> std::process::ExitCode {
    corral::cmd::spawn_worker::main()
}
