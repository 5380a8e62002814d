//! `cordon`: the operator's command line (rule authoring tools; the service and its API come next).
fn main() {}
