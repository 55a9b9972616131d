//! Tells this crate's integration tests which of their prerequisites this machine has, so a
//! test that cannot run is reported as ignored, with the reason, instead of passing untested
//! (the library's `build.rs` does the same for its own tests):
//!
//! * `tw_postgres`: `TOKENWARDEN_TEST_POSTGRES_URL` is set (PostgreSQL tests);
//! * `tw_chromium`: the dashboard's browser test can run: the browser harness
//!   (`interop/browser/node_modules/playwright-core`, from `npm ci`) and Debian's
//!   `/usr/bin/chromium` are there (`scripts/test` and `.ci/run` see to both);
//! * `tw_browser`: the connect-flow browser tests can run: `tw_chromium`, and the interop
//!   authorization server (`interop/oidc-provider/node_modules/oidc-provider`) is installed by
//!   `npm ci` too;
//! * `tw_webhooks_server`: the npm Standard Webhooks verifier is installed
//!   (`interop/webhooks/node_modules/standardwebhooks`, from `npm ci` in `scripts/test`).
//!
//! Only files under `tests/` read these cfgs; the binary is the same either way. A test
//! enabled here whose prerequisite is gone when it runs fails.

use std::path::Path;

const CHROMIUM: &str = "/usr/bin/chromium";

fn main() {
    println!(
        "cargo::rustc-check-cfg=cfg(tw_postgres, tw_chromium, tw_browser, tw_webhooks_server)"
    );
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TOKENWARDEN_TEST_POSTGRES_URL");
    if std::env::var_os("TOKENWARDEN_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=tw_postgres");
    }

    // Only in a checkout of the repository; a packaged crate has no `interop/`.
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default();
    let interop = Path::new(&manifest_dir).join("../../interop");
    let browser = interop.join("browser");
    let webhooks = interop.join("webhooks");
    if webhooks.is_dir() {
        println!("cargo::rerun-if-changed={}", webhooks.display());
        if webhooks
            .join("node_modules/standardwebhooks/package.json")
            .is_file()
        {
            println!("cargo::rustc-cfg=tw_webhooks_server");
        }
    }
    let provider = interop.join("oidc-provider");
    for dir in [&browser, &provider] {
        // A directory is watched recursively, so installing or removing `node_modules`
        // reruns this. A missing path would rerun it (and rebuild the crate) every time.
        if dir.is_dir() {
            println!("cargo::rerun-if-changed={}", dir.display());
        }
    }
    // Watched only when present, for the same reason: installing chromium after a build
    // needs `touch build.rs` (.ci/run installs it before building); removing it is seen.
    if Path::new(CHROMIUM).exists() {
        println!("cargo::rerun-if-changed={CHROMIUM}");
    }
    let chromium = browser
        .join("node_modules/playwright-core/package.json")
        .is_file()
        && Path::new(CHROMIUM).is_file();
    if chromium {
        println!("cargo::rustc-cfg=tw_chromium");
    }
    if chromium
        && provider
            .join("node_modules/oidc-provider/package.json")
            .is_file()
    {
        println!("cargo::rustc-cfg=tw_browser");
    }
}
