//! Turns the JSON lines of many runs into BENCHMARKS.md tables: per scenario and variant, each server's median
//! (and range) and herald's edge over each other server.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One run of one scenario against one server, as written with `--json`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Record {
    pub scenario: String,
    pub variant: String,
    pub server: String,
    pub metrics: Value,
}

struct Metric {
    label: &'static str,
    pointer: &'static str,
    higher_is_better: bool,
    /// Whether a ratio means anything (not for counts that should be zero).
    ratio: bool,
}

const fn metric(label: &'static str, pointer: &'static str, higher_is_better: bool) -> Metric {
    Metric {
        label,
        pointer,
        higher_is_better,
        ratio: true,
    }
}

const fn count(label: &'static str, pointer: &'static str) -> Metric {
    Metric {
        label,
        pointer,
        higher_is_better: false,
        ratio: false,
    }
}

/// A figure shown without an edge: it describes the run, not the server.
const fn info(label: &'static str, pointer: &'static str) -> Metric {
    Metric {
        label,
        pointer,
        higher_is_better: false,
        ratio: false,
    }
}

const IDLE: &[Metric] = &[metric("KiB RSS per connection", "/kib_per_conn", false)];

const STORM: &[Metric] = &[
    metric("connects/s", "/connects_per_sec", true),
    metric("connect p99 (ms)", "/connect_latency_us/p99", false),
    metric(
        "server CPU per connect (µs)",
        "/server_cpu_us_per_connect",
        false,
    ),
];

/// The idle and storm scenarios with webhook auth: what the server's connections to its webhook cost too.
const IDLE_WEBHOOK: &[Metric] = &[
    metric("KiB RSS per connection", "/kib_per_conn", false),
    metric("connects/s", "/connects_per_sec", true),
    count("webhook connections opened", "/webhook/accepted"),
    count("webhook connections open at most", "/webhook/peak_open"),
];

const STORM_WEBHOOK: &[Metric] = &[
    metric("connects/s", "/connects_per_sec", true),
    metric("connect p99 (ms)", "/connect_latency_us/p99", false),
    metric(
        "server CPU per connect (µs)",
        "/server_cpu_us_per_connect",
        false,
    ),
    count("webhook connections opened", "/webhook/accepted"),
    count("webhook connections open at most", "/webhook/peak_open"),
];

const FLOOR: &[Metric] = &[
    metric("CPU per delivery (µs)", "/cpu_per_delivery_us", false),
    metric("one broadcast p50 (ms)", "/broadcast_us/p50", false),
    metric("one broadcast p99 (ms)", "/broadcast_us/p99", false),
    metric("latency p99 (ms)", "/latency_us/p99", false),
    metric("latency p99.9 (ms)", "/latency_us/p999", false),
];

const FANOUT: &[Metric] = &[
    metric("delivered msg/s", "/msgs_per_sec", true),
    metric(
        "server CPU per delivery (µs)",
        "/server_cpu_us_per_msg",
        false,
    ),
    metric("latency p50 (ms)", "/latency_us/p50", false),
    metric("latency p90 (ms)", "/latency_us/p90", false),
    metric("latency p99 (ms)", "/latency_us/p99", false),
    metric("latency p99.9 (ms)", "/latency_us/p999", false),
    count("lost", "/lost"),
    count("out of order", "/out_of_order"),
    metric(
        "generator CPU per delivery (µs)",
        "/own_cpu_us_per_msg",
        false,
    ),
];

const CLUSTER: &[Metric] = &[
    metric("delivered msg/s", "/msgs_per_sec", true),
    metric(
        "server CPU per delivery, both nodes (µs)",
        "/server_cpu_us_per_msg",
        false,
    ),
    metric(
        "node 1 CPU per delivery (µs)",
        "/nodes/0/cpu_us_per_msg",
        false,
    ),
    metric(
        "node 2 CPU per delivery (µs)",
        "/nodes/1/cpu_us_per_msg",
        false,
    ),
    metric(
        "Redis CPU per delivery (µs)",
        "/redis_cpu_us_per_msg",
        false,
    ),
    metric("latency p50 (ms)", "/latency_us/p50", false),
    metric("latency p99 (ms)", "/latency_us/p99", false),
    metric("latency p99.9 (ms)", "/latency_us/p999", false),
    metric(
        "node 2's clients: latency p99 (ms)",
        "/remote_latency_us/p99",
        false,
    ),
    count("lost", "/lost"),
    count("duplicates", "/duplicates"),
    count("out of order", "/out_of_order"),
    metric(
        "generator CPU per delivery (µs)",
        "/own_cpu_us_per_msg",
        false,
    ),
];

