use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = chaperone_injector::cli::Cli::parse();
    if let Err(error) = cli.init_tracing() {
        eprintln!("chaperone-injector: {error}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("chaperone-injector: failed to start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chaperone_injector::cli::run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line.
            eprintln!("chaperone-injector: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
