//! Price-performance: what a serving estimate costs.
//!
//! Prices come from the `[[instances]]` entries of `chips/*.toml`: instance
//! price ÷ chips per instance, of one [`PriceKind`] (kinds are never mixed;
//! they differ severalfold). Every function takes prices as `Option` and
//! returns `None` when a price (or a TDP) is not published: reports print
//! `n/p`, never a made-up number.

use serde::{Deserialize, Serialize};
use trainyard_arch::{ChipSpec, GpuSpec, InstanceSpec, PriceKind};

use crate::{Label, ServingEstimate};

/// A positive, finite number, or `None`.
fn positive(v: f64) -> Option<f64> {
    (v.is_finite() && v > 0.0).then_some(v)
}

/// Price of the chips a run occupies, USD per hour.
pub fn usd_per_hour(chips_used: u32, usd_per_chip_hour: Option<f64>) -> Option<f64> {
    positive(chips_used as f64 * positive(usd_per_chip_hour?)?)
}

/// USD per million output tokens at `tokens_per_s`.
pub fn usd_per_million_output_tokens(tokens_per_s: f64, usd_per_hour: Option<f64>) -> Option<f64> {
    let tokens_per_hour = positive(tokens_per_s)? * 3600.0;
    Some(positive(usd_per_hour?)? / tokens_per_hour * 1e6)
}

/// Output tokens per second bought by one dollar per hour: `tokens_per_s / usd_per_hour`.
pub fn tokens_per_s_per_dollar_hour(tokens_per_s: f64, usd_per_hour: Option<f64>) -> Option<f64> {
    Some(positive(tokens_per_s)? / positive(usd_per_hour?)?)
}

/// Price-performance of `other` relative to `baseline`, both in tokens/s per
/// $/h: above 1 means `other` serves more tokens per dollar.
pub fn price_performance_vs(baseline: Option<f64>, other: Option<f64>) -> Option<f64> {
    Some(positive(other?)? / positive(baseline?)?)
}

/// Energy per output token, joules, with every chip at its published TDP:
/// an upper bound (chips rarely draw TDP throughout). `None` without a TDP
/// (no Trainium/Inferentia TDP is published, HW-PWR-NEURON).
pub fn joules_per_token(tokens_per_s: f64, chips_used: u32, tdp_watts: Option<f64>) -> Option<f64> {
    Some(chips_used as f64 * positive(tdp_watts?)? / positive(tokens_per_s)?)
}

/// `on_demand`, `reserved` or `capacity_block`: how reports and JSON name a [`PriceKind`].
pub fn price_kind_name(kind: PriceKind) -> &'static str {
    match kind {
        PriceKind::OnDemand => "on_demand",
        PriceKind::Reserved => "reserved",
        PriceKind::CapacityBlock => "capacity_block",
    }
}

/// Serde for [`PriceKind`] (which arch leaves without serde) as its [`price_kind_name`].
pub(crate) mod price_kind_serde {
    use super::{price_kind_name, PriceKind};
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(kind: &PriceKind, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(price_kind_name(*kind))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PriceKind, D::Error> {
        let name = String::deserialize(d)?;
        PriceKind::ALL.into_iter().find(|k| price_kind_name(*k) == name).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "unknown price kind `{name}` (expected on_demand, reserved or capacity_block)"
            ))
        })
    }
}

/// One chip's price of one kind and where it comes from.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChipPrice {
    /// The kind of price.
    #[serde(with = "price_kind_serde")]
    pub kind: PriceKind,
    /// USD per chip-hour; `None` when no instance quotes this kind.
    pub usd_per_chip_hour: Option<f64>,
    /// Instance type the price is taken from.
    pub instance: Option<String>,
    /// Region of the quote.
    pub region: Option<String>,
    /// Date of the quote (`YYYY-MM` or `YYYY-MM-DD`).
    pub price_date: Option<String>,
    /// Fact id and label of the quote.
    pub price_source: Option<String>,
}

