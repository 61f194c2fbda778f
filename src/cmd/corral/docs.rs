//! Shell completions and man pages for every binary. Both are rendered into memory first and
//! written with one checked write, so a reader that goes away (`| head -1`) ends the command
//! quietly (exit 0) instead of a panic inside the generator.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::PathBuf;

fn stdout_write(bytes: &[u8]) -> Result<()> {
    let mut o = std::io::stdout().lock();
    o.write_all(bytes)
        .and_then(|_| o.flush())
        .map_err(|e| Error::io("cannot write to stdout", e))
}

/// `corral completions SHELL`: completions for every binary, concatenated.
pub fn completions(shell: clap_complete::Shell) -> Result<()> {
    let mut buf = Vec::new();
    for mut c in crate::cmd::all_commands() {
        let name = c.get_name().to_string();
        clap_complete::generate(shell, &mut c, name, &mut buf);
    }
    stdout_write(&buf)
}

/// Every man page: one per binary and one per subcommand (`task-queue-work.1`), named as
/// the SUBCOMMANDS sections of the parent pages refer to them. (file name, page).
pub fn pages() -> Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &clap::Command, out: &mut Vec<(String, Vec<u8>)>) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, out)?;
        }
        let man = clap_mangen::Man::new(cmd.clone());
        let mut buf = Vec::new();
        man.render(&mut buf)
            .map_err(|e| Error::io("cannot render man page", e))?;
        out.push((man.get_filename(), buf));
        Ok(())
    }
    let mut out = Vec::new();
    for c in crate::cmd::all_commands() {
        // Building names each subcommand `parent-sub`, as the parent page lists it.
        let mut c = c.disable_help_subcommand(true);
        c.build();
        walk(&c, &mut out)?;
    }
    Ok(out)
}

/// `corral man [--out-dir DIR]`.
pub fn man(out_dir: Option<PathBuf>) -> Result<()> {
    let pages = pages()?;
    match out_dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| Error::io(format!("cannot create {}", dir.display()), e))?;
            for (name, page) in pages {
                let path = dir.join(&name);
                std::fs::write(&path, page)
                    .map_err(|e| Error::io(format!("cannot write {}", path.display()), e))?;
                crate::cli::out(path.display())?;
            }
            Ok(())
        }
        None => {
            let page = pages
                .into_iter()
                .find(|(n, _)| n == "corral.1")
                .map(|(_, p)| p)
                .ok_or_else(|| Error::Internal("no corral.1 page".into()))?;
            stdout_write(&page)
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_page_a_page_refers_to_exists() {
        let pages = super::pages().unwrap();
        let names: std::collections::HashSet<String> =
            pages.iter().map(|(n, _)| n.clone()).collect();
        assert!(names.contains("task-queue-work.1"), "{names:?}");
        assert!(names.contains("corral-type-set.1"), "{names:?}");
        let mut refs = 0;
        for (name, page) in &pages {
            let text = String::from_utf8_lossy(page).replace("\\-", "-");
            for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || "-()".contains(c))) {
                if let Some(stem) = word.strip_suffix("(1)") {
                    refs += 1;
                    assert!(
                        names.contains(&format!("{stem}.1")),
                        "{name} refers to {word}, which is not generated"
                    );
                }
            }
        }
        assert!(refs > 20, "subcommand references were checked ({refs})");
    }
}
