//! `dbslots completions SHELL` and `dbslots man`: the shell completion
//! script and the manual page, generated from the command definitions
//! (`clap_complete`, `clap_mangen`) so they never drift from the flags.

use std::process::ExitCode;

use clap::{Args, CommandFactory, ValueEnum};

/// Print the shell completion script for SHELL
///
/// Install it with, for example,
/// `dbslots completions bash > /etc/bash_completion.d/dbslots`,
/// `dbslots completions zsh > "${fpath[1]}/_dbslots"` or
/// `dbslots completions fish > ~/.config/fish/completions/dbslots.fish`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    shell: Shell,
}

/// The shells a completion script can be generated for.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Shell {
    Bash,
    Zsh,
    Fish,
}

/// Print the manual page (roff) of dbslots and its subcommands
///
/// Read it with `dbslots man > dbslots.1 && man -l dbslots.1`, or install
/// it as `/usr/local/share/man/man1/dbslots.1`.
#[derive(Debug, Args)]
pub struct ManArgs {}

pub fn run_completions(args: CompletionsArgs) -> anyhow::Result<ExitCode> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut crate::Cli::command(), "dbslots", &mut out);
    crate::output::stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}

pub fn run_man(_args: ManArgs) -> anyhow::Result<ExitCode> {
    let cmd = crate::Cli::command();
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut out)?;
    // One page for everything: each subcommand's section follows the
    // overview, as in git's or cargo's single-page references.
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("dbslots-{}", sub.get_name());
        let sub = sub.clone().display_name(name);
        clap_mangen::Man::new(sub).render(&mut out)?;
    }
    crate::output::stdout(&out)?;
    Ok(ExitCode::SUCCESS)
}
