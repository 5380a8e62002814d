//! Runs `ops/demo.sh` as a newcomer would, and checks its story: the demo host is cut off by a
//! detection (live connection cut, new one refused, listed as isolated, its agent still heard),
//! let back on at the deadline, and nothing the demo created is left behind.
//!
//! Needs root, the binaries built beside this test (`cargo build`, as ops/test.sh does) and
//! Python's confluent-kafka (ops/install-toolchain.sh); fails loudly without them.

use std::path::Path;
use std::process::Command;

#[test]
fn the_demo_tells_its_story_and_cleans_up() {
    cordon_tests::require_kernel_test_environment();
    let root = Path::new(&std::env::var_os("CARGO_MANIFEST_DIR").expect("run by cargo test")).join("..");
    let bin_dir = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().and_then(Path::parent).map(Path::to_path_buf))
        .expect("target/<profile>");
    let output = Command::new(root.join("ops/demo.sh"))
        .env("CORDON_BIN_DIR", &bin_dir)
        .env("CORDON_DEMO_SECONDS", "6")
        .output()
        .expect("run ops/demo.sh");
    let said = String::from_utf8_lossy(&output.stdout);
    let errors = String::from_utf8_lossy(&output.stderr);
    println!("{said}\n{errors}");
    assert!(output.status.success(), "the demo failed:\n{said}\n{errors}");
    let story = [
        "command channel connected",
        "new connection to 198.19.250.2:8080: ok",
        "a long-lived connection is open",
        "delivered detection",
        "the long-lived connection: cut: Software caused connection abort",
        "new connection to 198.19.250.2:8080: Operation not permitted",
        "demo-host  isolated ",
        "the management channel stays up",
        "Waiting out the 6 s deadline",
        "new connection to 198.19.250.2:8080: ok",
        "State:       released",
        "Demo complete",
    ];
    let mut rest: &str = &said;
    for line in story {
        let at = rest.find(line).unwrap_or_else(|| panic!("the demo never said '{line}' (in this order)"));
        rest = &rest[at + line.len()..];
    }
    let namespaces = Command::new("ip").args(["netns", "list"]).output().expect("ip netns list");
    assert!(
        !String::from_utf8_lossy(&namespaces.stdout).contains("cordon-demo"),
        "the demo left network namespaces behind"
    );
    let cgroups = std::fs::read_dir(cordon_tests::cgroup2_root()).expect("cgroup v2 root");
    assert!(
        !cgroups.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with("cordon-demo")),
        "the demo left its cgroup behind"
    );
    // No process of the demo's outlives it (cordon serve and the agent carry its scratch
    // directory on their command lines).
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()))
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains("cordon-demo-"))
        .collect();
    assert!(left.is_empty(), "the demo left processes running: {left:?}");
    let pins = std::fs::read_dir("/sys/fs/bpf").expect("bpffs");
    assert!(
        !pins.flatten().any(|entry| entry.file_name().to_string_lossy().starts_with("cordon-demo")),
        "the demo left pins behind"
    );
}
