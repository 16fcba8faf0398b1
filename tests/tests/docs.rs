//! What the documentation promises is tested: every cause id the README lists, every
//! record kind docs/events.md lists and every command the README shows appears, as the
//! string the output carries, in the tests (integration tests, or the explanation
//! engine's unit tests for causes that cannot be made on one host). A new cause or
//! kind without a test fails here.
#![expect(clippy::unwrap_used, reason = "a test fails by panicking")]
use std::{fs, path::Path};

fn root() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}

/// The backquoted ids in the first column of the markdown table under `header`.
fn first_column(doc: &str, header: &str) -> Vec<String> {
    let start = doc
        .find(header)
        .unwrap_or_else(|| panic!("no table {header:?}"));
    let table = &doc[start..];
    let table = &table[..table.find("\n\n").unwrap_or(table.len())];
    let mut ids = Vec::new();
    for line in table.lines().skip(2) {
        let cell = line.split('|').nth(1).unwrap_or("");
        for part in cell.split('`').skip(1).step_by(2) {
            ids.push(part.to_string());
        }
    }
    assert!(!ids.is_empty(), "table {header:?} is empty");
    ids
}

/// The test sources, concatenated.
fn test_sources() -> String {
    let mut text = String::new();
    let mut add = |dir: &Path, only: Option<&str>| {
        for e in fs::read_dir(dir).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if name == "docs.rs" || only.is_some_and(|o| o != name) {
                continue;
            }
            if name.ends_with(".rs") {
                text += &fs::read_to_string(&p).unwrap();
            }
        }
    };
    add(&root().join("tests/tests"), None);
    add(&root().join("tests/src"), Some("lib.rs"));
    unit_tests(&root().join("tracer/src"), &mut text);
    // The golden files are what the golden test asserts, kind by kind and cause by cause.
    for e in fs::read_dir(root().join("tracer/tests/golden"))
        .unwrap()
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "jsonl") {
            text += &fs::read_to_string(e.path()).unwrap();
        }
    }
    text
}

/// The agent's unit tests: whole test files, and the `mod tests` of other files.
fn unit_tests(dir: &Path, text: &mut String) {
    for e in fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            unit_tests(&p, text);
            continue;
        }
        let name = p.file_name().unwrap().to_string_lossy().into_owned();
        let src = fs::read_to_string(&p).unwrap();
        if matches!(name.as_str(), "tests.rs" | "testing.rs" | "golden.rs") {
            *text += &src;
        } else if let Some(i) = src.find("#[cfg(test)]\nmod tests {") {
            *text += &src[i..];
        }
    }
}

fn untested(ids: &[String], sources: &str) -> Vec<String> {
    ids.iter()
        .filter(|id| !sources.contains(&format!("\"{id}\"")))
        .cloned()
        .collect()
}

#[test]
fn every_documented_cause_kind_and_command_is_tested() {
    if !root().join("README.md").exists() {
        // The QEMU guests run the test binaries without the sources; the host checks.
        tests::skip("the sources are not on this machine");
        return;
    }
    let readme = fs::read_to_string(root().join("README.md")).unwrap();
    let events = fs::read_to_string(root().join("docs/events.md")).unwrap();
    let sources = test_sources();
    let causes = first_column(&readme, "| cause | when |");
    assert!(causes.len() >= 20, "{causes:?}");
    let kinds = first_column(&events, "| kind | source | fires when |");
    assert!(kinds.len() >= 14, "{kinds:?}");
    let commands: Vec<String> = [
        "watch",
        "agent",
        "record",
        "explain",
        "summary",
        "export",
        "doctor",
        "probe",
        "completions",
    ]
    .iter()
    .filter(|c| readme.contains(&format!("rstrace {c}")))
    .map(|c| c.to_string())
    .collect();
    assert_eq!(commands.len(), 9, "the README shows {commands:?}");
    for (what, ids) in [
        ("cause", causes),
        ("record kind", kinds),
        ("command", commands),
    ] {
        let missing = untested(&ids, &sources);
        assert!(
            missing.is_empty(),
            "documented but asserted by no test ({what}): {missing:?}"
        );
    }
}
