//! The comparison table: one row per chip configuration, as plain text
//! (units in the header, `n/p` for anything not published) or as JSON via
//! serde (`null` for not published).

use serde::{Deserialize, Serialize};
use trainyard_arch::PriceKind;

use crate::price::{price_kind_name, price_kind_serde, price_performance_vs, ChipPrice, PricedFigures};
use crate::{Label, ReportError, ServingEstimate};

/// Printed for a figure whose price or power is not published.
pub const NOT_PUBLISHED: &str = "n/p";

/// One chip configuration: performance, its label, and its prices.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// Chip name (`h100`, `trn2`, ...).
    pub chip: String,
    /// `simulated` or `analytic`.
    pub label: Label,
    /// Chips the run occupies.
    pub chips_used: u32,
    /// Tensor-parallel degree.
    pub tp: u32,
    /// Time to first token, ms.
    pub ttft_ms: f64,
    /// Time per output token, ms.
    pub tpot_ms: f64,
    /// Output tokens per second.
    pub tokens_per_s: f64,
    /// USD per hour for the chips used.
    pub usd_per_hour: Option<f64>,
    /// USD per million output tokens.
    pub usd_per_m_output_tokens: Option<f64>,
    /// Tokens/s per $/h.
    pub tokens_per_s_per_usd_hour: Option<f64>,
    /// Tokens/s per $/h relative to the table's baseline row (filled by [`Table::push`]).
    pub ratio_vs_baseline: Option<f64>,
    /// Joules per output token with every chip at TDP (an upper bound).
    pub joules_per_token: Option<f64>,
    /// The price used, with its kind, source and date.
    pub price: ChipPrice,
}

impl Row {
    /// A row for `chip` from its estimate, its price and its TDP (if published).
    pub fn new(chip: &str, perf: &ServingEstimate, price: &ChipPrice, tdp_watts: Option<f64>) -> Self {
        let f = PricedFigures::new(perf, price, tdp_watts);
        Row {
            chip: chip.to_string(),
            label: perf.label,
            chips_used: perf.chips_used,
            tp: perf.tp,
            ttft_ms: perf.ttft_s * 1e3,
            tpot_ms: perf.tpot_s * 1e3,
            tokens_per_s: perf.tokens_per_s,
            usd_per_hour: f.usd_per_hour,
            usd_per_m_output_tokens: f.usd_per_m_output_tokens,
            tokens_per_s_per_usd_hour: f.tokens_per_s_per_usd_hour,
            ratio_vs_baseline: None,
            joules_per_token: f.joules_per_token,
            price: f.price,
        }
    }
}

/// Rows priced with one [`PriceKind`] and compared against a baseline chip.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Table {
    /// Chip whose first row is the price-performance reference (`h100` in reports).
    pub baseline: String,
    /// The one kind of price every row uses.
    #[serde(with = "price_kind_serde")]
    pub price_kind: PriceKind,
    /// The rows, in the order pushed.
    pub rows: Vec<Row>,
}

impl Table {
    /// An empty table against `baseline`, priced with `price_kind`.
    pub fn new(baseline: &str, price_kind: PriceKind) -> Self {
        Table { baseline: baseline.to_string(), price_kind, rows: Vec::new() }
    }

    /// Adds a row and refreshes every row's ratio against the first row whose
    /// chip is the baseline (case-insensitive). A row priced with another kind
    /// is refused: prices of different kinds are never compared.
    pub fn push(&mut self, row: Row) -> Result<(), ReportError> {
        if row.price.kind != self.price_kind {
            return Err(ReportError::MixedPriceKind {
                chip: row.chip,
                row: price_kind_name(row.price.kind),
                table: price_kind_name(self.price_kind),
            });
        }
        self.rows.push(row);
        let base = self
            .rows
            .iter()
            .find(|r| r.chip.eq_ignore_ascii_case(&self.baseline))
            .and_then(|r| r.tokens_per_s_per_usd_hour);
        for r in &mut self.rows {
            r.ratio_vs_baseline = price_performance_vs(base, r.tokens_per_s_per_usd_hour);
        }
        Ok(())
    }

    /// The table as aligned plain text, followed by the price sources and the
    /// meaning of the labels and of `n/p`.
    pub fn render_text(&self) -> String {
        let header = [
            "chip".to_string(),
            "label".to_string(),
            "chips".to_string(),
            "TP".to_string(),
            "TTFT ms".to_string(),
            "TPOT ms".to_string(),
            "tokens/s".to_string(),
            "$/hour".to_string(),
            "$/M out tok".to_string(),
            "tok/s per $/h".to_string(),
            format!("vs {}", self.baseline),
            "J/tok @TDP".to_string(),
        ];
        let opt = |v: Option<f64>| v.map_or_else(|| NOT_PUBLISHED.to_string(), fmt_num);
        let cells: Vec<[String; 12]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.chip.clone(),
                    r.label.to_string(),
                    r.chips_used.to_string(),
                    r.tp.to_string(),
                    fmt_num(r.ttft_ms),
                    fmt_num(r.tpot_ms),
                    fmt_num(r.tokens_per_s),
                    opt(r.usd_per_hour),
                    opt(r.usd_per_m_output_tokens),
                    opt(r.tokens_per_s_per_usd_hour),
                    r.ratio_vs_baseline.map_or_else(|| NOT_PUBLISHED.to_string(), |x| format!("{x:.2}x")),
                    opt(r.joules_per_token),
                ]
            })
            .collect();
        let mut widths = header.clone().map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in widths.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mut out = String::new();
        for row in std::iter::once(&header).chain(&cells) {
            let line: Vec<String> = row
                .iter()
                .zip(&widths)
                .enumerate()
                .map(|(i, (c, &w))| if i < 2 { format!("{c:<w$}") } else { format!("{c:>w$}") })
                .collect();
            out.push_str(line.join("  ").trim_end());
            out.push('\n');
        }
        out.push_str(&format!("prices: {} (instance price / chips per instance)\n", price_kind_name(self.price_kind)));
        let mut seen: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !seen.contains(&r.chip.as_str()) {
                seen.push(&r.chip);
                out.push_str(&format!("  {}: {}\n", r.chip, r.price.citation()));
            }
        }
        out.push_str(
            "labels: analytic = roofline model with efficiency factors cited in chips/*.toml; \
             simulated = trainyard simulator timing\n",
        );
        out.push_str("n/p = not published (no price of this kind, or no TDP); J/tok @TDP is an upper bound\n");
        out
    }
}

