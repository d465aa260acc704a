//! The benchmark's figures and what it writes from them: samples summarised as
//! min / median / p90, and the SVG plot of the latency distributions, one row per
//! operation with a runtime per line. The benchmark itself is `src/bin/bench/`.

use serde::Serialize;

/// Repeated measurements of one figure, in the order they were taken.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Samples(pub Vec<f64>);

/// A figure's summary as the report and SPECIFICATION.md give it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    /// The smallest sample: the cost with the least noise on top.
    pub min: f64,
    /// The median.
    pub median: f64,
    /// The 90th percentile (nearest rank).
    pub p90: f64,
}

impl Samples {
    /// Adds one sample.
    pub fn push(&mut self, value: f64) {
        self.0.push(value);
    }

    /// Adds a duration, in milliseconds.
    pub fn push_ms(&mut self, d: std::time::Duration) {
        self.push(d.as_secs_f64() * 1000.0);
    }

    /// Whether nothing was measured.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The `q` quantile (0 to 1) by nearest rank; NaN without samples.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.0.is_empty() {
            return f64::NAN;
        }
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    /// Min, median and p90; `None` without samples.
    pub fn summary(&self) -> Option<Summary> {
        (!self.is_empty()).then(|| Summary {
            min: self.quantile(0.0),
            median: self.quantile(0.5),
            p90: self.quantile(0.9),
        })
    }
}

impl Serialize for Samples {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(s)
    }
}

/// `a / b`, or `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 && a.is_finite() && b.is_finite() => Some(a / b),
        _ => None,
    }
}

/// One series in the plot: a runtime's samples of one operation.
pub struct Series<'a> {
    /// The runtime ("berth", "containerd").
    pub runtime: &'a str,
    /// Its samples, in milliseconds.
    pub samples: &'a Samples,
}

/// Colours for the runtimes, in the order they are given.
const COLOURS: [&str; 4] = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];

