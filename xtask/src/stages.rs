//! The agent's modules follow its pipeline (tracer/src/lib.rs): a stage may use only
//! the stages before it, and the command layer all of them. Checked by `lint`, so a
//! shortcut from an early stage to a later one fails the build instead of growing.
use std::{fs, path::Path};

use anyhow::{bail, Context, Result};

/// Stage folders (or files) of tracer/src, in pipeline order; equal ranks may use
/// each other.
const STAGES: &[(&str, u8)] = &[
    ("base", 0),
    ("kernel", 1),
    ("source", 2),
    ("capture", 2),
    ("decode", 3),
    ("enrich", 4),
    ("explain", 5),
    ("sink", 6),
    ("pipeline", 7),
    ("cmd", 8),
];

fn rank(name: &str) -> Option<u8> {
    STAGES.iter().find(|(n, _)| *n == name).map(|&(_, r)| r)
}

/// The top-level modules a source file names after `crate::`, in `use` trees too.
fn used_stages(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = src;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut at_item = true;
            let mut word = String::new();
            for c in group.chars() {
                if c.is_alphanumeric() || c == '_' {
                    word.push(c);
                    continue;
                }
                if !word.is_empty() && at_item && depth == 1 {
                    out.push(std::mem::take(&mut word));
                }
                word.clear();
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                if depth == 0 {
                    break;
                }
                if c == ',' && depth == 1 {
                    at_item = true;
                } else if !c.is_whitespace() {
                    at_item = false;
                }
            }
        } else {
            let name: String = rest
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            out.push(name);
        }
    }
    out
}

fn files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let p = e?.path();
        if p.is_dir() {
            files(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
    Ok(())
}

pub fn check(src: &Path) -> Result<()> {
    let mut all = Vec::new();
    files(src, &mut all)?;
    let mut wrong = Vec::new();
    for p in all {
        let rel = p.strip_prefix(src).unwrap_or(&p);
        let top = rel
            .components()
            .next()
            .expect("a file under src has a first component")
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs");
        if top == "lib" || top == "main" {
            continue;
        }
        let Some(own) = rank(top) else {
            wrong.push(format!(
                "{}: not in a stage folder (xtask/src/stages.rs)",
                rel.display()
            ));
            continue;
        };
        let text = fs::read_to_string(&p)?;
        for used in used_stages(&text) {
            match rank(&used) {
                Some(r) if r <= own => {}
                Some(_) => wrong.push(format!(
                    "{}: stage `{top}` uses the later stage `{used}`",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "{}: uses `crate::{used}`, which is not a stage",
                    rel.display()
                )),
            }
        }
    }
    if !wrong.is_empty() {
        bail!("stage order broken:\n  {}", wrong.join("\n  "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_top_level_names_in_paths_and_use_trees() {
        let src = "use crate::{base::{record::Record, FastMap}, kernel::info::X};\n\
                   let c = crate::decode::Clock::now(); use crate::sink;";
        assert_eq!(used_stages(src), ["base", "kernel", "decode", "sink"]);
    }
}
