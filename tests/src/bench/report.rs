//! Turning samples into the summary table: medians with min–max, our ratio to EG and to the
//! direct floor, and each target checked; printed as text, and written as JSON and Markdown.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::{Value, json};

use super::stats::Summary;
use super::target::TargetKind;
use super::workloads::{Metric, Workload};

/// The outcome of one workload run against one target.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    pub(crate) workload: String,
    pub(crate) round: usize,
    pub(crate) target: TargetKind,
    pub(crate) outcome: Result<Vec<Metric>, String>,
    pub(crate) seconds: f64,
}

/// A target from the issue, judged on our medians (and the floor's).
#[derive(Debug, Clone, Copy)]
enum Goal {
    /// ours ≤ floor + x.
    FloorPlus(f64),
    /// ours ≤ x × floor.
    FloorTimesAtMost(f64),
    /// ours ≥ x × floor.
    FloorTimesAtLeast(f64),
    /// ours ≤ x.
    AtMost(f64),
    /// ours < x.
    Below(f64),
    /// every run of ours = x.
    Exactly(f64),
}

impl Goal {
    fn text(self, unit: &str) -> String {
        match self {
            Goal::FloorPlus(x) => format!("≤ floor + {x} {unit}"),
            Goal::FloorTimesAtMost(x) => format!("≤ {x} × floor"),
            Goal::FloorTimesAtLeast(x) => format!("≥ {x} × floor"),
            Goal::AtMost(x) => format!("≤ {x} {unit}"),
            Goal::Below(x) => format!("< {x} {unit}"),
            Goal::Exactly(x) => format!("= {x}"),
        }
    }

    /// `None` when there is not enough data to judge.
    fn met(self, ours: &Summary, floor: Option<&Summary>) -> Option<bool> {
        if ours.n == 0 {
            return None;
        }
        let floor = floor.filter(|f| f.n > 0).map(|f| f.median);
        match self {
            Goal::FloorPlus(x) => floor.map(|f| ours.median <= f + x),
            Goal::FloorTimesAtMost(x) => floor.map(|f| ours.median <= x * f),
            Goal::FloorTimesAtLeast(x) => floor.map(|f| ours.median >= x * f),
            Goal::AtMost(x) => Some(ours.median <= x),
            Goal::Below(x) => Some(ours.median < x),
            Goal::Exactly(x) => Some(ours.min == x && ours.max == x),
        }
    }
}

/// The targets, by workload id and metric name.
fn goal(workload: &str, metric: &str) -> Option<Goal> {
    Some(match (workload, metric) {
        ("start_local", "ready") => Goal::FloorPlus(10.0),
        ("execute_pass", "median") => Goal::FloorPlus(0.3),
        ("execute_pass", "p99") => Goal::FloorPlus(1.0),
        ("iopub_burst", "msgs/s") => Goal::FloorTimesAtLeast(0.95),
        ("iopub_burst", "received") => Goal::Exactly(1.0),
        ("display_data", "throughput") => Goal::FloorTimesAtLeast(0.9),
        ("concurrent_starts_10", "all ready") => Goal::FloorTimesAtMost(1.05),
        ("memory", "idle RSS") => Goal::AtMost(20.0),
        ("memory", "per idle kernel") => Goal::AtMost(100.0),
        ("scale_1000", "p99") => Goal::Below(20.0),
        ("scale_1000", "dropped sockets") => Goal::Exactly(0.0),
        _ => return None,
    })
}

/// One metric of one workload across targets.
#[derive(Debug)]
struct Row {
    workload: String,
    title: String,
    metric: &'static str,
    unit: &'static str,
    per_target: BTreeMap<TargetKind, (Vec<f64>, Summary)>,
    goal: Option<Goal>,
}

impl Row {
    fn summary(&self, target: TargetKind) -> Option<&Summary> {
        self.per_target
            .get(&target)
            .map(|(_, s)| s)
            .filter(|s| s.n > 0)
    }

    fn ratio(&self, a: TargetKind, b: TargetKind) -> Option<f64> {
        let (a, b) = (self.summary(a)?, self.summary(b)?);
        (b.median != 0.0).then(|| a.median / b.median)
    }

    fn goal_met(&self) -> Option<bool> {
        let ours = self.summary(TargetKind::Ours)?;
        self.goal?.met(ours, self.summary(TargetKind::Direct))
    }
}

/// Samples summarised per workload, metric and target.
#[derive(Debug)]
pub(crate) struct Report {
    rows: Vec<Row>,
    failures: Vec<Sample>,
    targets: Vec<TargetKind>,
}