/// Escapes text for SVG.
fn xml(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// An SVG of the latency distributions: one row per operation, one line per runtime, on a
/// logarithmic millisecond axis (the calls span 0.1 to a few hundred ms). Each sample is a
/// dot; a bar runs from min to p90 and a tick marks the median.
pub fn latency_svg(title: &str, rows: &[(&str, Vec<Series<'_>>)]) -> String {
    const LABEL: f64 = 300.0;
    const PLOT: f64 = 620.0;
    const LINE: f64 = 14.0;
    const TOP: f64 = 60.0;
    let runtimes: Vec<&str> = {
        let mut seen: Vec<&str> = Vec::new();
        for (_, series) in rows {
            for s in series {
                if !seen.contains(&s.runtime) {
                    seen.push(s.runtime);
                }
            }
        }
        seen
    };
    let colour = |rt: &str| {
        let i = runtimes.iter().position(|r| *r == rt).unwrap_or(0);
        COLOURS[i % COLOURS.len()]
    };
    // Decades covering every positive sample.
    let all = rows
        .iter()
        .flat_map(|(_, s)| s.iter().flat_map(|s| s.samples.0.iter().copied()))
        .filter(|v| *v > 0.0 && v.is_finite());
    let (lo, hi) = all.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    let (lo, hi) = if lo.is_finite() {
        (
            lo.log10().floor(),
            hi.log10().ceil().max(lo.log10().floor() + 1.0),
        )
    } else {
        (-1.0, 3.0)
    };
    let x = |ms: f64| LABEL + (ms.max(10f64.powf(lo)).log10() - lo) / (hi - lo) * PLOT;
    let row_height = LINE * runtimes.len().max(1) as f64 + 8.0;
    let height = TOP + row_height * rows.len() as f64 + 30.0;
    // Room on the right for the last decade's label.
    let width = LABEL + PLOT + 50.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" \
         font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n\
         <text x=\"10\" y=\"18\" font-size=\"14\">{}</text>\n",
        xml(title)
    );
    for (i, rt) in runtimes.iter().enumerate() {
        let lx = LABEL + i as f64 * 110.0;
        svg.push_str(&format!(
            "<rect x=\"{lx}\" y=\"28\" width=\"10\" height=\"10\" fill=\"{}\"/>\
             <text x=\"{}\" y=\"37\">{}</text>\n",
            colour(rt),
            lx + 14.0,
            xml(rt)
        ));
    }
    svg.push_str(&format!(
        "<text x=\"{}\" y=\"37\" fill=\"#555\">dots: samples; bar: min to p90; tick: median</text>\n",
        LABEL + runtimes.len() as f64 * 110.0
    ));
    let bottom = TOP + row_height * rows.len() as f64;
    for decade in lo as i32..=hi as i32 {
        let ms = 10f64.powi(decade);
        let gx = x(ms);
        svg.push_str(&format!(
            "<line x1=\"{gx:.1}\" y1=\"{}\" x2=\"{gx:.1}\" y2=\"{bottom}\" stroke=\"#ddd\"/>\
             <text x=\"{gx:.1}\" y=\"{}\" text-anchor=\"middle\">{} ms</text>\n",
            TOP - 6.0,
            bottom + 14.0,
            if decade < 0 {
                format!("{ms:.*}", (-decade) as usize)
            } else {
                format!("{ms:.0}")
            }
        ));
    }
    for (r, (op, series)) in rows.iter().enumerate() {
        let y0 = TOP + row_height * r as f64;
        if r % 2 == 1 {
            svg.push_str(&format!(
                "<rect x=\"0\" y=\"{y0}\" width=\"{width}\" height=\"{row_height}\" fill=\"#000\" fill-opacity=\"0.04\"/>\n"
            ));
        }
        svg.push_str(&format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
            LABEL - 8.0,
            y0 + row_height / 2.0 + 4.0,
            xml(op)
        ));
        for s in series {
            let Some(sum) = s.samples.summary() else {
                continue;
            };
            let k = runtimes.iter().position(|r| *r == s.runtime).unwrap_or(0);
            let y = y0 + 4.0 + LINE * (k as f64 + 0.5);
            let c = colour(s.runtime);
            svg.push_str(&format!(
                "<line x1=\"{:.1}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"{c}\" stroke-width=\"5\" stroke-opacity=\"0.35\"/>\n",
                x(sum.min),
                x(sum.p90)
            ));
            for (j, v) in s.samples.0.iter().enumerate() {
                // A small deterministic jitter keeps equal samples apart.
                let jitter = ((j * 7) % 5) as f64 - 2.0;
                svg.push_str(&format!(
                    "<circle cx=\"{:.1}\" cy=\"{:.1}\" r=\"1.8\" fill=\"{c}\" fill-opacity=\"0.6\"/>\n",
                    x(*v),
                    y + jitter
                ));
            }
            let mx = x(sum.median);
            svg.push_str(&format!(
                "<line x1=\"{mx:.1}\" y1=\"{:.1}\" x2=\"{mx:.1}\" y2=\"{:.1}\" stroke=\"{c}\" stroke-width=\"2\"><title>{}: {}: min {:.2}, median {:.2}, p90 {:.2} ms</title></line>\n",
                y - 6.0,
                y + 6.0,
                xml(s.runtime),
                xml(op),
                sum.min,
                sum.median,
                sum.p90
            ));
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_is_min_median_and_nearest_rank_p90() {
        let s = Samples((1..=10).rev().map(f64::from).collect());
        let sum = s.summary().unwrap();
        assert_eq!(sum.min, 1.0);
        assert_eq!(sum.median, 6.0); // rank round(4.5) = 5 of 0..9
        assert_eq!(sum.p90, 9.0);
        assert_eq!(Samples::default().summary(), None);
        assert!(Samples::default().quantile(0.5).is_nan());
    }

    #[test]
    fn ratio_needs_both_figures_and_a_nonzero_divisor() {
        assert_eq!(ratio(Some(1.0), Some(4.0)), Some(0.25));
        assert_eq!(ratio(Some(1.0), None), None);
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(Some(f64::NAN), Some(1.0)), None);
    }

    #[test]
    fn samples_serialize_as_a_plain_list() {
        let s = Samples(vec![1.5, 2.0]);
        assert_eq!(serde_json::to_string(&s).unwrap(), "[1.5,2.0]");
    }

    #[test]
    fn svg_has_a_dot_per_sample_a_median_per_series_and_escaped_labels() {
        let berth = Samples(vec![1.0, 1.2, 1.1]);
        let ctd = Samples(vec![40.0, 55.0]);
        let rows = vec![(
            "pod ready (run+create+start) <all>",
            vec![
                Series {
                    runtime: "berth",
                    samples: &berth,
                },
                Series {
                    runtime: "containerd",
                    samples: &ctd,
                },
            ],
        )];
        let svg = latency_svg("latency & more", &rows);
        assert!(svg.starts_with("<svg "));
        assert!(svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<circle").count(), 5);
        assert_eq!(svg.matches("<title>").count(), 2);
        assert!(svg.contains("latency &amp; more"));
        assert!(svg.contains("&lt;all&gt;"));
        assert!(!svg.contains("<all>"));
        // Axis from 1 ms to 100 ms: decades around the samples.
        assert!(svg.contains(">1 ms<") && svg.contains(">100 ms<"));
        assert!(svg.contains("#1f77b4") && svg.contains("#ff7f0e"));
    }

    #[test]
    fn svg_without_samples_is_still_a_document() {
        let empty = Samples::default();
        let rows = vec![(
            "ListImages",
            vec![Series {
                runtime: "berth",
                samples: &empty,
            }],
        )];
        let svg = latency_svg("empty", &rows);
        assert!(svg.contains("ListImages"));
        assert_eq!(svg.matches("<circle").count(), 0);
        assert!(svg.trim_end().ends_with("</svg>"));
    }
}
