fn main() -> std::process::ExitCode {
    signet_milter::cli::main()
}
