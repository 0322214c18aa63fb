//! Pipeline TOML parsing and validation: any text gets a config or a list of errors, never a
//! panic; every error names the file.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(errors) = spooky_stages::config::parse("fuzz.toml", text) {
        assert!(!errors.0.is_empty());
        for e in &errors.0 {
            assert_eq!(e.file, "fuzz.toml");
        }
    }
});
