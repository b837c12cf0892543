//! ODK Collect as the OpenRosa tests drive it: `openrosa_collect.py` (a Python script
//! that builds the form from an XLSForm with pyxform and speaks the protocol over real
//! HTTP), run with arguments and answering with one JSON document.

use std::process::Command;

use serde_json::Value;

const COLLECT: &str = include_str!("openrosa_collect.py");

/// Whether pyxform is installed; outside CI a missing one prints SKIPPED, under CI it
/// fails the test.
pub fn have_pyxform() -> bool {
    let probe = Command::new("python3")
        .args(["-c", "import pyxform, openpyxl"])
        .output()
        .expect("run python3");
    if !probe.status.success() {
        let why = "pyxform is not installed (pip install pyxform)";
        assert!(std::env::var_os("CI").is_none(), "CI is set but {why}");
        eprintln!("SKIPPED: {why}");
    }
    probe.status.success()
}

/// Runs the Collect script with `args` and returns its JSON answer.
pub fn collect(args: &[&str]) -> Value {
    let out = Command::new("python3")
        .arg("-c")
        .arg(COLLECT)
        .args(args)
        .output()
        .expect("run the Collect script");
    assert!(
        out.status.success(),
        "openrosa_collect.py {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the script's JSON")
}
