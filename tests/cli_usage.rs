//! The command line itself: usage errors exit 64 (never 2, which means "denied"), `--help` and
//! `--version` exit 0, and every subcommand documents itself.

use std::process::Command;

fn warden() -> Command {
    Command::new(env!("CARGO_BIN_EXE_warden"))
}

#[test]
fn an_unknown_subcommand_is_a_usage_error_naming_it() {
    let out = warden().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("frobnicate"));
}

#[test]
fn an_unknown_flag_is_a_usage_error_naming_it() {
    let out = warden()
        .args(["policy", "validate", "--no-such-flag", "policies"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--no-such-flag"));
}

#[test]
fn help_and_version_exit_zero() {
    let help = warden().arg("--help").output().unwrap();
    assert_eq!(help.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&help.stdout).contains("Usage: warden"));
    let version = warden().arg("--version").output().unwrap();
    assert_eq!(version.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("warden "));
}

/// Every subcommand (and sub-subcommand) answers `--help` with a description of its options.
#[test]
fn every_subcommand_has_help() {
    let top = warden().arg("--help").output().unwrap();
    let top = String::from_utf8_lossy(&top.stdout).into_owned();
    let subcommands = command_names(&top);
    assert!(subcommands.len() >= 9, "too few subcommands in:\n{top}");
    for sub in subcommands {
        let out = warden().args([sub.as_str(), "--help"]).output().unwrap();
        assert_eq!(out.status.code(), Some(0), "warden {sub} --help");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(text.contains("Usage:"), "warden {sub} --help:\n{text}");
        for leaf in command_names(&text) {
            let out = warden()
                .args([sub.as_str(), leaf.as_str(), "--help"])
                .output()
                .unwrap();
            assert_eq!(out.status.code(), Some(0), "warden {sub} {leaf} --help");
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                text.contains("Options:"),
                "warden {sub} {leaf} --help:\n{text}"
            );
        }
    }
}

/// The names listed under "Commands:" in a clap help text, without `help`.
fn command_names(help: &str) -> Vec<String> {
    help.lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| *name != "help")
        .map(str::to_owned)
        .collect()
}
