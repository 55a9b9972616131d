//! Tells this crate's integration tests which of their prerequisites this machine has, so a
//! test that cannot run is reported as ignored, with the reason, instead of passing untested:
//!
//! * `tw_postgres`: `TOKENWARDEN_TEST_POSTGRES_URL` is set (PostgreSQL tests);
//! * `tw_interop`: the interop authorization server is installed
//!   (`interop/oidc-provider/node_modules`, from `npm ci`).
//!
//! Only files under `tests/` read these cfgs; the library an embedder builds is the same
//! either way. A test enabled here whose prerequisite is gone when it runs fails.

use std::path::Path;

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tw_postgres, tw_interop)");
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
}
