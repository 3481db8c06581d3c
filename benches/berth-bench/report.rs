//! `berth-bench report`: medians per workload and target from a results file, and Berth's
//! ratio to each peer.

use super::*;

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values[values.len() / 2]
}

/// Medians per (workload, target) and Berth's ratio to each peer.
pub(crate) fn report(path: &str) -> Result<()> {
    let text = std::fs::read_to_string(path)?;
    let mut grouped: BTreeMap<(String, String), (Vec<f64>, String)> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let f: Figure = serde_json::from_str(line)?;
        let entry = grouped
            .entry((f.workload.clone(), f.target.clone()))
            .or_insert_with(|| (Vec::new(), f.unit.clone()));
        entry.0.push(f.value);
    }
    let mut medians: BTreeMap<String, BTreeMap<String, (f64, String, usize)>> = BTreeMap::new();
    for ((workload, target), (mut values, unit)) in grouped {
        let n = values.len();
        medians
            .entry(workload)
            .or_default()
            .insert(target, (median(&mut values), unit, n));
    }
    println!("\nMedians (n = repetitions)");
    for (workload, targets) in &medians {
        println!("{workload}");
        for (target, (value, unit, n)) in targets {
            println!("    {target:<22} {value:>12.1} {unit:<9} n={n}");
        }
    }
    println!(
        "\nBerth's ratio to each peer (higher is better; for latency 'ms p50' the ratio is peer/berth)"
    );
    for (workload, targets) in &medians {
        for (berth, (bv, unit, _)) in targets.iter().filter(|(t, _)| t.starts_with("berth")) {
            for (peer, (pv, _, _)) in targets.iter().filter(|(t, _)| !t.starts_with("berth")) {
                let ratio = if unit.starts_with("ms") || unit == "MiB" {
                    pv / bv
                } else {
                    bv / pv
                };
                println!("    {workload:<28} {berth:<18} / {peer:<22} {ratio:>7.2}x");
            }
        }
    }
    // Raw S3 as a peer of every S3-backed Berth workload.
    if let (Some(s3x4), Some(s3seq), Some(s3get)) = (
        medians.get("s3-put-x4"),
        medians.get("s3-put"),
        medians.get("s3-get"),
    ) {
        let raw = |m: &BTreeMap<String, (f64, String, usize)>| {
            m.values().next().map(|v| v.0).unwrap_or(f64::NAN)
        };
        println!("\nBerth (S3 targets) against raw S3 from the same client");
        for (workload, base, base_name) in [
            ("push-mono", raw(s3x4), "s3-put-x4"),
            ("push-stream", raw(s3x4), "s3-put-x4"),
            ("push-chunked-1MiB", raw(s3seq), "s3-put"),
            ("pull", raw(s3get), "s3-get"),
            ("pull-first", raw(s3get), "s3-get"),
            ("pull-warm", raw(s3get), "s3-get"),
        ] {
            if let Some(targets) = medians.get(workload) {
                for (target, (v, _, _)) in targets
                    .iter()
                    .filter(|(t, _)| t.starts_with("berth") && t.contains("s3"))
                {
                    println!(
                        "    {workload:<28} {target:<18} / {base_name:<22} {:>7.2}x",
                        v / base
                    );
                }
            }
        }
    }
    Ok(())
}
