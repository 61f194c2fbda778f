fn main() -> std::process::ExitCode {
    corral::cmd::recalc_budget::main()
}
