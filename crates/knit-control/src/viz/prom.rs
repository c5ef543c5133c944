//! Reading the Prometheus text format the proxies expose, and the quantile arithmetic of
//! `histogram_quantile`, for views that read proxies directly.

use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// Parses sample lines; comments and malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Sample> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Sample> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, parse_labels(rest.strip_suffix('}')?)?),
        None => (series, BTreeMap::new()),
    };
    Some(Sample { name: name.to_string(), labels, value })
}

fn parse_labels(mut s: &str) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    while !s.is_empty() {
        let (key, rest) = s.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => value.push(chars.next()?.1),
                '"' => break i,
                c => value.push(c),
            }
        };
        out.insert(key.trim_start_matches(',').to_string(), value);
        s = rest[end + 1..].trim_start_matches(',');
    }
    Some(out)
}

/// `q` quantile of a cumulative histogram given as (upper bound, count) sorted by bound, with
/// linear interpolation inside the bucket, as Prometheus does. `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(prev.0);
            }
            let in_bucket = count - prev.1;
            let frac = if in_bucket > 0.0 { (rank - prev.1) / in_bucket } else { 0.0 };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    Some(prev.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_linkerd_style_samples() {
        let s = parse("# HELP x\nresponse_total{direction=\"inbound\",status_code=\"200\",x=\"a\\\"b\"} 12\nprocess_open_fds 7\n# EOF\n");
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].labels["direction"], "inbound");
        assert_eq!(s[0].labels["x"], "a\"b");
        assert_eq!(s[0].value, 12.0);
        assert_eq!(s[1].name, "process_open_fds");
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(10.0, 50.0), (20.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(10.0));
        assert_eq!(quantile(0.75, &b), Some(15.0));
        assert_eq!(quantile(0.5, &[(10.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
