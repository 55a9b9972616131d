//! The operator commands, run as the compiled binary against a config file's database.

#[path = "common/binary.rs"]
mod binary;
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
fn providers_catalog_lists_every_entry_with_its_documentation() {
    // No configuration and no database are needed: the catalog is compiled in.
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-config.toml");
    let listed = tokenwarden(&missing, &["providers", "catalog"], None);
    let out = String::from_utf8_lossy(&listed.stdout).to_string();
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(out.lines().count() >= 50, "{out}");
    let google = out
        .lines()
        .find(|l| l.starts_with("google "))
        .expect("google listed");
    assert!(
        google.contains("https://oauth2.googleapis.com/token"),
        "{google}"
    );
    assert!(
        google.contains("https://developers.google.com/"),
        "{google}"
    );

    let json = tokenwarden(&missing, &["providers", "catalog", "--json"], None);
    assert!(json.status.success(), "{}", text(&json));
    let all: serde_json::Value = serde_json::from_slice(&json.stdout).expect("json");
    let entries = all.as_object().expect("object");
    assert!(entries.len() >= 50);
    assert_eq!(all["reddit"]["user_agent_required"], true);
    assert!(
        all["reddit"]["docs"]["user_agent_required"]
            .as_str()
            .is_some()
    );
    assert!(!dir.path().join("tokenwarden-data").exists() && !missing.exists());
}

/// `webhooks secret` needs no configuration or database, and prints a secret that the
/// configuration accepts and that differs every time.
#[test]
fn webhooks_secret_prints_a_new_secret_the_config_accepts() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-config.toml");
    let secret = |_| {
        let out = tokenwarden(&missing, &["webhooks", "secret"], None);
        assert!(out.status.success(), "{}", text(&out));
        assert!(out.stderr.is_empty(), "{}", text(&out));
        String::from_utf8(out.stdout).expect("UTF-8")
    };
    let (first, second) = (secret(1), secret(2));
    assert_ne!(first, second);
    let first = first.strip_suffix('\n').expect("one line");
    assert!(!first.contains('\n'), "{first:?}");
    assert!(first.starts_with("whsec_"), "{first}");
    tokenwarden::webhooks::WebhookSecret::parse(first).expect("a valid secret");

    // The binary loads a configuration holding it; a mangled copy stops it at start, naming
    // the key and not the value.
    let config = dir.path().join("tokenwarden.toml");
    let key = tokenwarden::KeyRing::generate_key_base64();
    let write_config = |secret: &str| {
        let text = format!(
            "database_url = \"sqlite://{}/tw.db\"\n\
             [encryption]\nactive_key = \"k1\"\nkeys = {{ k1 = \"{key}\" }}\n\
             [auth]\napi_keys = [\"0123456789abcdef-key\"]\n\
             [webhooks.endpoints.ops]\nurl = \"https://hooks.example.com/tw\"\n\
             secret = \"{secret}\"\n",
            dir.path().display()
        );
        std::fs::write(&config, text).expect("config");
    };
    write_config(first);
    let ok = tokenwarden(&config, &["providers", "list"], None);
    assert!(ok.status.success(), "{}", text(&ok));
    let truncated = &first[..first.len() - 16];
    write_config(truncated);
    let bad = tokenwarden(&config, &["providers", "list"], None);
    assert!(!bad.status.success());
    let err = text(&bad);
    assert!(err.contains("webhooks.endpoints.ops.secret"), "{err}");
    assert!(!err.contains(&truncated["whsec_".len()..]), "{err}");
    assert!(!dir.path().join("tokenwarden-data").exists() && !missing.exists());
}

