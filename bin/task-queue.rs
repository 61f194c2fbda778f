fn main() -> std::process::ExitCode {
    corral::cmd::task_queue::main()
}