impl ChipPrice {
    /// The lowest per-chip price of `kind` over `instances`, with that entry's source and date.
    pub fn cheapest(instances: &[InstanceSpec], kind: PriceKind) -> Self {
        let best = instances
            .iter()
            .filter_map(|i| Some((i, i.usd_per_chip_hour_of(kind)?)))
            .min_by(|a, b| a.1.total_cmp(&b.1));
        match best {
            Some((inst, usd)) => ChipPrice {
                kind,
                usd_per_chip_hour: Some(usd),
                instance: Some(inst.name.clone()),
                region: inst.region.clone(),
                price_date: inst.price_date.clone(),
                price_source: inst.price_source.clone(),
            },
            None => ChipPrice::not_published(kind),
        }
    }

    /// No price of `kind`.
    pub fn not_published(kind: PriceKind) -> Self {
        ChipPrice { kind, usd_per_chip_hour: None, instance: None, region: None, price_date: None, price_source: None }
    }

    /// A GPU's cheapest price of `kind`.
    pub fn of_gpu(gpu: &GpuSpec, kind: PriceKind) -> Self {
        Self::cheapest(&gpu.instances, kind)
    }

    /// A Neuron chip's cheapest price of `kind`.
    pub fn of_chip(chip: &ChipSpec, kind: PriceKind) -> Self {
        Self::cheapest(&chip.instances, kind)
    }

    /// One line for a report's price notes: price, instance, region, date, source; or `n/p`.
    pub fn citation(&self) -> String {
        let Some(usd) = self.usd_per_chip_hour else {
            return format!("n/p (no {} price published)", price_kind_name(self.kind));
        };
        let mut parts = vec![format!("${usd:.4}/chip-hour {}", price_kind_name(self.kind))];
        parts.extend(
            [&self.instance, &self.region, &self.price_date, &self.price_source].into_iter().flatten().cloned(),
        );
        parts.join(", ")
    }
}

/// The price-derived figures of one [`ServingEstimate`]; every field is
/// `None` where the price (or TDP) it needs is not published.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PricedFigures {
    /// Label of the performance figures the prices apply to.
    pub label: Label,
    /// Chips the run occupies.
    pub chips_used: u32,
    /// Output tokens per second.
    pub tokens_per_s: f64,
    /// USD per hour for `chips_used` chips.
    pub usd_per_hour: Option<f64>,
    /// USD per million output tokens.
    pub usd_per_m_output_tokens: Option<f64>,
    /// Tokens/s per $/h.
    pub tokens_per_s_per_usd_hour: Option<f64>,
    /// Joules per output token at TDP (an upper bound).
    pub joules_per_token: Option<f64>,
    /// The price used, with its source and date.
    pub price: ChipPrice,
}

