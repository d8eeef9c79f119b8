//! The topology parsed with OpenDC's own unit grammar, ported from its
//! regexes (`opendc-common/.../units/UnitSerializer.kt`, `DataSize.kt`,
//! `Frequency.kt`; the same in v2.4f through v2.4u and later): the memory a
//! host gets is the node's, and its core speed the node's MHz.
#![allow(clippy::unwrap_used)] // a panic is how a test fails

mod common;

use regex::{Regex, RegexBuilder};
use serde_json::Value;
use tracekit_trace::export::{TaskIdMode, export_opendc};
use tracekit_trace::schema::NodeInfo;

// UnitSerializer.kt's building blocks, verbatim.
const NUM_GROUP: &str = r"\s*([\de.-]+)\s*?";
const BITS: &str = r"\s*(?:b|(?:bit|Bit)(?:|s))\s?";
const BYTES: &str = r"\s*(?:B|(?:byte|Byte)(?:|s))\s?";
const KILO: &str = r"\s*(?:K|Kilo|k|kilo)\s*?";
const KIBI: &str = r"\s*(?:Ki|Kibi|ki|kibi)\s?";
const MEGA: &str = r"\s*(?:M|Mega|m|mega)\s*?";
const MEBI: &str = r"\s*(?:Mi|Mebi|mi|mebi)\s*?";
const GIGA: &str = r"\s*(?:G|Giga|g|giga)\s*?";
const GIBI: &str = r"\s*(?:Gi|Gibi|gi|gibi)\s*?";
const TERA: &str = r"\s*(?:T|Tera|t|tera)\s*?";
const TEBI: &str = r"\s*(?:Ti|Tebi|ti|tebi)\s*?";
const HERTZ: &str = r"\s*(?:Hz|Hertz|hz|hertz)\s*?";

/// OnlyString: a JSON value becomes its text, quotes trimmed.
fn as_text(v: &Value) -> String {
    v.to_string().trim_matches('"').to_string()
}

/// `matchEntire`: the whole text.
fn entire(pattern: &str, ignore_case: bool) -> Regex {
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .case_insensitive(ignore_case)
        .build()
        .unwrap()
}

/// DataSize's serializer: MiB of `v`. A bare number is MiB; otherwise the
/// first matching unit, in DataSize.kt's order.
fn data_size_mib(v: &Value) -> f64 {
    let s = as_text(v);
    if let Ok(n) = s.parse::<f64>() {
        return n;
    }
    let bits_per_mib = 8.0 * 1024.0 * 1024.0;
    let bytes_per_mib = 1024.0 * 1024.0;
    let rules: [(String, f64); 18] = [
        (format!("{NUM_GROUP}{BITS}"), 1.0 / bits_per_mib),
        (format!("{NUM_GROUP}{BYTES}"), 1.0 / bytes_per_mib),
        (format!("{NUM_GROUP}{KIBI}{BITS}"), 1024.0 / bits_per_mib),
        (format!("{NUM_GROUP}{KILO}{BITS}"), 1e3 / bits_per_mib),
        (format!("{NUM_GROUP}{KIBI}{BYTES}"), 1.0 / 1024.0),
        (format!("{NUM_GROUP}{KILO}{BYTES}"), 1e3 / bytes_per_mib),
        (format!("{NUM_GROUP}{MEBI}{BITS}"), 1.0 / 8.0),
        (format!("{NUM_GROUP}{MEGA}{BITS}"), 1e6 / bits_per_mib),
        (format!("{NUM_GROUP}{MEBI}{BYTES}"), 1.0),
        (format!("{NUM_GROUP}{MEGA}{BYTES}"), 1e6 / bytes_per_mib),
        (format!("{NUM_GROUP}{GIBI}{BITS}"), 1024.0 / 8.0),
        (format!("{NUM_GROUP}{GIGA}{BITS}"), 1e9 / bits_per_mib),
        (format!("{NUM_GROUP}{GIBI}{BYTES}"), 1024.0),
        (format!("{NUM_GROUP}{GIGA}{BYTES}"), 1e9 / bytes_per_mib),
        (format!("{NUM_GROUP}{TEBI}{BITS}"), 1024.0 * 1024.0 / 8.0),
        (format!("{NUM_GROUP}{TERA}{BITS}"), 1e12 / bits_per_mib),
        (format!("{NUM_GROUP}{TEBI}{BYTES}"), 1024.0 * 1024.0),
        (format!("{NUM_GROUP}{TERA}{BYTES}"), 1e12 / bytes_per_mib),
    ];
    for (pattern, mib_per_unit) in rules {
        if let Some(c) = entire(&pattern, false).captures(&s) {
            return c[1].parse::<f64>().unwrap() * mib_per_unit;
        }
    }
    panic!("OpenDC cannot parse the data size {s:?}");
}

