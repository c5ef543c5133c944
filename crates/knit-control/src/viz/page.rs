//! Paging for the API's long lists (stat rows, edges, certificates): `filter` (a substring),
//! `sort`, `order=asc|desc`, `offset` and `limit`. The answer says how many matched the filter,
//! so a table of 5,000 rows sends one page at a time.

use std::{cmp::Ordering, collections::BTreeMap};

/// One way a list can be sorted: its name in `sort=`, the comparison (ascending), and whether
/// it reads descending unless `order` says otherwise (numbers: the biggest first).
pub struct SortKey<T> {
    pub name: &'static str,
    pub cmp: fn(&T, &T) -> Ordering,
    pub descending: bool,
}

/// Filters `items` by `matches(item, filter)`, sorts them by the requested key (the first of
/// `keys` by default) and returns the number that matched and the requested page.
pub fn page<T: Clone>(items: &[T], p: &BTreeMap<String, String>, matches: impl Fn(&T, &str) -> bool, keys: &[SortKey<T>]) -> Result<(usize, Vec<T>), String> {
    let mut rows: Vec<&T> = items.iter().collect();
    if let Some(f) = p.get("filter").filter(|f| !f.is_empty()) {
        rows.retain(|r| matches(r, f));
    }
    let sort = p.get("sort").map(String::as_str).filter(|s| !s.is_empty());
    let key = match sort {
        None => &keys[0],
        Some(s) => keys.iter().find(|k| k.name == s).ok_or_else(|| {
            let names: Vec<&str> = keys.iter().map(|k| k.name).collect();
            format!("sort: {s:?}: expected one of {}", names.join(", "))
        })?,
    };
    let descending = match p.get("order").map(String::as_str) {
        None | Some("") => key.descending,
        Some("asc") => false,
        Some("desc") => true,
        Some(other) => return Err(format!("order: {other:?}: expected asc or desc")),
    };
    rows.sort_by(|a, b| if descending { (key.cmp)(b, a) } else { (key.cmp)(a, b) });
    let number = |k: &str, default: usize| {
        p.get(k).filter(|v| !v.is_empty()).map_or(Ok(default), |v| v.parse::<usize>().map_err(|_| format!("{k}: {v:?} is not a number")))
    };
    let (offset, limit) = (number("offset", 0)?, number("limit", usize::MAX)?);
    let total = rows.len();
    Ok((total, rows.into_iter().skip(offset).take(limit).cloned().collect()))
}

/// Compares optional numbers with the absent ones below every present one.
pub fn cmp_opt(a: Option<f64>, b: Option<f64>) -> Ordering {
    a.unwrap_or(f64::NEG_INFINITY).total_cmp(&b.unwrap_or(f64::NEG_INFINITY))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(q: &[(&str, &str)]) -> BTreeMap<String, String> {
        q.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    const KEYS: [SortKey<(&str, u32)>; 2] =
        [SortKey { name: "name", cmp: |a, b| a.0.cmp(b.0), descending: false }, SortKey { name: "n", cmp: |a, b| a.1.cmp(&b.1), descending: true }];

    #[test]
    fn filters_sorts_and_pages() {
        let items = [("web", 3), ("books", 9), ("authors", 1), ("webhook", 5)];
        let names = |q: &[(&str, &str)]| {
            let (total, page) = page(&items, &params(q), |i, f| i.0.contains(f), &KEYS).unwrap();
            (total, page.iter().map(|i| i.0).collect::<Vec<_>>())
        };
        assert_eq!(names(&[]), (4, vec!["authors", "books", "web", "webhook"]));
        assert_eq!(names(&[("sort", "n")]), (4, vec!["books", "webhook", "web", "authors"]), "numbers: biggest first");
        assert_eq!(names(&[("sort", "n"), ("order", "asc")]), (4, vec!["authors", "web", "webhook", "books"]));
        assert_eq!(names(&[("filter", "web"), ("offset", "1"), ("limit", "5")]), (2, vec!["webhook"]));
        assert_eq!(names(&[("order", "desc"), ("limit", "1")]), (4, vec!["webhook"]));
        for (bad, error) in [
            (("sort", "rps"), "sort: \"rps\": expected one of name, n"),
            (("order", "up"), "order: \"up\": expected asc or desc"),
            (("limit", "x"), "limit: \"x\" is not a number"),
        ] {
            assert_eq!(page(&items, &params(&[bad]), |_, _| true, &KEYS).unwrap_err(), error);
        }
    }
}
