fn main() -> std::process::ExitCode {
    corral::cmd::cleanup_zombies::main()
}
