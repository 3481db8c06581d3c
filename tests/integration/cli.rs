//! The command line around `serve`: `berth config check` loads the configuration exactly as
//! `serve` does and prints it with secrets redacted; completions and the manual page.

use std::process::Command;

use crate::util::*;

/// `berth ARGS` with `env` set and every `BERTH_*` variable of the test's own environment
/// removed, so that only what the test gives is configured.
fn berth(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut command = Command::new(binary());
    for (name, _) in std::env::vars() {
        if name.starts_with("BERTH_") {
            command.env_remove(name);
        }
    }
    command.args(args).envs(env.iter().copied());
    command
}

/// The settings lines (not comments) of a `config check` report.
fn settings_lines(report: &str) -> Vec<&str> {
    report.lines().filter(|l| !l.starts_with('#')).collect()
}

fn config_check_prints_the_layered_configuration_with_secrets_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("berth.toml");
    std::fs::write(
        &file,
        r#"
listen = "127.0.0.1:7000"
data_dir = "/srv/from-file"
gc_interval = "2h"
upload_buffers = 64
fs_part_size = "8MiB"
storage = "filesystem"

[[webhook]]
name = "ci"
url = "https://hook-user:hook-token@ci.example.com/hooks"
headers = { Authorization = "Bearer header-secret" }
"#,
    )
    .unwrap();
    let file = file.display().to_string();
    let report = ok(&mut berth(
        &["--data-dir", "/srv/from-flag", "config", "check"],
        &[
            ("BERTH_CONFIG", &file),
            ("BERTH_LISTEN", "127.0.0.1:7001"),
            ("BERTH_DATA_DIR", "/srv/from-env"),
            (
                "BERTH_DATABASE_URL",
                "postgres://berth:db-password@db:5432/berth",
            ),
        ],
    ));
    for line in [
        "listen = \"127.0.0.1:7001\"",
        "data_dir = \"/srv/from-flag\"",
        "gc_interval = \"2h\"",
        "upload_buffers = 64",
        "fs_part_size = \"8MiB\"",
        "storage = \"filesystem\"",
        "database_url = \"postgres://berth:REDACTED@db:5432/berth\"",
        "# log_format is not set (default: text)",
        "# [[webhook]] ci: https://hook-user:REDACTED@ci.example.com/hooks (headers Authorization: values not shown)",
    ] {
        assert!(
            report.lines().any(|l| l == line),
            "flags over environment over file; missing {line:?} in:\n{report}"
        );
    }
    for secret in ["db-password", "hook-token", "header-secret"] {
        assert!(!report.contains(secret), "{secret} shown:\n{report}");
    }
    assert!(report.contains(&file), "names the file it read:\n{report}");

    // What it prints is a configuration file that loads into the same settings.
    let reloaded = dir.path().join("effective.toml");
    std::fs::write(&reloaded, &report).unwrap();
    let again = ok(&mut berth(
        &["config", "check"],
        &[("BERTH_CONFIG", &reloaded.display().to_string())],
    ));
    assert_eq!(settings_lines(&again), settings_lines(&report));
}

fn config_check_refuses_what_serve_refuses_with_the_same_message() {
    let contradictions: [&[(&str, &str)]; 2] = [
        &[("BERTH_STORAGE", "s3")],
        &[("BERTH_PUBLIC_URL", "registry.example.com")],
    ];
    for env in contradictions {
        let checked = fails(&mut berth(&["config", "check"], env));
        let mut env = env.to_vec();
        env.push(("BERTH_LISTEN", "127.0.0.1:0"));
        let served = fails(&mut berth(&["serve"], &env));
        let message = |out: &str| {
            out.lines()
                .find(|l| l.starts_with("Error: "))
                .map(str::to_owned)
                .unwrap_or_else(|| panic!("no error line in:\n{out}"))
        };
        assert_eq!(message(&checked), message(&served), "{env:?}");
    }
}

fn completions_and_the_manual_page_describe_every_command() {
    // They need no configuration, not even a valid one.
    let broken = [("BERTH_STORAGE", "s3")];
    let bash = ok(&mut berth(&["completions", "bash"], &broken));
    assert!(bash.contains("complete -F _berth"), "{bash}");
    let zsh = ok(&mut berth(&["completions", "zsh"], &broken));
    assert!(zsh.starts_with("#compdef berth"), "{zsh}");
    let man = ok(&mut berth(&["man"], &broken));
    assert!(man.contains(".TH berth 1"), "{man}");
    for command in [
        "serve",
        "migrate",
        "scrub",
        "gc",
        "events",
        "config",
        "completions",
    ] {
        assert!(bash.contains(command), "bash completion lacks {command}");
        assert!(man.contains(command), "the manual page lacks {command}");
    }
    assert!(
        man.contains("BERTH_DATABASE_URL"),
        "settings with their variables"
    );
    fails(&mut berth(&["completions", "tcsh"], &[]));
}

crate::harness::trials! {
    config_check_prints_the_layered_configuration_with_secrets_redacted;
    config_check_refuses_what_serve_refuses_with_the_same_message;
    completions_and_the_manual_page_describe_every_command;
}
