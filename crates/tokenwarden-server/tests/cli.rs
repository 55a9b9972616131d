//! The operator commands, run as the compiled binary against a config file's database.

mod common;

use std::io::Write;
use std::process::{Command, Output, Stdio};

fn tokenwarden(config: &std::path::Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tokenwarden"));
    command
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, _) in std::env::vars() {
        if name.starts_with("TOKENWARDEN_") {
            command.env_remove(name);
        }
    }
    let mut child = command.spawn().expect("runs");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write stdin");
    }
    drop(child.stdin.take());
    child.wait_with_output().expect("finishes")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn connections_providers_and_keys_commands() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tokenwarden.toml");
    std::fs::write(
        &config,
        common::config_toml(&dir, "http://127.0.0.1:9/token", ""),
    )
    .expect("config");

    let import = tokenwarden(
        &config,
        &[
            "connections",
            "import",
            "user-1",
            "fake",
            "acct-1",
            "--file",
            "-",
        ],
        Some(
            r#"{"access_token": "cli-access-SECRET", "refresh_token": "cli-refresh-SECRET", "expires_in": 3600}"#,
        ),
    );
    assert!(import.status.success(), "{}", text(&import));
    let out = text(&import);
    assert!(
        out.contains("created") && out.contains("\"account_id\": \"acct-1\""),
        "{out}"
    );
    assert!(!out.contains("SECRET"), "{out}");

    for i in 2..=4 {
        let account = format!("acct-{i}");
        let file = dir.path().join("import.json");
        std::fs::write(&file, r#"{"access_token": "t", "scopes": ["a"]}"#).expect("write");
        let output = tokenwarden(
            &config,
            &[
                "connections",
                "import",
                "user-2",
                "fake",
                &account,
                "--file",
                file.to_str().expect("utf-8"),
            ],
            None,
        );
        assert!(output.status.success(), "{}", text(&output));
    }

    let list = tokenwarden(&config, &["connections", "list", "--json"], None);
    assert!(list.status.success(), "{}", text(&list));
    let stdout = String::from_utf8_lossy(&list.stdout);
    assert_eq!(stdout.lines().count(), 4, "{stdout}");
    assert!(!stdout.contains("SECRET"));
    let filtered = tokenwarden(
        &config,
        &["connections", "list", "--user-id", "user-2", "--limit", "2"],
        None,
    );
    let stdout = String::from_utf8_lossy(&filtered.stdout);
    assert_eq!(
        stdout.lines().count(),
        1 + 2,
        "header and two rows: {stdout}"
    );

    let show = tokenwarden(
        &config,
        &["connections", "show", "user-1", "fake", "acct-1"],
        None,
    );
    assert!(show.status.success());
    assert!(String::from_utf8_lossy(&show.stdout).contains("\"has_refresh_token\": true"));

    let providers = tokenwarden(&config, &["providers", "list"], None);
    let out = text(&providers);
    assert!(
        providers.status.success() && out.contains("\"name\": \"fake\""),
        "{out}"
    );
    assert!(!out.contains(common::CLIENT_SECRET));

    let status = tokenwarden(&config, &["keys", "status"], None);
    let out = String::from_utf8_lossy(&status.stdout).to_string();
    assert!(
        out.contains("k1\t5\tactive"),
        "4 access tokens and 1 refresh token: {out}"
    );

    let generated = tokenwarden(&config, &["keys", "generate"], None);
    let key = String::from_utf8_lossy(&generated.stdout).trim().to_owned();
    assert!(tokenwarden::KeyRing::from_base64("x", [("x", key.as_str())]).is_ok());

    let rotate = tokenwarden(&config, &["keys", "rotate"], None);
    assert!(rotate.status.success(), "{}", text(&rotate));

    let delete = tokenwarden(
        &config,
        &["connections", "delete", "user-1", "fake", "acct-1"],
        None,
    );
    assert!(delete.status.success(), "{}", text(&delete));
    let again = tokenwarden(
        &config,
        &["connections", "delete", "user-1", "fake", "acct-1"],
        None,
    );
    assert!(!again.status.success());
    assert!(text(&again).contains("ACCOUNT_NOT_FOUND"));

    let unknown = tokenwarden(&config, &["connections", "show", "u", "nope", "a"], None);
    assert!(!unknown.status.success());
    assert!(text(&unknown).contains("UNKNOWN_PROVIDER"));
}