/// `openapi` needs no configuration or database, and prints the document for any
/// configuration: the one committed in `clients/typescript`, whose types the TypeScript
/// client is generated from. A route or schema changed without regenerating them fails here.
#[test]
fn openapi_prints_the_document_the_typescript_client_is_generated_from() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("no-such-config.toml");
    let out = tokenwarden(&missing, &["openapi"], None);
    assert!(out.status.success(), "{}", text(&out));
    let printed = String::from_utf8(out.stdout).expect("UTF-8");
    let doc: serde_json::Value = serde_json::from_str(&printed).expect("JSON");
    assert!(doc["paths"]["/v1/connect/sessions"]["post"].is_object());
    // Any configuration: nothing that accepts no value, and no list of configured names.
    let session = &doc["components"]["schemas"]["CreateSessionBody"]["properties"];
    assert_eq!(session["provider"]["type"], "string", "{session}");
    assert_eq!(session["return_url"]["type"], "string", "{session}");
    assert!(
        !printed.contains("\"not\""),
        "a schema that accepts nothing"
    );
    let provider = &doc["paths"]["/v1/users/{user_id}/connections/{provider}/{account_id}"]["get"]
        ["parameters"][1];
    assert_eq!(provider["name"], "provider");
    assert!(provider["schema"]["pattern"].is_string() && provider["schema"]["enum"].is_null());
    assert!(!dir.path().join("tokenwarden-data").exists() && !missing.exists());

    let committed_path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../clients/typescript/openapi.json");
    let committed = std::fs::read_to_string(&committed_path).expect("the committed document");
    assert!(
        committed == printed,
        "clients/typescript/openapi.json is not what `tokenwarden openapi` prints: run \
         `npm run generate` in clients/typescript and commit openapi.json and src/schema.ts"
    );
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

/// Key rotation end to end: import under k1, make k2 active (k1 still listed), run
/// `keys rotate`, see `keys status` move every ciphertext to k2, remove k1 from the
/// configuration, and every token is still served by `serve`.
#[test]
fn key_rotation_then_old_key_removed_every_token_still_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("tokenwarden.toml");
    let original = common::config_toml(&dir, "http://127.0.0.1:9/token", "");
    std::fs::write(&config, &original).expect("config");
    let k1 = original
        .lines()
        .find_map(|l| l.strip_prefix("keys = { k1 = \""))
        .and_then(|rest| rest.strip_suffix("\" }"))
        .expect("k1 in the test config")
        .to_owned();
    for i in 0..5 {
        let body = format!(
            r#"{{"access_token": "rotate-access-{i}", "refresh_token": "rotate-refresh-{i}", "expires_in": 86400}}"#
        );
        let out = tokenwarden(
            &config,
            &[
                "connections",
                "import",
                "user",
                "fake",
                &format!("acct-{i}"),
                "--file",
                "-",
            ],
            Some(&body),
        );
        assert!(out.status.success(), "{}", text(&out));
    }

    let k2 = String::from_utf8_lossy(&tokenwarden(&config, &["keys", "generate"], None).stdout)
        .trim()
        .to_owned();
    let both = original.replace(
        &format!("active_key = \"k1\"\nkeys = {{ k1 = \"{k1}\" }}"),
        &format!("active_key = \"k2\"\nkeys = {{ k1 = \"{k1}\", k2 = \"{k2}\" }}"),
    );
    assert_ne!(both, original, "the key section was rewritten");
    std::fs::write(&config, &both).expect("config");
    let rotate = tokenwarden(&config, &["keys", "rotate"], None);
    assert!(rotate.status.success(), "{}", text(&rotate));
    let status = String::from_utf8_lossy(&tokenwarden(&config, &["keys", "status"], None).stdout)
        .to_string();
    assert!(
        status.contains("k2\t10\tactive"),
        "10 ciphertexts under k2: {status}"
    );
    assert!(
        status.contains("k1\t0\t"),
        "nothing left under k1: {status}"
    );

    let only_new = original.replace(
        &format!("active_key = \"k1\"\nkeys = {{ k1 = \"{k1}\" }}"),
        &format!("active_key = \"k2\"\nkeys = {{ k2 = \"{k2}\" }}"),
    );
    std::fs::write(&config, &only_new).expect("config");
    let server = binary::start(
        dir.path(),
        &["--config", config.to_str().expect("utf-8"), "serve"],
        &[],
    );
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(async {
        let client = reqwest::Client::new();
        for i in 0..5 {
            let url = format!(
                "http://{}/v1/users/user/connections/fake/acct-{i}/access-token",
                server.addr
            );
            let response = client
                .get(&url)
                .bearer_auth(common::API_KEY)
                .send()
                .await
                .expect("get");
            assert_eq!(response.status(), 200);
            let body: serde_json::Value = response.json().await.expect("json");
            assert_eq!(body["access_token"], format!("rotate-access-{i}"));
        }
    });
    server.stop();
}
