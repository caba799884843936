//! Helpers shared by the integration tests: locating real assets; op-test tensors ([`ops`]).
#![allow(dead_code)]

pub mod ops;

use std::path::PathBuf;

/// The real SmolLM2-135M-Instruct GGUF: `SMELT_SMOLLM2_GGUF`, else the cache path that
/// `../shared/scripts/fetch-smollm2.sh` fills. `None` (with a printed note) when absent,
/// unless `SMELT_REQUIRE_ASSETS=1` (as `.ci/run` sets), where absence fails the test.
pub fn smollm2_gguf() -> Option<PathBuf> {
    let path = std::env::var_os("SMELT_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default())
                .join(".cache/smelt/assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
        });
    if path.is_file() {
        return Some(path);
    }
    if std::env::var("SMELT_REQUIRE_ASSETS").as_deref() == Ok("1") {
        panic!(
            "SMELT_REQUIRE_ASSETS=1 but the SmolLM2 GGUF is missing at {}",
            path.display()
        );
    }
    eprintln!(
        "skipped: SmolLM2 GGUF not found at {} (run ../shared/scripts/fetch-smollm2.sh)",
        path.display()
    );
    None
}