const CLUSTER_POLL: &[Metric] = &[
    metric("POST+GET round trips/s", "/rounds_per_sec", true),
    metric("POST+GET p50 (ms)", "/round_trip_us/p50", false),
    metric("POST+GET p99 (ms)", "/round_trip_us/p99", false),
    metric(
        "server CPU per round, both nodes (µs)",
        "/server_cpu_us_per_round",
        false,
    ),
    metric(
        "node 1 CPU per round (µs)",
        "/node_cpu_us_per_round/0",
        false,
    ),
    metric(
        "node 2 CPU per round (µs)",
        "/node_cpu_us_per_round/1",
        false,
    ),
    count("clients refused", "/failed_clients"),
];

const EVENTS: &[Metric] = &[
    metric("acked events/s", "/events_per_sec", true),
    metric("ack latency p50 (ms)", "/latency_us/p50", false),
    metric("ack latency p99 (ms)", "/latency_us/p99", false),
    metric("ack latency p99.9 (ms)", "/latency_us/p999", false),
    info("direct HTTP calls/s", "/direct_per_sec"),
    info("direct HTTP p50 (ms)", "/direct_latency_us/p50"),
    info("direct HTTP p99 (ms)", "/direct_latency_us/p99"),
    metric("added p50 (ms)", "/added_us/p50", false),
    metric("added p99 (ms)", "/added_us/p99", false),
    metric(
        "server CPU per event (µs)",
        "/server_cpu_us_per_event",
        false,
    ),
    count("lost", "/lost"),
    count("ack errors", "/ack_errors"),
    info("generator CPU per event (µs)", "/own_cpu_us_per_event"),
    info("backend CPU per event (µs)", "/backend_cpu_us_per_event"),
];

const BRIDGES: &[Metric] = &[
    metric("delivered msg/s", "/msgs_per_sec", true),
    metric(
        "server CPU per message (µs)",
        "/server_cpu_us_per_msg",
        false,
    ),
    info("server CPU (% of a core)", "/server_cpu_pct"),
    info(
        "server waiting for a CPU (% of the time)",
        "/server_run_delay_pct",
    ),
    info("broker CPU per message (µs)", "/broker_cpu_us_per_msg"),
    info("broker CPU (% of a core)", "/broker_cpu_pct"),
    info("generator CPU (% of a core)", "/own_cpu_pct"),
    metric("latency p50 (ms)", "/latency_us/p50", false),
    metric("latency p99 (ms)", "/latency_us/p99", false),
    count("lost", "/lost"),
    count("duplicates", "/duplicates"),
    count("out of order", "/out_of_order"),
];

/// scripts/instructions.sh: one variant per phase (per delivery, per connect), counted under callgrind or perf.
const INSTRUCTIONS: &[Metric] = &[
    metric("instructions", "/instructions_per_unit", false),
    info("idle share of the count (%)", "/idle_pct"),
];

fn metrics_of(scenario: &str) -> &'static [Metric] {
    match scenario {
        "idle" => IDLE,
        "storm" => STORM,
        "idle-webhook" => IDLE_WEBHOOK,
        "storm-webhook" => STORM_WEBHOOK,
        "floor" => FLOOR,
        "fanout" => FANOUT,
        "cluster" => CLUSTER,
        "cluster-poll" => CLUSTER_POLL,
        "events" => EVENTS,
        "bridges" => BRIDGES,
        "instructions" => INSTRUCTIONS,
        _ => &[],
    }
}

