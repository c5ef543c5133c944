//! Reading the Prometheus text format the proxies expose, and the quantile arithmetic of
//! `histogram_quantile`, for views that read proxies directly.

use std::borrow::Cow;

/// One sample line, borrowed from the scraped text. Its labels are read only when asked for, so
/// lines of families no one keeps cost a split and a number parse, and no allocation.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line<'a> {
    pub name: &'a str,
    /// What is between the braces, unparsed.
    labels: &'a str,
    pub value: f64,
}

/// The sample lines of `text`; comments and lines without a name and a number are skipped.
pub fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).filter_map(line)
}

fn line(line: &str) -> Option<Line<'_>> {
    let (series, value) = line.rsplit_once(' ')?;
    let value = value.parse().ok()?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.strip_suffix('}')?),
        None => (series, ""),
    };
    Some(Line { name, labels, value })
}

impl<'a> Line<'a> {
    /// Calls `f` with each label's name and value (unescaped: `\\`, `\"`, `\n`), in order;
    /// `None` if the labels are malformed, and then the line is to be skipped (`f` may have seen
    /// some of them).
    pub fn labels(&self, mut f: impl FnMut(&'a str, Cow<'a, str>)) -> Option<()> {
        let mut s = self.labels;
        while !s.is_empty() {
            let (key, rest) = s.split_once("=\"")?;
            let (value, len) = quoted(rest)?;
            f(key.trim_start_matches(','), value);
            s = rest[len..].trim_start_matches(',');
        }
        Some(())
    }

    /// The value of the label `name`, if the line has it and its labels are well formed.
    pub fn label(&self, name: &str) -> Option<Cow<'a, str>> {
        let mut found = None;
        self.labels(|k, v| {
            if found.is_none() && k == name {
                found = Some(v);
            }
        })?;
        found
    }
}

/// The value at the start of `s` (after its opening quote) and the bytes it took, closing quote
/// included. Borrowed unless it has escapes.
fn quoted(s: &str) -> Option<(Cow<'_, str>, usize)> {
    let end = s.find(['"', '\\'])?;
    if s.as_bytes()[end] == b'"' {
        return Some((Cow::Borrowed(&s[..end]), end + 1));
    }
    let mut value = String::from(&s[..end]);
    let mut chars = s[end..].char_indices();
    loop {
        match chars.next()? {
            (_, '\\') => value.push(match chars.next()?.1 {
                'n' => '\n',
                c => c,
            }),
            (i, '"') => return Some((Cow::Owned(value), end + i + 1)),
            (_, c) => value.push(c),
        }
    }
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

    fn labels<'a>(l: &Line<'a>) -> Option<Vec<(&'a str, Cow<'a, str>)>> {
        let mut out = Vec::new();
        l.labels(|k, v| out.push((k, v)))?;
        Some(out)
    }

    #[test]
    fn parses_linkerd_style_samples() {
        let text = "# HELP x\nresponse_total{direction=\"inbound\",status_code=\"200\",x=\"a\\\"b\\\\c\\nd\"} 12\nprocess_open_fds 7\n# EOF\n";
        let s: Vec<_> = lines(text).collect();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].name, "response_total");
        assert_eq!(s[0].value, 12.0);
        let l = labels(&s[0]).unwrap();
        assert_eq!(l, [("direction", "inbound".into()), ("status_code", "200".into()), ("x", "a\"b\\c\nd".into())]);
        assert!(matches!(l[0].1, Cow::Borrowed(_)), "no escape: no copy");
        assert_eq!(s[0].label("x").as_deref(), Some("a\"b\\c\nd"));
        assert_eq!(s[0].label("le"), None);
        assert_eq!(s[1].name, "process_open_fds");
        assert_eq!(labels(&s[1]).unwrap(), []);
    }

    #[test]
    fn malformed_lines_and_labels_are_told_apart() {
        // Not samples: no value, a value that is no number, an unclosed brace.
        assert_eq!(lines("x\ny z\nw{a=\"1\" 2\n").count(), 0);
        // Samples whose labels are malformed: an unterminated value, no quotes, a dangling escape.
        for text in ["x{a=\"1} 2", "x{a=1} 2", "x{a=\"1\\} 2"] {
            let l: Vec<_> = lines(text).collect();
            assert_eq!(l.len(), 1, "{text}");
            assert_eq!(labels(&l[0]), None, "{text}");
        }
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let b = [(10.0, 50.0), (20.0, 100.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(0.5, &b), Some(10.0));
        assert_eq!(quantile(0.75, &b), Some(15.0));
        assert_eq!(quantile(0.5, &[(10.0, 0.0), (f64::INFINITY, 0.0)]), None);
    }
}