impl PricedFigures {
    /// Prices `perf` at `price`; `tdp_watts` gives the energy figure when published.
    pub fn new(perf: &ServingEstimate, price: &ChipPrice, tdp_watts: Option<f64>) -> Self {
        let hourly = usd_per_hour(perf.chips_used, price.usd_per_chip_hour);
        PricedFigures {
            label: perf.label,
            chips_used: perf.chips_used,
            tokens_per_s: perf.tokens_per_s,
            usd_per_hour: hourly,
            usd_per_m_output_tokens: usd_per_million_output_tokens(perf.tokens_per_s, hourly),
            tokens_per_s_per_usd_hour: tokens_per_s_per_dollar_hour(perf.tokens_per_s, hourly),
            joules_per_token: joules_per_token(perf.tokens_per_s, perf.chips_used, tdp_watts),
            price: price.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: Option<f64>, b: f64) -> bool {
        a.is_some_and(|a| ((a - b) / b).abs() < 1e-12)
    }

    #[test]
    fn price_math_by_hand() {
        // 8 chips at $4.91625 = one p5.48xlarge Capacity Block hour, $39.33.
        let hourly = usd_per_hour(8, Some(39.33 / 8.0));
        assert!(close(hourly, 39.33));
        // 1000 tokens/s = 3.6 M tokens/h: $39.33 / 3.6 = $10.925 per M.
        assert!(close(usd_per_million_output_tokens(1000.0, hourly), 10.925));
        assert!(close(tokens_per_s_per_dollar_hour(1000.0, hourly), 1000.0 / 39.33));
        assert!(close(price_performance_vs(Some(20.0), Some(30.0)), 1.5));
        assert!(close(joules_per_token(100.0, 2, Some(700.0)), 14.0));
    }

    #[test]
    fn missing_price_or_tdp_gives_none() {
        assert_eq!(usd_per_hour(8, None), None);
        assert_eq!(usd_per_million_output_tokens(1000.0, None), None);
        assert_eq!(tokens_per_s_per_dollar_hour(1000.0, None), None);
        assert_eq!(price_performance_vs(None, Some(1.0)), None);
        assert_eq!(price_performance_vs(Some(1.0), None), None);
        assert_eq!(joules_per_token(100.0, 1, None), None);
        // Zero or broken inputs never divide into a number.
        assert_eq!(usd_per_million_output_tokens(0.0, Some(10.0)), None);
        assert_eq!(tokens_per_s_per_dollar_hour(f64::NAN, Some(10.0)), None);
        assert_eq!(usd_per_hour(0, Some(1.0)), None);
    }

    #[test]
    fn prices_come_from_the_chip_files_with_their_source() {
        let h100 = GpuSpec::by_name("h100").unwrap();
        let cb = ChipPrice::of_gpu(&h100, PriceKind::CapacityBlock);
        assert!(close(cb.usd_per_chip_hour, 39.33 / 8.0));
        assert_eq!(cb.instance.as_deref(), Some("p5.48xlarge"));
        assert_eq!(cb.price_date.as_deref(), Some("2024-12"));
        assert!(cb.citation().contains("HW-PRICE-CB-2024") && cb.citation().contains("2024-12"), "{}", cb.citation());
        let od = ChipPrice::of_gpu(&h100, PriceKind::OnDemand);
        assert_eq!(od, ChipPrice::not_published(PriceKind::OnDemand));
        assert!(od.citation().starts_with("n/p"));
        let trn2 = ChipSpec::by_name("trn2").unwrap();
        assert_eq!(ChipPrice::of_chip(&trn2, PriceKind::OnDemand).usd_per_chip_hour, None);
        let trn1 = ChipSpec::by_name("trn1").unwrap();
        let t1 = ChipPrice::of_chip(&trn1, PriceKind::OnDemand);
        assert_eq!(t1.usd_per_chip_hour, trn1.min_usd_per_chip_hour(PriceKind::OnDemand));
        assert!(t1.price_source.is_some());
    }

    #[test]
    fn priced_figures_follow_the_estimate() {
        let perf = ServingEstimate::from_latencies(Label::Analytic, 2, 2, 8, 101, 0.1, 0.01).unwrap();
        let h100 = GpuSpec::by_name("h100").unwrap();
        let f = PricedFigures::new(&perf, &ChipPrice::of_gpu(&h100, PriceKind::CapacityBlock), h100.power.tdp_watts);
        assert!(close(f.usd_per_hour, 2.0 * 39.33 / 8.0));
        assert!(close(f.usd_per_m_output_tokens, 2.0 * 39.33 / 8.0 / (perf.tokens_per_s * 3600.0) * 1e6));
        assert!(close(f.joules_per_token, 1400.0 / perf.tokens_per_s));
        assert_eq!(f.label, Label::Analytic);
        let none = PricedFigures::new(&perf, &ChipPrice::not_published(PriceKind::OnDemand), None);
        assert_eq!((none.usd_per_hour, none.usd_per_m_output_tokens, none.joules_per_token), (None, None, None));
    }

    #[test]
    fn price_kind_round_trips_through_json() {
        let p = ChipPrice::not_published(PriceKind::Reserved);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.contains("\"reserved\""), "{json}");
        assert_eq!(serde_json::from_str::<ChipPrice>(&json).unwrap(), p);
        let err = serde_json::from_str::<ChipPrice>(&json.replace("reserved", "spot")).unwrap_err().to_string();
        assert!(err.contains("spot"), "{err}");
    }
}
