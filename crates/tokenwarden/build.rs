//! Tells this crate's integration tests which of their prerequisites this machine has, so a
//! test that cannot run is reported as ignored, with the reason, instead of passing untested:
//!
//! * `tw_postgres`: `TOKENWARDEN_TEST_POSTGRES_URL` is set (PostgreSQL tests);
//! * `tw_interop`: the interop authorization server is installed
//!   (`interop/oidc-provider/node_modules`, from `npm ci`);
//! * `tw_webhooks`: the independent webhook signature checker is installed
//!   (`interop/webhooks/node_modules`, from `npm ci`).
//!
//! Only files under `tests/` read these cfgs; the library an embedder builds is the same
//! either way. A test enabled here whose prerequisite is gone when it runs fails.

use std::fmt::Write as _;
use std::path::Path;

fn main() {
    embed_catalog();

    println!("cargo::rustc-check-cfg=cfg(tw_postgres, tw_interop, tw_webhooks)");
    println!("cargo::rerun-if-changed=build.rs");

    println!("cargo::rerun-if-env-changed=TOKENWARDEN_TEST_POSTGRES_URL");
    if std::env::var_os("TOKENWARDEN_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=tw_postgres");
    }

    // Only in a checkout of the repository; a packaged crate has no `interop/`.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let interop = Path::new(&manifest_dir).join("../../interop/oidc-provider");
    if interop.is_dir() {
        // A directory is watched recursively, so installing or removing `node_modules`
        // reruns this. A missing path would rerun it (and rebuild the crate) every time.
        println!("cargo::rerun-if-changed={}", interop.display());
        if interop
            .join("node_modules/oidc-provider/package.json")
            .is_file()
        {
            println!("cargo::rustc-cfg=tw_interop");
        }
    }
    let webhooks = Path::new(&manifest_dir).join("../../interop/webhooks");
    if webhooks.is_dir() {
        // Watched like `interop/oidc-provider` above, for the same reasons.
        println!("cargo::rerun-if-changed={}", webhooks.display());
        if webhooks
            .join("node_modules/standardwebhooks/package.json")
            .is_file()
        {
            println!("cargo::rustc-cfg=tw_webhooks");
        }
    }
}

/// Writes `$OUT_DIR/catalog.rs`: every `catalog/*.toml` as `(id, text)`, sorted by id, so a new
/// provider file needs no code change. `provider::catalog` parses them; its tests check each.
fn embed_catalog() {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR");
    let dir = Path::new(&manifest_dir).join("catalog");
    println!("cargo::rerun-if-changed={}", dir.display());
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("catalog directory")
        .map(|entry| entry.expect("catalog entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    let mut out = String::from("&[\n");
    for path in files {
        let id = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("UTF-8 file name");
        writeln!(
            out,
            "    ({id:?}, include_str!({:?})),",
            path.display().to_string()
        )
        .expect("write to a String");
    }
    out.push_str("]\n");
    let out_dir = std::env::var("OUT_DIR").expect("OUT_DIR");
    std::fs::write(Path::new(&out_dir).join("catalog.rs"), out).expect("write catalog.rs");
}