/// Markdown for every scenario found in `text` (JSON lines), servers in order of first appearance.
pub fn render(text: &str) -> anyhow::Result<String> {
    let records = text
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str::<Record>(l).with_context(|| format!("bad record: {l}")))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let mut servers: Vec<&str> = Vec::new();
    let mut scenarios: Vec<&str> = Vec::new();
    // scenario -> variant (in order) -> server -> runs
    let mut runs: BTreeMap<(&str, &str), BTreeMap<&str, Vec<&Value>>> = BTreeMap::new();
    let mut variants: Vec<(&str, &str)> = Vec::new();
    for r in &records {
        // The floor is no server: it has its own table, and the fan-outs are read against it below.
        if r.server != "floor" && !servers.contains(&r.server.as_str()) {
            servers.push(&r.server);
        }
        if !scenarios.contains(&r.scenario.as_str()) {
            scenarios.push(&r.scenario);
        }
        let key = (r.scenario.as_str(), r.variant.as_str());
        if !variants.contains(&key) {
            variants.push(key);
        }
        runs.entry(key)
            .or_default()
            .entry(&r.server)
            .or_default()
            .push(&r.metrics);
    }
    let mut out = String::new();
    for scenario in scenarios {
        let shown: &[&str] = if scenario == "floor" {
            &["floor"]
        } else {
            &servers
        };
        out.push_str(&table(scenario, &variants, &runs, shown));
    }
    out.push_str(&against_floor(&variants, &runs, &servers));
    Ok(out)
}

/// Each server's fan-out rows as ratios to the floor measured in the same sitting (round by round when it ran in
/// every round, see [`against`]), for the fan-outs with the floor's sizes and pace, with issue 15's targets: CPU
/// per delivery at most 1.2× the floor's, p99 within 1.5× of one raw broadcast's p99, and every round's p99.9
/// within 2× of its p99.
fn against_floor(variants: &[(&str, &str)], runs: &Runs, servers: &[&str]) -> String {
    let mut rows = String::new();
    for &(_, floor_variant) in variants.iter().filter(|(sc, _)| *sc == "floor") {
        let Some(floor_runs) = runs
            .get(&("floor", floor_variant))
            .and_then(|r| r.get("floor"))
        else {
            continue;
        };
        // "1000 sockets, 100 msg/s" matches "1000 subs, one room, 100 msg/s" and its transports.
        let Some((subs, pace)) = floor_variant.split_once(" sockets, ") else {
            continue;
        };
        let prefix = format!("{subs} subs, one room, {pace}");
        let matching = variants.iter().filter(|(sc, v)| {
            *sc == "fanout"
                && v.strip_prefix(prefix.as_str())
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with(','))
        });
        for &(sc, variant) in matching {
            let Some(by_server) = runs.get(&(sc, variant)) else {
                continue;
            };
            for server in servers {
                let Some(server_runs) = by_server.get(server) else {
                    continue;
                };
                let cpu = against(
                    (server_runs, "/server_cpu_us_per_msg"),
                    (floor_runs, "/cpu_per_delivery_us"),
                );
                let p99 = against(
                    (server_runs, "/latency_us/p99"),
                    (floor_runs, "/broadcast_us/p99"),
                );
                let tail = server_runs
                    .iter()
                    .filter_map(|r| {
                        let p99 = r.pointer("/latency_us/p99")?.as_f64()?;
                        let p999 = r.pointer("/latency_us/p999")?.as_f64()?;
                        (p99 > 0.0).then_some(p999 / p99)
                    })
                    .fold(None, |worst: Option<f64>, t| {
                        Some(worst.map_or(t, |w| w.max(t)))
                    });
                rows.push_str(&format!(
                    "| {variant} | {server} | {} | {} | {} |\n",
                    ratio_cell(&cpu, 1.2),
                    ratio_cell(&p99, 1.5),
                    tail.map_or("—".into(), |t| verdict(t, 2.0)),
                ));
            }
        }
    }
    if rows.is_empty() {
        return rows;
    }
    format!(
        "### against the floor\n\n| variant | server | CPU per delivery ÷ floor's (target ≤ 1.2×) | \
         latency p99 ÷ floor's broadcast p99 (target ≤ 1.5×) | worst round's p99.9 ÷ p99 (target ≤ 2×) |\n\
         | --- | --- | ---: | ---: | ---: |\n{rows}\n"
    )
}

/// A server's metric over the floor's, sorted. When the floor ran once per round beside the server
/// (scripts/bench.sh runs it right before each round of the matching fan-out), round by round: the machine's
/// speed drifts over a sitting, and a floor measured minutes away would move the ratio with it. Otherwise, when
/// the rounds do not pair up, the one ratio of the medians.
fn against(server: (&[&Value], &str), floor: (&[&Value], &str)) -> Vec<f64> {
    let point = |run: &Value, pointer: &str| run.pointer(pointer).and_then(Value::as_f64);
    let mut ratios: Vec<f64> = if server.0.len() == floor.0.len() {
        server
            .0
            .iter()
            .zip(floor.0)
            .filter_map(|(s, f)| Some((point(s, server.1)?, point(f, floor.1)?)))
            .filter(|&(_, f)| f > 0.0)
            .map(|(s, f)| s / f)
            .collect()
    } else {
        match (
            median(&values(server.0, server.1)),
            median(&values(floor.0, floor.1)),
        ) {
            (Some(s), Some(f)) if f > 0.0 => vec![s / f],
            _ => Vec::new(),
        }
    };
    ratios.sort_by(f64::total_cmp);
    ratios
}

