//! Every integration test is a module of this one binary: a file in `tests/it/` that `main.rs`
//! does not declare would never be compiled, and a new `tests/NAME.rs` would be a test binary of
//! its own again (linking the crate and candle once more). Either fails here, naming the file.

use crate::common::root;

#[test]
fn every_test_file_is_a_module_of_the_one_binary() {
    let main = std::fs::read_to_string(root().join("tests/it/main.rs")).unwrap();
    for e in std::fs::read_dir(root().join("tests/it")).unwrap() {
        let p = e.unwrap().path();
        let Some(name) = p.file_stem().and_then(|n| n.to_str()) else {
            continue;
        };
        if name == "main" || p.extension().is_none_or(|x| x != "rs") && !p.is_dir() {
            continue;
        }
        assert!(
            main.lines().any(|l| l.trim() == format!("mod {name};")),
            "tests/it/{name}: add `mod {name};` to tests/it/main.rs"
        );
    }
    for e in std::fs::read_dir(root().join("tests")).unwrap() {
        let p = e.unwrap().path();
        assert!(
            p.extension().is_none_or(|x| x != "rs"),
            "{}: move it to tests/it/ and declare it in tests/it/main.rs (one test binary)",
            p.display()
        );
    }
}