impl std::fmt::Display for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.render_text())
    }
}

/// About four significant digits, without exponent notation for report-sized numbers.
fn fmt_num(v: f64) -> String {
    let a = v.abs();
    if !v.is_finite() {
        format!("{v}")
    } else if a >= 1000.0 {
        format!("{v:.0}")
    } else if a >= 100.0 {
        format!("{v:.1}")
    } else if a >= 10.0 {
        format!("{v:.2}")
    } else if a >= 0.01 || a == 0.0 {
        format!("{v:.3}")
    } else {
        format!("{v:.2e}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use trainyard_arch::GpuSpec;

    fn est(label: Label, chips: u32, ttft: f64, tpot: f64) -> ServingEstimate {
        ServingEstimate::from_latencies(label, chips, chips, 1, 129, ttft, tpot).unwrap()
    }

    fn table() -> Table {
        let kind = PriceKind::CapacityBlock;
        let h100 = GpuSpec::by_name("h100").unwrap();
        let a100 = GpuSpec::by_name("a100").unwrap();
        let mut t = Table::new("h100", kind);
        // Push the baseline last: ratios of earlier rows must still be filled.
        t.push(Row::new("a100", &est(Label::Analytic, 1, 0.05, 0.012), &ChipPrice::of_gpu(&a100, kind), Some(400.0)))
            .unwrap();
        t.push(Row::new("trn2", &est(Label::Simulated, 1, 0.03, 0.004), &ChipPrice::not_published(kind), None))
            .unwrap();
        t.push(Row::new("h100", &est(Label::Analytic, 1, 0.02, 0.005), &ChipPrice::of_gpu(&h100, kind), Some(700.0)))
            .unwrap();
        t
    }

    #[test]
    fn ratios_are_against_the_baseline() {
        let t = table();
        let h = &t.rows[2];
        assert_eq!(h.ratio_vs_baseline, Some(1.0));
        let a = &t.rows[0];
        let want = a.tokens_per_s_per_usd_hour.unwrap() / h.tokens_per_s_per_usd_hour.unwrap();
        assert!((a.ratio_vs_baseline.unwrap() - want).abs() < 1e-12);
        assert_eq!(t.rows[1].ratio_vs_baseline, None, "trn2 has no published price");
        assert_eq!(t.rows[1].usd_per_m_output_tokens, None);
    }

    #[test]
    fn text_has_labels_units_np_and_sources() {
        let text = table().render_text();
        for needle in [
            "analytic",
            "simulated",
            "TTFT ms",
            "TPOT ms",
            "tokens/s",
            "$/hour",
            "$/M out tok",
            "tok/s per $/h",
            "vs h100",
            "1.00x",
            "n/p",
            "HW-PRICE-CB-2024",
            "capacity_block",
        ] {
            assert!(text.contains(needle), "missing `{needle}` in\n{text}");
        }
        let trn2 = text.lines().find(|l| l.starts_with("trn2")).unwrap();
        assert!(trn2.contains("simulated") && trn2.matches("n/p").count() == 5, "{trn2}");
        let h100 = text.lines().find(|l| l.starts_with("h100")).unwrap();
        assert!(h100.contains("analytic") && h100.contains("5.000") && !h100.contains("n/p"), "{h100}");
        // Columns line up: the baseline's ratio ends where its header ends.
        let header = text.lines().next().unwrap();
        let end = header.find("vs h100").unwrap() + "vs h100".len();
        assert_eq!(h100.find("1.00x").map(|i| i + "1.00x".len()), Some(end), "{text}");
    }

    #[test]
    fn mixed_price_kinds_are_refused() {
        let mut t = Table::new("h100", PriceKind::OnDemand);
        let row = Row::new(
            "h100",
            &est(Label::Analytic, 1, 0.02, 0.005),
            &ChipPrice::not_published(PriceKind::Reserved),
            None,
        );
        let err = t.push(row).unwrap_err().to_string();
        assert!(err.contains("h100") && err.contains("reserved") && err.contains("on_demand"), "{err}");
        assert!(t.rows.is_empty());
    }

    #[test]
    fn json_round_trips_with_null_for_not_published() {
        let t = table();
        let json = serde_json::to_string(&t).unwrap();
        assert!(json.contains("\"label\":\"simulated\"") && json.contains("\"label\":\"analytic\""), "{json}");
        assert!(json.contains("\"usd_per_hour\":null"), "{json}");
        assert!(json.contains("\"price_kind\":\"capacity_block\""), "{json}");
        assert_eq!(serde_json::from_str::<Table>(&json).unwrap(), t);
    }

    #[test]
    fn numbers_keep_about_four_digits() {
        assert_eq!(fmt_num(12345.6), "12346");
        assert_eq!(fmt_num(123.456), "123.5");
        assert_eq!(fmt_num(12.3456), "12.35");
        assert_eq!(fmt_num(1.23456), "1.235");
        assert_eq!(fmt_num(0.0), "0.000");
        assert_eq!(fmt_num(0.00123), "1.23e-3");
    }
}
