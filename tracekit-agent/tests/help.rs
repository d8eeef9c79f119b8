//! The agent's `--help`: flags grouped under headings, values with units,
//! the password's variable shown without its value.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

use std::process::Command;

#[test]
fn help_groups_the_flags_and_hides_the_password() {
    let out = Command::new(env!("CARGO_BIN_EXE_tracekit-agent"))
        .arg("--help")
        .env("REDIS_PASSWORD", "s3cret-value")
        .env("TRACEKIT_REDIS", "redis://:inline-pw@h:1/0")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let heading = |h: &str| {
        help.find(&format!("\n{h}:\n"))
            .unwrap_or_else(|| panic!("no {h} heading in {help}"))
    };
    let (worker, redis, tracer, identity) = (
        heading("Worker"),
        heading("Redis"),
        heading("Tracer"),
        heading("Identity"),
    );
    let under = |flag: &str| help.find(&format!("      {flag}")).unwrap();
    assert!(worker < under("--heartbeat-ms <MS>") && under("--heartbeat-ms") < redis);
    assert!(worker < under("--stderr-limit <BYTES>") && under("--stderr-limit") < redis);
    assert!(redis < under("--redis-retry-for <SECONDS>") && under("--redis-retry-for") < tracer);
    assert!(tracer < under("--interval-ms <MS>") && under("--interval-ms") < identity);
    assert!(identity < under("--node-id"));
    assert!(help.contains("[env: REDIS_PASSWORD]"), "{help}");
    assert!(
        !help.contains("s3cret-value") && !help.contains("inline-pw"),
        "{help}"
    );
    // Every flag of the original is still there.
    for flag in [
        "--redis ",
        "--parallel ",
        "--slots-key ",
        "--pending-key ",
        "--capacity-units ",
        "--allocation-ratio ",
        "--cpu-binding ",
        "--cpuweight-per-vcpu ",
        "--reset-capacity",
        "--clear-queue",
        "--heartbeat-ms ",
        "--interval-ms ",
        "--match ",
    ] {
        assert!(help.contains(flag), "{flag} missing from {help}");
    }
}
