//! The response-rule language and its engine: compiles SOC-authored rules and decides, for each detection event, whether and how to isolate a host. Pure: no I/O, time is an argument.
