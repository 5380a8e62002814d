//! Shared harness for the end-to-end tests (network namespaces, cgroups, processes).