/// The median ratio and its verdict, with the range when the ratio was taken round by round.
fn ratio_cell(sorted: &[f64], target: f64) -> String {
    let Some(med) = median(sorted) else {
        return "—".into();
    };
    let verdict = verdict(med, target);
    match (sorted.first(), sorted.last()) {
        (Some(lo), Some(hi)) if lo != hi => format!("{verdict}; rounds {lo:.2}–{hi:.2}×"),
        _ => verdict,
    }
}

/// A ratio and whether it meets its target.
fn verdict(ratio: f64, target: f64) -> String {
    let mark = if ratio <= target { "met" } else { "missed" };
    format!("{ratio:.2}× ({mark})")
}

type Runs<'a> = BTreeMap<(&'a str, &'a str), BTreeMap<&'a str, Vec<&'a Value>>>;

fn table(scenario: &str, variants: &[(&str, &str)], runs: &Runs, servers: &[&str]) -> String {
    let (base, others) = match servers.split_first() {
        Some((base, others)) => (*base, others),
        None => return String::new(),
    };
    let mut out = format!("### {scenario}\n\n| variant | metric |");
    for s in servers {
        out.push_str(&format!(" {s} |"));
    }
    for s in others {
        out.push_str(&format!(" {base}'s edge over {s} |"));
    }
    out.push_str("\n| --- | --- |");
    out.push_str(&" ---: |".repeat(servers.len() + others.len()));
    out.push('\n');
    for &(sc, variant) in variants.iter().filter(|(sc, _)| *sc == scenario) {
        let Some(by_server) = runs.get(&(sc, variant)) else {
            continue;
        };
        for m in metrics_of(scenario) {
            // Each server's runs of this metric, sorted.
            let sorted: Vec<Vec<f64>> = servers
                .iter()
                .map(|s| {
                    by_server
                        .get(s)
                        .map_or_else(Vec::new, |r| values(r, m.pointer))
                })
                .collect();
            out.push_str(&format!("| {variant} | {} |", m.label));
            for v in &sorted {
                out.push_str(&format!(" {} |", cell(v, m)));
            }
            for other in &sorted[1..] {
                out.push_str(&format!(
                    " {} |",
                    edge(median(&sorted[0]), median(other), m)
                ));
            }
            out.push('\n');
        }
    }
    out.push('\n');
    out
}

fn values(runs: &[&Value], pointer: &str) -> Vec<f64> {
    let mut v: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.pointer(pointer).and_then(Value::as_f64))
        .collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The median of sorted values.
