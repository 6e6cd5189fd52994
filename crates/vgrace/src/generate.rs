//! `vgrace generate`: man pages (`clap_mangen`) and shell completions (`clap_complete`) made
//! from the same clap definition the binary parses, so they cannot drift from it. Hidden: for
//! packagers (scripts/package.sh).

use std::io::Write;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cli::{Cli, GenerateArgs};

/// Writes the files and names each on stdout.
pub fn run(args: &GenerateArgs) -> Result<()> {
    let mut out = crate::out::stdout();
    match args {
        GenerateArgs::Man { dir } => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            clap_mangen::generate_to(Cli::command(), dir)
                .with_context(|| format!("cannot write the man pages to {}", dir.display()))?;
            let mut pages: Vec<_> = std::fs::read_dir(dir)
                .with_context(|| format!("cannot read {}", dir.display()))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "1"))
                .collect();
            pages.sort();
            for page in pages {
                writeln!(out, "{}", page.display())?;
            }
        }
        GenerateArgs::Completions { shell, dir } => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let path = clap_complete::generate_to(*shell, &mut Cli::command(), "vgrace", dir)
                .with_context(|| format!("cannot write the {shell} completions"))?;
            writeln!(out, "{}", path.display())?;
        }
    }
    Ok(())
}
