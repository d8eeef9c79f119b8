//! Detection of the host description that `node_meta.json` records.

use std::path::Path;

use crate::schema::{CollectorKind, NodeMeta};

/// What identifies a node in a run.
#[derive(Debug, Clone)]
pub struct NodeIdentity {
    pub run_id: String,
    pub node: String,
    pub stage: String,
}

/// Describe this host. `CPU_FREQ_MHZ` (passed as `freq_override`) wins over
/// the maximum frequency, which wins over the current one.
pub fn detect(id: &NodeIdentity, freq_override: Option<f64>) -> NodeMeta {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    NodeMeta {
        run_id: id.run_id.clone(),
        node: id.node.clone(),
        stage: id.stage.clone(),
        host: hostname(),
        iface: default_iface().unwrap_or_else(|| "lo".to_string()),
        cpu_cores: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        mem_mb: mem_total_kb().map(|kb| kb / 1024).unwrap_or(0),
        cpu_model: cpuinfo_field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
        cpu_freq_mhz: freq_override
            .or_else(max_freq_mhz)
            .or_else(|| cpuinfo_field(&cpuinfo, "cpu MHz").and_then(|s| s.parse().ok()))
            .unwrap_or(0.0),
        collector: None::<CollectorKind>,
        fallback_reason: None,
        interval_ms: None,
        scope: None,
        proc_match: None,
        cpu_binding: None,
        binding_error: None,
        run_as: None,
        privileges_dropped: None,
        tracekit: None,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .ok()
            .map(|s| s.trim().to_string()),
        ffmpeg: ffmpeg_version(),
        x264: None,
        x265: None,
        clock: None,
    }
}

/// The first line of `ffmpeg -version`, if ffmpeg runs here.
fn ffmpeg_version() -> Option<String> {
    let out = std::process::Command::new("ffmpeg")
        .arg("-version")
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().map(|l| l.trim().to_string())
}

/// The versions of the encoders ffmpeg links (x264 as its stream headers
/// name it, "core N rREV HASH"; x265 as it says when it starts), from a
/// one-frame encode of each; `None` when ffmpeg or the encoder is missing.
pub fn encoder_versions() -> (Option<String>, Option<String>) {
    let encode = |codec: &str, format: &str| {
        std::process::Command::new("ffmpeg")
            .args(["-hide_banner", "-nostdin", "-f", "lavfi", "-i"])
            .arg("nullsrc=s=64x64:d=0.04")
            .args(["-frames:v", "1", "-c:v", codec, "-f", format, "-"])
            .stdin(std::process::Stdio::null())
            .output()
            .ok()
    };
    let after = |bytes: &[u8], marker: &str, end: &[u8]| -> Option<String> {
        let at = memchr::memmem::find(bytes, marker.as_bytes())? + marker.len();
        let rest = &bytes[at..];
        let stop = rest
            .iter()
            .position(|b| end.contains(b))
            .unwrap_or(rest.len().min(80));
        let v = String::from_utf8_lossy(&rest[..stop]).trim().to_string();
        (!v.is_empty()).then_some(v)
    };
    let x264 = encode("libx264", "h264").and_then(|o| after(&o.stdout, "x264 - core ", b"-\0\n"));
    let x265 =
        encode("libx265", "null").and_then(|o| after(&o.stderr, "HEVC encoder version ", b"\n"));
    (x264.map(|v| format!("core {v}")), x265)
}

/// The kernel's host name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

fn cpuinfo_field(cpuinfo: &str, key: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

fn mem_total_kb() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    meminfo.lines().find_map(|line| {
        let rest = line.strip_prefix("MemTotal:")?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

fn max_freq_mhz() -> Option<f64> {
    let khz: f64 = std::fs::read_to_string(Path::new(
        "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq",
    ))
    .ok()?
    .trim()
    .parse()
    .ok()?;
    Some(khz / 1000.0)
}

/// The interface of the default route, else the first non-loopback one.
fn default_iface() -> Option<String> {
    let routes = std::fs::read_to_string("/proc/net/route").ok()?;
    let default = routes.lines().skip(1).find_map(|line| {
        let mut cols = line.split_whitespace();
        let iface = cols.next()?;
        (cols.next()? == "00000000").then(|| iface.to_string())
    });
    default.or_else(|| {
        let dev = std::fs::read_to_string("/proc/net/dev").ok()?;
        dev.lines().skip(2).find_map(|line| {
            let name = line.split(':').next()?.trim();
            (name != "lo").then(|| name.to_string())
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detect_reads_this_host() {
        let id = NodeIdentity {
            run_id: "r".into(),
            node: "n".into(),
            stage: "cloud".into(),
        };
        let meta = detect(&id, Some(2400.0));
        assert!(meta.cpu_cores >= 1);
        assert!(meta.mem_mb > 0);
        assert_eq!(meta.cpu_freq_mhz, 2400.0);
    }
}
