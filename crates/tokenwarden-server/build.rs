//! Tells this crate's integration tests whether PostgreSQL is configured, so a PostgreSQL
//! test is reported as ignored, with the reason, instead of passing untested: `tw_postgres`
//! is set when `TOKENWARDEN_TEST_POSTGRES_URL` is (the library's `build.rs` does the same
//! for its own tests). Only files under `tests/` read it; the binary is the same either
//! way. A test enabled here whose server is gone when it runs fails.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(tw_postgres)");
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-env-changed=TOKENWARDEN_TEST_POSTGRES_URL");
    if std::env::var_os("TOKENWARDEN_TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=tw_postgres");
    }
}