impl Report {
    pub(crate) fn new(
        workloads: &[Workload],
        samples: &[Sample],
        targets: &[TargetKind],
    ) -> Report {
        let mut rows: Vec<Row> = Vec::new();
        for w in workloads {
            for s in samples.iter().filter(|s| s.workload == w.id) {
                let Ok(metrics) = &s.outcome else { continue };
                for m in metrics {
                    let row = match rows
                        .iter_mut()
                        .position(|r| r.workload == w.id && r.metric == m.name)
                    {
                        Some(i) => &mut rows[i],
                        None => {
                            rows.push(Row {
                                workload: w.id.clone(),
                                title: w.title.clone(),
                                metric: m.name,
                                unit: m.unit,
                                per_target: BTreeMap::new(),
                                goal: goal(&w.id, m.name),
                            });
                            let last = rows.len() - 1;
                            &mut rows[last]
                        }
                    };
                    row.per_target
                        .entry(s.target)
                        .or_insert_with(|| (Vec::new(), Summary::of(&[])))
                        .0
                        .push(m.value);
                }
            }
        }
        for row in &mut rows {
            for (values, summary) in row.per_target.values_mut() {
                *summary = Summary::of(values);
            }
        }
        Report {
            rows,
            failures: samples
                .iter()
                .filter(|s| s.outcome.is_err())
                .cloned()
                .collect(),
            targets: targets.to_vec(),
        }
    }

    /// Failed runs against our gateway or the floor (the ones that fail the benchmark).
    pub(crate) fn own_failures(&self) -> usize {
        self.failures
            .iter()
            .filter(|s| s.target != TargetKind::Eg)
            .count()
    }

    fn cell(&self, row: &Row, target: TargetKind) -> String {
        match row.summary(target) {
            None => "—".to_owned(),
            Some(s) if s.n == 1 || s.min == s.max => num(s.median),
            Some(s) => format!("{} ({}–{})", num(s.median), num(s.min), num(s.max)),
        }
    }

    fn goal_cell(row: &Row) -> String {
        match (row.goal, row.goal_met()) {
            (None, _) => String::new(),
            (Some(g), None) => format!("{} (?)", g.text(row.unit)),
            (Some(g), Some(true)) => format!("{} ✓", g.text(row.unit)),
            (Some(g), Some(false)) => format!("{} ✗ MISSED", g.text(row.unit)),
        }
    }

    fn table_rows(&self) -> (Vec<String>, Vec<Vec<String>>) {
        let mut header = vec!["workload / metric".to_owned(), "unit".to_owned()];
        header.extend(self.targets.iter().map(|t| t.label().to_owned()));
        let has_eg = self.targets.contains(&TargetKind::Eg);
        let has_floor = self.targets.contains(&TargetKind::Direct);
        if has_eg {
            header.push("ours/EG".to_owned());
        }
        if has_floor {
            header.push("ours/floor".to_owned());
        }
        let has_off = self.targets.contains(&TargetKind::OursNoMetrics);
        if has_off {
            header.push("metrics on/off".to_owned());
        }
        header.push("target".to_owned());
        let mut body = Vec::new();
        for row in &self.rows {
            let mut cells = vec![
                format!("{} · {}", row.workload, row.metric),
                row.unit.to_owned(),
            ];
            cells.extend(self.targets.iter().map(|&t| self.cell(row, t)));
            if has_eg {
                cells.push(ratio(row.ratio(TargetKind::Ours, TargetKind::Eg)));
            }
            if has_floor {
                cells.push(ratio(row.ratio(TargetKind::Ours, TargetKind::Direct)));
            }
            if has_off {
                cells.push(ratio(
                    row.ratio(TargetKind::Ours, TargetKind::OursNoMetrics),
                ));
            }
            cells.push(Report::goal_cell(row));
            body.push(cells);
        }
        (header, body)
    }

    /// The plain-text table.
    pub(crate) fn text(&self) -> String {
        let (header, body) = self.table_rows();
        let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
        for cells in &body {
            for (w, c) in widths.iter_mut().zip(cells) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (c, w) in cells.iter().zip(&widths) {
                let pad = w.saturating_sub(c.chars().count());
                let _ = write!(out, "{c}{}  ", " ".repeat(pad));
            }
            out.trim_end().to_owned()
        };
        let mut out = String::new();
        let _ = writeln!(out, "{}", line(&header));
        let total: usize = widths.iter().sum::<usize>() + 2 * widths.len();
        let _ = writeln!(out, "{}", "-".repeat(total));
        for cells in &body {
            let _ = writeln!(out, "{}", line(cells));
        }
        for f in &self.failures {
            let _ = writeln!(
                out,
                "FAILED {} against {} (round {}): {}",
                f.workload,
                f.target.label(),
                f.round + 1,
                f.outcome.as_ref().err().map(String::as_str).unwrap_or("")
            );
        }
        out
    }

