fn main() -> std::process::ExitCode {
    corral::cmd::stop_worker::main()
}
