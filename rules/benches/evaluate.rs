//! Placeholder so the workspace parses until the rules benchmark lands.
fn main() {}