fn median(sorted: &[f64]) -> Option<f64> {
    let n = sorted.len();
    (n > 0).then(|| {
        if n % 2 == 1 {
            sorted[n / 2]
        } else {
            (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0
        }
    })
}

fn scaled(value: f64, m: &Metric) -> f64 {
    if m.label.ends_with("(ms)") {
        value / 1000.0
    } else {
        value
    }
}

fn format_value(value: f64) -> String {
    if value >= 1000.0 {
        format!("{value:.0}")
    } else if value >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// The median, with the range when there were several runs.
fn cell(sorted: &[f64], m: &Metric) -> String {
    let Some(med) = median(sorted) else {
        return "—".into();
    };
    let med = format_value(scaled(med, m));
    match (sorted.first(), sorted.last()) {
        (Some(lo), Some(hi)) if lo != hi => format!(
            "{med} ({}–{})",
            format_value(scaled(*lo, m)),
            format_value(scaled(*hi, m))
        ),
        _ => med,
    }
}

/// How many times better the first server is than `other` (above 1: ahead).
fn edge(base: Option<f64>, other: Option<f64>, m: &Metric) -> String {
    match (base, other) {
        (Some(b), Some(o)) if m.ratio && b > 0.0 && o > 0.0 => {
            let factor = if m.higher_is_better { b / o } else { o / b };
            format!("{factor:.2}×")
        }
        _ => "—".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A floor run's record: CPU per delivery (µs) and one broadcast's p99 (µs).
    fn floor(cpu: f64, broadcast_p99: u64) -> String {
        format!(
            r#"{{"scenario":"floor","variant":"1000 sockets, 100 msg/s","server":"floor","metrics":{{"cpu_per_delivery_us":{cpu},"broadcast_us":{{"p99":{broadcast_p99}}}}}}}"#
        )
    }

    /// herald's record of the fan-out with the floor's sizes and pace (`transport`: the variant's suffix).
    fn paced(transport: &str, cpu: f64, p99: u64, p999: u64) -> String {
        format!(
            r#"{{"scenario":"fanout","variant":"1000 subs, one room, 100 msg/s{transport}","server":"herald","metrics":{{"server_cpu_us_per_msg":{cpu},"latency_us":{{"p99":{p99},"p999":{p999}}}}}}}"#
        )
    }

    #[test]
    fn fan_outs_are_read_against_the_floor_of_their_sitting() {
        let lines = [
            floor(4.0, 5000),
            paced("", 4.4, 7000, 9000),
            paced("", 4.8, 8000, 20000),
            paced(", SSE", 8.0, 5000, 6000),
            r#"{"scenario":"fanout","variant":"10000 subs, one room, 100 msg/s","server":"herald","metrics":{"server_cpu_us_per_msg":1.0,"latency_us":{"p99":1,"p999":1}}}"#.to_string(),
        ]
        .join("\n");
        let md = render(&lines).expect("render");
        assert!(
            md.contains("| 1000 subs, one room, 100 msg/s | herald | 1.15× (met) | 1.50× (met) | 2.50× (missed) |"),
            "{md}"
        );
        assert!(
            md.contains("| 1000 subs, one room, 100 msg/s, SSE | herald | 2.00× (missed) | 1.00× (met) | 1.20× (met) |"),
            "{md}"
        );
        assert!(
            !md.contains("| 10000 subs, one room, 100 msg/s | herald |"),
            "{md}"
        );
        assert!(
            md.contains(
                "| 1000 subs, one room, 100 msg/s | server CPU per delivery (µs) | 4.60 (4.40–4.80) |\n"
            ),
            "the fan-out table has no floor column: {md}"
        );
    }

    #[test]
    fn a_floor_run_in_every_round_is_read_round_by_round() {
        let lines = [
            floor(4.0, 5000),
            paced("", 6.0, 5000, 6000),
            floor(8.0, 10000),
            paced("", 8.0, 10000, 12000),
        ]
        .join("\n");
        let md = render(&lines).expect("render");
        // Round by round 1.5× and 1.0× (the medians' ratio would be 7 ÷ 6).
        assert!(
            md.contains("| 1000 subs, one room, 100 msg/s | herald | 1.25× (missed); rounds 1.00–1.50× | 1.00× (met) | 1.20× (met) |"),
            "{md}"
        );
    }

    #[test]
    fn tables_show_medians_and_edges() {
        let lines = [
            r#"{"scenario":"idle","variant":"10000 conns","server":"herald","metrics":{"kib_per_conn":4.0}}"#,
            r#"{"scenario":"idle","variant":"10000 conns","server":"node","metrics":{"kib_per_conn":20.0}}"#,
            r#"{"scenario":"idle","variant":"10000 conns","server":"herald","metrics":{"kib_per_conn":6.0}}"#,
        ]
        .join("\n");
        let md = render(&lines).expect("render");
        assert!(
            md.contains(
                "| 10000 conns | KiB RSS per connection | 5.00 (4.00–6.00) | 20.0 | 4.00× |"
            ),
            "{md}"
        );
    }

    #[test]
    fn instruction_counts_show_the_other_servers_count_over_heralds() {
        let lines = [
            r#"{"scenario":"instructions","variant":"per delivery","server":"herald","metrics":{"instructions_per_unit":2000.0,"idle_pct":1.0}}"#,
            r#"{"scenario":"instructions","variant":"per delivery","server":"herald","metrics":{"instructions_per_unit":2020.0,"idle_pct":1.0}}"#,
            r#"{"scenario":"instructions","variant":"per delivery","server":"node","metrics":{"instructions_per_unit":15150.0,"idle_pct":3.0}}"#,
        ]
        .join("\n");
        let md = render(&lines).expect("render");
        assert!(
            md.contains("| per delivery | instructions | 2010 (2000–2020) | 15150 | 7.54× |"),
            "{md}"
        );
    }
}
