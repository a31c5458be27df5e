use clap::Parser as _;
use floodwall::cli::{Cli, run};

fn main() {
    let cli = Cli::parse();
    if !matches!(cli.command, floodwall::cli::Command::Run { .. }) {
        // A short command piped into `head` should end quietly, like any Unix tool; the
        // service keeps the default so a metrics client hanging up cannot kill it.
        // SAFETY: setting a signal disposition before any thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    if let Err(e) = run(cli) {
        // The whole chain, skipping causes a message already quotes.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            let text = cause.to_string();
            if !message.contains(&text) {
                message = format!("{message}: {text}");
            }
            source = cause.source();
        }
        eprintln!("floodwall: {message}");
        std::process::exit(e.exit_code());
    }
}
