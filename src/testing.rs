//! For the library's own unit tests: the same skip rule as the integration
//! tests (`tests/common`), so a unit test that cannot run here says why and,
//! under CI's `KACAST_REQUIRE_ALL_TESTS`, fails instead of passing silently.

/// Skips the calling test with a printed reason, or fails it when every test
/// must run. Use as `return crate::testing::skip("why")`.
pub fn skip(why: &str) {
    if std::env::var_os("KACAST_REQUIRE_ALL_TESTS").is_some_and(|v| v != "0") {
        panic!("KACAST_REQUIRE_ALL_TESTS is set but this test cannot run: {why}");
    }
    eprintln!("SKIPPED: {why}");
}