    /// The Markdown table plus the failures.
    pub(crate) fn markdown(&self) -> String {
        let (header, body) = self.table_rows();
        let mut out = String::new();
        let esc = |c: &String| c.replace('|', "\\|");
        let _ = writeln!(
            out,
            "| {} |",
            header.iter().map(esc).collect::<Vec<_>>().join(" | ")
        );
        let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
        for cells in &body {
            let _ = writeln!(
                out,
                "| {} |",
                cells.iter().map(esc).collect::<Vec<_>>().join(" | ")
            );
        }
        let mut titles: Vec<(&str, &str)> = Vec::new();
        for row in &self.rows {
            if !titles.iter().any(|(id, _)| *id == row.workload) {
                titles.push((&row.workload, &row.title));
            }
        }
        let _ = writeln!(out, "\nWorkloads:\n");
        for (id, title) in titles {
            let _ = writeln!(out, "* `{id}`: {title}");
        }
        if !self.failures.is_empty() {
            let _ = writeln!(out, "\nFailed runs:\n");
            for f in &self.failures {
                let _ = writeln!(
                    out,
                    "* `{}` against {} (round {}): {}",
                    f.workload,
                    f.target.label(),
                    f.round + 1,
                    f.outcome
                        .as_ref()
                        .err()
                        .map(|e| e.lines().next().unwrap_or_default().to_owned())
                        .unwrap_or_default()
                );
            }
        }
        out
    }

    /// Everything as JSON (raw values included).
    pub(crate) fn json(&self, samples: &[Sample]) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|row| {
                let targets: serde_json::Map<String, Value> = row
                    .per_target
                    .iter()
                    .map(|(t, (values, s))| {
                        (
                            t.key().to_owned(),
                            json!({
                                "median": finite(s.median),
                                "min": finite(s.min),
                                "max": finite(s.max),
                                "n": s.n,
                                "values": values.iter().map(|v| finite(*v)).collect::<Vec<_>>(),
                            }),
                        )
                    })
                    .collect();
                json!({
                    "workload": row.workload,
                    "title": row.title,
                    "metric": row.metric,
                    "unit": row.unit,
                    "targets": targets,
                    "ratio_ours_to_eg": row.ratio(TargetKind::Ours, TargetKind::Eg).map(finite),
                    "ratio_ours_to_floor": row.ratio(TargetKind::Ours, TargetKind::Direct).map(finite),
                    "goal": row.goal.map(|g| g.text(row.unit)),
                    "goal_met": row.goal_met(),
                })
            })
            .collect();
        let runs: Vec<Value> = samples
            .iter()
            .map(|s| {
                json!({
                    "workload": s.workload,
                    "round": s.round,
                    "target": s.target.key(),
                    "seconds": s.seconds,
                    "error": s.outcome.as_ref().err(),
                    "metrics": s.outcome.as_ref().map(|ms| ms.iter().map(|m| json!({
                        "name": m.name, "unit": m.unit, "value": finite(m.value),
                    })).collect::<Vec<_>>()).ok(),
                })
            })
            .collect();
        json!({ "rows": rows, "runs": runs })
    }
}

fn finite(v: f64) -> Value {
    if v.is_finite() { json!(v) } else { Value::Null }
}

/// A number with a precision that suits its size.
pub(crate) fn num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        "n/a".to_owned()
    } else if a >= 100.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

fn ratio(r: Option<f64>) -> String {
    match r {
        Some(r) if r.is_finite() => format!("{r:.2}×"),
        _ => "—".to_owned(),
    }
}

/// Today's UTC date as `YYYY-MM-DD` (civil-from-days, no time crate needed).
pub(crate) fn utc_date(unix_seconds: u64) -> String {
    let days = (unix_seconds / 86_400) as i64;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_numbers() {
        assert_eq!(utc_date(0), "1970-01-01");
        assert_eq!(utc_date(951_782_400), "2000-02-29");
        assert_eq!(utc_date(1_795_996_800), "2026-11-30");
        assert_eq!(num(1234.56), "1235");
        assert_eq!(num(12.345), "12.3");
        assert_eq!(num(0.1234), "0.123");
        assert_eq!(num(3.0), "3");
        assert_eq!(num(f64::NAN), "n/a");
    }

    #[test]
    fn goals_judge_against_the_floor() {
        let s = |v: f64| Summary::of(&[v]);
        assert_eq!(
            Goal::FloorPlus(10.0).met(&s(15.0), Some(&s(6.0))),
            Some(true)
        );
        assert_eq!(
            Goal::FloorPlus(10.0).met(&s(17.0), Some(&s(6.0))),
            Some(false)
        );
        assert_eq!(
            Goal::FloorTimesAtLeast(0.9).met(&s(95.0), Some(&s(100.0))),
            Some(true)
        );
        assert_eq!(Goal::FloorTimesAtLeast(0.9).met(&s(95.0), None), None);
        assert_eq!(
            Goal::Exactly(1.0).met(&Summary::of(&[1.0, 0.9]), None),
            Some(false)
        );
        assert_eq!(Goal::Below(20.0).met(&s(19.0), None), Some(true));
    }
}
