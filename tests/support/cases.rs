//! How many cases a property test runs: its own default, or `PROPTEST_CASES` when that is
//! set, for a deeper run than CI's (`PROPTEST_CASES=20000 cargo test --test mask_props`).
//! proptest reads the variable only when a test keeps its default count, and these set
//! their own.

pub fn cases(default: u32) -> u32 {
    match std::env::var("PROPTEST_CASES") {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("PROPTEST_CASES={v:?} is not a number of cases")),
        Err(_) => default,
    }
}