/// Frequency's serializer: MHz of `v` (bare numbers are MHz).
fn frequency_mhz(v: &Value) -> f64 {
    let s = as_text(v);
    if let Ok(n) = s.parse::<f64>() {
        return n;
    }
    for (pattern, mhz_per_unit) in [
        (format!("{NUM_GROUP}{HERTZ}"), 1e-6),
        (format!("{NUM_GROUP}{KILO}{HERTZ}"), 1e-3),
        (format!("{NUM_GROUP}{MEGA}{HERTZ}"), 1.0),
        (format!("{NUM_GROUP}{GIGA}{HERTZ}"), 1e3),
    ] {
        if let Some(c) = entire(&pattern, true).captures(&s) {
            return c[1].parse::<f64>().unwrap() * mhz_per_unit;
        }
    }
    panic!("OpenDC cannot parse the frequency {s:?}");
}

#[test]
fn the_port_reads_what_opendc_reads() {
    assert_eq!(data_size_mib(&Value::from("24576 MiB")), 24576.0);
    assert_eq!(data_size_mib(&Value::from("24GiB")), 24576.0);
    assert_eq!(data_size_mib(&Value::from("1 MB")), 1e6 / 1048576.0);
    // What the original wrote: 24 GiB in bytes, read as MiB, is 24 PiB.
    let bytes = Value::from(24u64 * 1024 * 1024 * 1024);
    assert_eq!(data_size_mib(&bytes), 24.0 * 1024.0 * 1024.0 * 1024.0);
    assert_eq!(frequency_mhz(&Value::from(2400)), 2400.0);
    assert_eq!(frequency_mhz(&Value::from("2.4 GHz")), 2400.0);
}

#[test]
fn the_topology_holds_each_nodes_memory_and_speed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = tmp.path().join("run");
    common::two_node_run(&run, 20);
    let out = tmp.path().join("out");
    export_opendc(&run, &out, TaskIdMode::Auto).unwrap();
    let dc: Value =
        serde_json::from_slice(&std::fs::read(out.join("small_datacenter.json")).unwrap()).unwrap();
    let mut hosts: Vec<(u64, f64, f64)> = dc["clusters"][0]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h["cpu"]["coreCount"].as_u64().unwrap(),
                frequency_mhz(&h["cpu"]["coreSpeed"]),
                data_size_mib(&h["memory"]["memorySize"]),
            )
        })
        .collect();
    let mut nodes: Vec<(u64, f64, f64)> = ["node-a", "node-b"]
        .iter()
        .map(|n| {
            let info: Vec<NodeInfo> =
                serde_json::from_slice(&std::fs::read(run.join(n).join("CTS/nodes.json")).unwrap())
                    .unwrap();
            let i = &info[0];
            (u64::from(i.cpu_cores), i.cpu_freq_mhz, i.mem_mb as f64)
        })
        .collect();
    hosts.sort_by(|a, b| a.partial_cmp(b).unwrap());
    nodes.sort_by(|a, b| a.partial_cmp(b).unwrap());
    // 8 GiB and 16 GiB hosts: MiB as OpenDC reads them, not PiB.
    assert_eq!(hosts, nodes);
    assert_eq!(hosts[0].2, 8192.0);
}
