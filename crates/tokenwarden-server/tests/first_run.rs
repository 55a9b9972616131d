//! The embedded first-run default, by running the compiled binary in an empty directory.

#[path = "common/binary.rs"]
mod binary;

use std::os::unix::fs::PermissionsExt;

fn admin_key(output: &[String]) -> Option<String> {
    output.iter().find_map(|line| {
        let start = line.find("tw_")?;
        let key: String = line[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        (key.len() == 3 + 64).then_some(key)
    })
}

#[tokio::test]
async fn first_start_creates_data_and_prints_a_working_key_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = binary::start(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &[]);
    let key = admin_key(&running.lines).expect("the first start prints an admin key");
    let banner = running.lines.join("\n");
    assert!(banner.contains("LOCAL DEVELOPMENT DEFAULT"), "{banner}");

    let data = dir.path().join("tokenwarden-data");
    let mode =
        |p: &std::path::Path| std::fs::metadata(p).expect("exists").permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("encryption.key")), 0o600);
    assert!(data.join("tokenwarden.db").exists());
    let hash = std::fs::read_to_string(data.join("admin-api-key.sha256")).expect("hash file");
    assert!(hash.starts_with("sha256:"));
    assert!(!hash.contains(&key[3..]), "only the hash is stored");

    let client = reqwest::Client::new();
    let url = format!("http://{}/v1/providers", running.addr);
    let ok = client
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status().as_u16(), 200);
    let denied = client.get(&url).send().await.expect("request");
    assert_eq!(denied.status().as_u16(), 401);
    let output = running.stop();
    assert!(output.contains("stopped"), "graceful shutdown logs its end");

    // Second start: same data, no new key printed, the old key still works.
    let again = binary::start(dir.path(), &["serve", "--listen", "127.0.0.1:0"], &[]);
    assert!(
        admin_key(&again.lines).is_none(),
        "no new key on a later start"
    );
    assert!(
        again
            .lines
            .iter()
            .any(|l| l.contains("admin-api-key.sha256"))
    );
    let url = format!("http://{}/v1/providers", again.addr);
    let ok = client
        .get(&url)
        .bearer_auth(&key)
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status().as_u16(), 200);
    let output = again.stop();
    assert!(admin_key(&output.lines().map(str::to_owned).collect::<Vec<_>>()).is_none());
}

#[tokio::test]
async fn listen_comes_from_the_environment_too() {
    let dir = tempfile::tempdir().expect("tempdir");
    let running = binary::start(
        dir.path(),
        &["serve"],
        &[("TOKENWARDEN_LISTEN", "127.0.0.1:0")],
    );
    assert!(running.addr.starts_with("127.0.0.1:"));
    assert_ne!(running.addr, "127.0.0.1:8420");
    running.stop();
}

#[test]
fn a_bad_config_names_the_key_and_not_the_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[refresh]\nmax_retries = 99\n[auth]\napi_keys = [\"hunter2-hunter2-hunter2\"]\n",
    )
    .expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_tokenwarden"))
        .args(["serve", "--config"])
        .arg(&path)
        .current_dir(dir.path())
        .env_remove("TOKENWARDEN_CONFIG")
        .output()
        .expect("runs");
    assert!(!output.status.success());
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(text.contains("refresh.max_retries"), "{text}");
    assert!(!text.contains("hunter2"), "{text}");
}
