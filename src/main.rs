use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = chaperone::cli::Cli::parse();
    if let Err(error) = cli.init_tracing() {
        eprintln!("chaperone: {error}");
        return std::process::ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(error) => {
            eprintln!("chaperone: failed to start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(chaperone::cli::run(cli)) {
        Ok(code) => code,
        Err(error) => {
            // `{:#}` prints the whole cause chain on one line: "reading X: no such file".
            eprintln!("chaperone: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
