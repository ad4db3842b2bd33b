//! Repository rules, checked as a plain test so that CI enforces them.

use std::fs;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn members() -> Vec<PathBuf> {
    let mut members: Vec<PathBuf> = fs::read_dir(root().join("crates"))
        .expect("crates/ is readable")
        .map(|entry| entry.expect("directory entry").path())
        .filter(|path| path.join("Cargo.toml").is_file())
        .collect();
    members.sort();
    members
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

#[test]
fn every_member_has_readme_changelog_and_workspace_lints() {
    for member in members() {
        assert!(
            member.join("README.md").is_file(),
            "{} has no README.md",
            member.display()
        );
        assert!(
            member.join("CHANGELOG.md").is_file(),
            "{} has no CHANGELOG.md",
            member.display()
        );

        let manifest = read(&member.join("Cargo.toml"));
        assert!(
            manifest.contains("[lints]\nworkspace = true"),
            "{} does not opt into [workspace.lints]",
            member.display()
        );
        assert!(
            manifest.contains("name = \"steadfast-"),
            "{} is not named steadfast-*",
            member.display()
        );
    }
}

#[test]
fn every_member_lib_opens_with_docs_and_an_example() {
    for member in members() {
        let lib = read(&member.join("src/lib.rs"));
        assert!(
            lib.starts_with("//!"),
            "{} lib.rs does not open with docs",
            member.display()
        );
        assert!(
            lib.contains("//! ```"),
            "{} lib.rs has no doc example",
            member.display()
        );
    }
}

#[test]
fn no_toolchain_is_pinned() {
    assert!(!root().join("rust-toolchain.toml").exists());
    assert!(!root().join("rust-toolchain").exists());
}

#[test]
fn ci_runs_the_test_command_the_readme_gives() {
    let readme = read(&root().join("README.md"));
    let ci = read(&root().join(".ci/run"));
    assert!(
        readme.contains("cargo xtask test"),
        "README.md does not give `cargo xtask test`"
    );
    assert!(
        ci.contains("cargo xtask test"),
        ".ci/run does not run `cargo xtask test`"
    );
}
