//! The independent Standard Webhooks implementation the signature tests check against: the
//! npm `standardwebhooks` package, driven by `interop/webhooks/verify.mjs`.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Where `verify.mjs` and its `node_modules` are.
pub fn webhooks_interop_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../interop/webhooks")
}

/// Runs every message (`{"secret", "headers", "body"}`, one JSON object each) through one
/// `node verify.mjs` and returns its verdict for each, in order. Panics with node's own
/// error when the package is missing or node fails, so a broken harness never reads as a
/// verdict.
pub fn standardwebhooks_verdicts(messages: &[serde_json::Value]) -> Vec<String> {
    let dir = webhooks_interop_dir();
    assert!(
        dir.join("node_modules/standardwebhooks/package.json")
            .is_file(),
        "standardwebhooks is not installed although this test was built for it: \
         run `npm ci` in interop/webhooks (scripts/test does)"
    );
    let mut input = String::new();
    for message in messages {
        input.push_str(&message.to_string());
        input.push('\n');
    }
    let mut child = Command::new("node")
        .arg("verify.mjs")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start `node verify.mjs` (is node on PATH?)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write to verify.mjs");
    let out = child.wait_with_output().expect("verify.mjs runs");
    assert!(
        out.status.success(),
        "verify.mjs failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("UTF-8 output")
        .lines()
        .map(str::to_owned)
        .collect()
}
