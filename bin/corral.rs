fn main() -> std::process::ExitCode {
    corral::cmd::corral::main()
}
