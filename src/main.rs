fn main() -> std::process::ExitCode {
    bucketgate::cli::main()
}
