//! Figures and how they are shown: latency histograms, targets with PASS/MISS, the human
//! summary, and the one line of JSON every scenario ends with.

use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde_json::{Map, Value, json};

/// Latencies in microseconds, from 1 us to 10 minutes, at 3 significant figures. A wrapper so
/// every scenario records and reads latencies the same way (and merges per-task copies).
#[derive(Clone)]
pub struct Latency {
    hist: Histogram<u64>,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 600_000_000, 3).expect("histogram bounds"),
        }
    }
}

impl Latency {
    pub fn record(&mut self, d: Duration) {
        let us = (d.as_micros() as u64).clamp(1, 600_000_000);
        // Saturating: a value above the top (10 minutes) is clamped, never an error.
        self.hist.saturating_record(us);
    }

    pub fn record_ms_f64(&mut self, ms: f64) {
        let us = (ms * 1000.0).round().clamp(1.0, 600_000_000.0) as u64;
        self.hist.saturating_record(us);
    }

    pub fn merge(&mut self, other: &Latency) {
        // Same bounds on both sides, so `add` cannot fail; a failure would only lose samples.
        let _ = self.hist.add(&other.hist);
    }

    pub fn count(&self) -> u64 {
        self.hist.len()
    }

    /// The value at `q` (0..=1) in milliseconds; 0 when empty.
    pub fn ms(&self, q: f64) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn p50(&self) -> f64 {
        self.ms(0.5)
    }

    pub fn p99(&self) -> f64 {
        self.ms(0.99)
    }

    pub fn max(&self) -> f64 {
        if self.hist.is_empty() {
            return 0.0;
        }
        self.hist.max() as f64 / 1000.0
    }
}

/// Which way a target points.
#[derive(Clone, Copy)]
pub enum Goal {
    /// The figure must be at least the target (throughput).
    AtLeast(f64),
    /// The figure must be below the target (latency, memory, time).
    Below(f64),
    /// The figure must be at most the target.
    AtMost(f64),
}

impl Goal {
    fn met(self, v: f64) -> bool {
        match self {
            Goal::AtLeast(t) => v >= t,
            Goal::Below(t) => v < t,
            Goal::AtMost(t) => v <= t,
        }
    }

    fn text(self, unit: &str) -> String {
        match self {
            Goal::AtLeast(t) => format!(">= {} {unit}", num(t)),
            Goal::Below(t) => format!("< {} {unit}", num(t)),
            Goal::AtMost(t) => format!("<= {} {unit}", num(t)),
        }
    }
}

/// A number for people: thousands separated, sensible decimals.
pub fn num(v: f64) -> String {
    if !v.is_finite() {
        return "n/a".into();
    }
    let abs = v.abs();
    if abs >= 1000.0 {
        let rounded = v.round() as i64;
        let digits = rounded.abs().to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        if rounded < 0 { format!("-{out}") } else { out }
    } else if abs >= 100.0 {
        format!("{v:.0}")
    } else if abs >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Round for JSON: three decimals are plenty for every figure here.
pub fn r3(v: f64) -> f64 {
    if v.is_finite() {
        (v * 1000.0).round() / 1000.0
    } else {
        0.0
    }
}

/// One scenario's result: the lines people read and the JSON object machines read, built
/// together so a figure cannot appear in one and not the other.
pub struct Report {
    title: String,
    lines: String,
    json: Map<String, Value>,
    misses: Vec<String>,
}

impl Report {
    pub fn new(scenario: &str, title: impl Into<String>) -> Self {
        let mut json = Map::new();
        json.insert("scenario".into(), json!(scenario));
        Self {
            title: title.into(),
            lines: String::new(),
            json,
            misses: Vec::new(),
        }
    }

    /// A JSON-only field (settings, counts that need no line of their own).
    pub fn field(&mut self, key: &str, value: Value) -> &mut Self {
        let value = match value {
            Value::Number(n) if n.is_f64() => json!(r3(n.as_f64().unwrap_or_default())),
            other => other,
        };
        self.json.insert(key.into(), value);
        self
    }

    /// A figure with no target.
    pub fn figure(&mut self, label: &str, key: &str, value: f64, unit: &str) -> &mut Self {
        let _ = writeln!(self.lines, "  {label:<34} {:>12} {unit}", num(value));
        self.json.insert(key.into(), json!(r3(value)));
        self
    }

    /// A figure with its target, PASS or MISS beside it.
    pub fn target(
        &mut self,
        label: &str,
        key: &str,
        value: f64,
        unit: &str,
        goal: Goal,
    ) -> &mut Self {
        let ok = goal.met(value);
        let verdict = if ok { "PASS" } else { "MISS" };
        let _ = writeln!(
            self.lines,
            "  {label:<34} {:>12} {unit:<10} target {:<18} {verdict}",
            num(value),
            goal.text(unit)
        );
        self.json.insert(key.into(), json!(r3(value)));
        self.json.insert(format!("{key}_pass"), json!(ok));
        if !ok {
            self.misses.push(key.to_string());
        }
        self
    }

    /// A line of plain text (a note, a comparison).
    pub fn note(&mut self, text: &str) -> &mut Self {
        let _ = writeln!(self.lines, "  {text}");
        self
    }

    /// Print the summary; answer the JSON object.
    pub fn finish(mut self) -> Value {
        self.json.insert("misses".into(), json!(self.misses));
        println!("\n== {} ==", self.title);
        print!("{}", self.lines);
        if self.misses.is_empty() {
            println!("  all targets met");
        } else {
            println!("  missed: {}", self.misses.join(", "));
        }
        Value::Object(self.json)
    }
}

/// `a / b`, or 0 when `b` is 0 (a ratio to a floor that did not run).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { 0.0 }
}
