//! Slurm hostlist expressions: expansion exactly as `scontrol show hostnames`, compression
//! as `scontrol show hostlist` / `hostlistsorted`, and tasks-per-node strings (`2(x3),1`).
//!
//! Expansion rules (Slurm 22.05, plus the 23.11 suffix after the last `]`):
//! - items are separated by `,`, space or tab outside brackets; empty items are skipped;
//!   order and duplicates are kept;
//! - a range's zero padding is the length of its low bound (`[08-10]`, `[1-010]`);
//! - with several bracket groups the last group varies fastest and the others are iterated
//!   from right to left (the second-to-last outermost), which is Slurm's own recursion order.

use std::cmp::Ordering;
use std::fmt::Write as _;
use thiserror::Error;

/// Most hosts one numeric range may hold (Slurm's `MAX_RANGE`).
pub const MAX_RANGE_HOSTS: u64 = 65_536;
/// Most hosts one expression may expand to; guards memory against absurd input.
pub const MAX_TOTAL_HOSTS: u64 = 16_000_000;

/// A hostlist expression that cannot be expanded, with the offending part.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid hostlist item '{item}': {reason}")]
pub struct HostlistError {
    /// The item (between separators) that is wrong.
    pub item: String,
    /// What is wrong with it.
    pub reason: String,
}

fn err(item: &str, reason: impl Into<String>) -> HostlistError {
    HostlistError {
        item: item.to_string(),
        reason: reason.into(),
    }
}

/// One `lo-hi` range inside brackets; `width` is the zero padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Range {
    lo: u64,
    hi: u64,
    width: usize,
}

/// Splits an expression into items at `,`, space and tab outside brackets.
fn split_items(expr: &str) -> Result<Vec<&str>, HostlistError> {
    let mut items = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in expr.char_indices() {
        match c {
            '[' => {
                if depth > 0 {
                    return Err(err(&expr[start..], "nested '[' inside brackets"));
                }
                depth += 1;
            }
            ']' => {
                if depth == 0 {
                    let end = expr[i..]
                        .find([',', ' ', '\t'])
                        .map_or(expr.len(), |e| i + e);
                    return Err(err(&expr[start..end], "']' without a matching '['"));
                }
                depth -= 1;
            }
            ',' | ' ' | '\t' if depth == 0 => {
                if i > start {
                    items.push(&expr[start..i]);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth > 0 {
        return Err(err(&expr[start..], "'[' is never closed"));
    }
    if expr.len() > start {
        items.push(&expr[start..]);
    }
    Ok(items)
}

fn parse_number(item: &str, text: &str) -> Result<u64, HostlistError> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(err(
            item,
            format!("'{text}' is not a number (ranges look like [1-4,7])"),
        ));
    }
    text.parse()
        .map_err(|_| err(item, format!("number '{text}' is too large")))
}

/// Parses the inside of one bracket group: `1,3,5-7`.
fn parse_ranges(item: &str, inside: &str) -> Result<Vec<Range>, HostlistError> {
    if inside.is_empty() {
        return Err(err(item, "empty brackets '[]'"));
    }
    inside
        .split(',')
        .map(|part| {
            if part.is_empty() {
                return Err(err(item, "empty element in brackets (stray ',')"));
            }
            let (lo_text, hi_text) = part.split_once('-').unwrap_or((part, part));
            let lo = parse_number(item, lo_text)?;
            let hi = parse_number(item, hi_text)?;
            if hi < lo {
                return Err(err(item, format!("range '{part}' is reversed")));
            }
            if hi - lo + 1 > MAX_RANGE_HOSTS {
                return Err(err(
                    item,
                    format!("range '{part}' has more than {MAX_RANGE_HOSTS} hosts"),
                ));
            }
            Ok(Range {
                lo,
                hi,
                width: lo_text.len(),
            })
        })
        .collect()
}

/// An item split into literal texts and bracket groups: `texts[0] [g0] texts[1] [g1] ... texts[n]`.
struct Pattern<'a> {
    texts: Vec<&'a str>,
    groups: Vec<Vec<Range>>,
}

fn parse_item(item: &str) -> Result<Pattern<'_>, HostlistError> {
    let mut texts = Vec::new();
    let mut groups = Vec::new();
    let mut rest = item;
    while let Some(open) = rest.find('[') {
        let close = open + rest[open..].find(']').expect("balanced by split_items");
        texts.push(&rest[..open]);
        groups.push(parse_ranges(item, &rest[open + 1..close])?);
        rest = &rest[close + 1..];
    }
    texts.push(rest);
    Ok(Pattern { texts, groups })
}

fn count(ranges: &[Range]) -> u64 {
    ranges.iter().map(|r| r.hi - r.lo + 1).sum()
}

fn values(ranges: &[Range]) -> impl Iterator<Item = (u64, usize)> + '_ {
    ranges
        .iter()
        .flat_map(|r| (r.lo..=r.hi).map(move |v| (v, r.width)))
}

/// The order in which bracket groups are iterated, outermost first (Slurm's recursion).
fn group_order(n: usize) -> Vec<usize> {
    match n {
        0 => vec![],
        _ => (0..n - 1).rev().chain(std::iter::once(n - 1)).collect(),
    }
}

fn expand_pattern(
    item: &str,
    pattern: &Pattern,
    out: &mut Vec<String>,
) -> Result<(), HostlistError> {
    let total = pattern
        .groups
        .iter()
        .try_fold(1u64, |acc, g| acc.checked_mul(count(g)))
        .filter(|&t| t <= MAX_TOTAL_HOSTS)
        .ok_or_else(|| {
            err(
                item,
                format!("expands to more than {MAX_TOTAL_HOSTS} hosts"),
            )
        })?;
    if out.len() as u64 + total > MAX_TOTAL_HOSTS {
        return Err(err(
            item,
            format!("the list expands to more than {MAX_TOTAL_HOSTS} hosts"),
        ));
    }
    out.reserve(total as usize);
    let order = group_order(pattern.groups.len());
    let mut chosen = vec![(0u64, 0usize); pattern.groups.len()];
    fill(pattern, &order, 0, &mut chosen, out);
    Ok(())
}

fn fill(
    pattern: &Pattern,
    order: &[usize],
    level: usize,
    chosen: &mut [(u64, usize)],
    out: &mut Vec<String>,
) {
    if level == order.len() {
        let mut host = String::with_capacity(32);
        for (i, text) in pattern.texts.iter().enumerate() {
            host.push_str(text);
            if let Some(&(value, width)) = chosen.get(i) {
                let _ = write!(host, "{value:0width$}");
            }
        }
        out.push(host);
        return;
    }
    let group = order[level];
    for choice in values(&pattern.groups[group]) {
        chosen[group] = choice;
        fill(pattern, order, level + 1, chosen, out);
    }
}

/// Expands a hostlist expression into hosts, in Slurm's order, duplicates kept.
pub fn expand(expr: &str) -> Result<Vec<String>, HostlistError> {
    let mut out = Vec::new();
    for item in split_items(expr)? {
        let pattern = parse_item(item)?;
        expand_pattern(item, &pattern, &mut out)?;
    }
    Ok(out)
}

/// A host name split into a prefix and an optional numeric suffix with its width.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HostName<'a> {
    prefix: &'a str,
    number: Option<(u64, usize)>,
}

fn split_host(host: &str) -> HostName<'_> {
    let digits = host.bytes().rev().take_while(u8::is_ascii_digit).count();
    let (prefix, suffix) = host.split_at(host.len() - digits);
    match suffix.parse::<u64>() {
        Ok(n) if digits > 0 && digits <= 18 => HostName {
            prefix,
            number: Some((n, digits)),
        },
        _ => HostName {
            prefix: host,
            number: None,
        },
    }
}

fn leading_zeros(n: u64, width: usize) -> usize {
    width.saturating_sub(n.to_string().len())
}

/// Slurm's `_width_equiv`: whether two padded numbers can share one range, and which width.
fn common_width(n: u64, wn: usize, m: u64, wm: usize) -> Option<usize> {
    if wn == wm {
        return Some(wn);
    }
    let n_own = leading_zeros(n, wn) == leading_zeros(n, wm);
    let m_own = leading_zeros(m, wm) == leading_zeros(m, wn);
    match (n_own, m_own) {
        (false, true) => Some(wn),
        (true, _) => Some(wm),
        (false, false) => None,
    }
}

/// One compressed run: a prefix with consecutive numbers, or a host with no number.
#[derive(Debug, Clone)]
struct Run<'a> {
    prefix: &'a str,
    range: Option<Range>,
}

fn push_host<'a>(runs: &mut Vec<Run<'a>>, host: &'a str) {
    let name = split_host(host);
    if let (Some(last), Some((n, w))) = (runs.last_mut(), name.number) {
        if let Some(r) = last.range.as_mut() {
            if last.prefix == name.prefix && r.hi.checked_add(1) == Some(n) {
                if let Some(width) = common_width(r.lo, r.width, n, w) {
                    r.hi = n;
                    r.width = width;
                    return;
                }
            }
        }
    }
    runs.push(Run {
        prefix: name.prefix,
        range: name.number.map(|(n, width)| Range {
            lo: n,
            hi: n,
            width,
        }),
    });
}

fn render(runs: &[Run]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < runs.len() {
        if !out.is_empty() {
            out.push(',');
        }
        let run = &runs[i];
        out.push_str(run.prefix);
        let Some(first) = run.range else {
            i += 1;
            continue;
        };
        let mut j = i + 1;
        while j < runs.len() && runs[j].prefix == run.prefix && runs[j].range.is_some() {
            j += 1;
        }
        let bracket = j - i > 1 || first.lo != first.hi;
        if bracket {
            out.push('[');
        }
        for (k, r) in runs[i..j].iter().filter_map(|r| r.range).enumerate() {
            if k > 0 {
                out.push(',');
            }
            let w = r.width;
            let _ = write!(out, "{:0w$}", r.lo);
            if r.hi != r.lo {
                let _ = write!(out, "-{:0w$}", r.hi);
            }
        }
        if bracket {
            out.push(']');
        }
        i = j;
    }
    out
}

/// Compresses hosts in list order, as `scontrol show hostlist`.
pub fn compress<S: AsRef<str>>(hosts: &[S]) -> String {
    let mut runs = Vec::new();
    for h in hosts {
        push_host(&mut runs, h.as_ref());
    }
    render(&runs)
}

/// Natural order of prefixes (digit runs compare as numbers), as Slurm's `strnatcmp`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, _) => return Ordering::Less,
            (_, None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(d: &[u8]) -> &[u8] {
    let z = d.iter().take_while(|&&c| c == b'0').count();
    &d[z..]
}

fn host_order(a: &HostName, b: &HostName) -> Ordering {
    natural_cmp(a.prefix, b.prefix).then_with(|| match (a.number, b.number) {
        (None, None) => Ordering::Equal,
        (None, Some(_)) => Ordering::Less,
        (Some(_), None) => Ordering::Greater,
        (Some((n, wn)), Some((m, wm))) => match common_width(n, wn, m, wm) {
            Some(_) => n.cmp(&m),
            None => wn.cmp(&wm),
        },
    })
}

/// Compresses hosts after sorting them, as `scontrol show hostlistsorted`.
pub fn compress_sorted<S: AsRef<str>>(hosts: &[S]) -> String {
    let mut named: Vec<(&str, HostName)> = hosts
        .iter()
        .map(|h| (h.as_ref(), split_host(h.as_ref())))
        .collect();
    named.sort_by(|a, b| host_order(&a.1, &b.1));
    let sorted: Vec<&str> = named.into_iter().map(|(h, _)| h).collect();
    compress(&sorted)
}

/// A tasks-per-node string that cannot be read.
#[derive(Debug, Error, PartialEq, Eq)]
#[error("invalid tasks-per-node '{0}': expected counts like '2(x3),1'")]
pub struct TasksPerNodeError(pub String);

/// Expands Slurm's tasks-per-node format: `2(x3),1` gives `[2, 2, 2, 1]`.
pub fn expand_tasks_per_node(text: &str) -> Result<Vec<u32>, TasksPerNodeError> {
    let bad = || TasksPerNodeError(text.to_string());
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.is_empty()) {
        let (count, repeat) = match part.split_once("(x") {
            Some((c, r)) => (
                c,
                r.strip_suffix(')')
                    .ok_or_else(bad)?
                    .parse::<usize>()
                    .map_err(|_| bad())?,
            ),
            None => (part, 1),
        };
        let count: u32 = count.parse().map_err(|_| bad())?;
        if repeat == 0 || out.len() + repeat > MAX_TOTAL_HOSTS as usize {
            return Err(bad());
        }
        out.extend(std::iter::repeat_n(count, repeat));
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Compresses per-node task counts into Slurm's format: `[2, 2, 2, 1]` gives `2(x3),1`.
pub fn compress_tasks_per_node(counts: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < counts.len() {
        let run = counts[i..].iter().take_while(|&&c| c == counts[i]).count();
        parts.push(match run {
            1 => counts[i].to_string(),
            _ => format!("{}(x{run})", counts[i]),
        });
        i += run;
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vectors(name: &str) -> Vec<Vec<String>> {
        let path = format!("{}/tests/data/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .lines()
            .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    }

    #[test]
    fn expand_matches_scontrol_vectors() {
        let rows = vectors("hostlist-expand.tsv");
        assert!(rows.len() > 30);
        for row in rows {
            let got = expand(&row[0]);
            if row[1] == "ERROR" {
                assert!(
                    got.is_err(),
                    "{:?} should be rejected, got {:?}",
                    row[0],
                    got
                );
            } else {
                let want: Vec<&str> = row[1].split(' ').collect();
                assert_eq!(got.unwrap(), want, "input {:?}", row[0]);
            }
        }
    }

    #[test]
    fn compress_matches_scontrol_vectors() {
        let rows = vectors("hostlist-compress.tsv");
        assert!(rows.len() > 20);
        for row in rows {
            let hosts = expand(&row[0]).unwrap();
            assert_eq!(compress(&hosts), row[1], "list order of {:?}", row[0]);
            assert_eq!(compress_sorted(&hosts), row[2], "sorted {:?}", row[0]);
        }
    }

    #[test]
    fn three_groups_follow_slurm_recursion_order() {
        let got = expand("a[1-2]b[1-2]c[1-2]").unwrap();
        let want = [
            "a1b1c1", "a1b1c2", "a2b1c1", "a2b1c2", "a1b2c1", "a1b2c2", "a2b2c1", "a2b2c2",
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn suffix_after_last_bracket_is_kept() {
        assert_eq!(
            expand("node[1-3]-ib").unwrap(),
            ["node1-ib", "node2-ib", "node3-ib"]
        );
        assert_eq!(
            expand("node[1-2].ib,x").unwrap(),
            ["node1.ib", "node2.ib", "x"]
        );
    }

    #[test]
    fn errors_name_the_offending_item() {
        let e = expand("good[1-2],bad[3-1]").unwrap_err();
        assert_eq!(e.item, "bad[3-1]");
        assert!(e.to_string().contains("reversed"), "{e}");
        let e = expand("n[1-2").unwrap_err();
        assert!(e.to_string().contains("never closed"), "{e}");
        let e = expand("n[0-99999]").unwrap_err();
        assert!(e.to_string().contains("more than 65536"), "{e}");
        let e = expand("a[0-60000]b[0-60000]c[0-60000]").unwrap_err();
        assert!(e.to_string().contains("more than"), "{e}");
    }

    #[test]
    fn padding_comes_from_low_bound() {
        assert_eq!(expand("node[1-010]").unwrap().len(), 10);
        assert_eq!(expand("node[1-010]").unwrap()[9], "node10");
    }

    #[test]
    fn tasks_per_node_round_trip() {
        assert_eq!(expand_tasks_per_node("2(x3),1").unwrap(), [2, 2, 2, 1]);
        assert_eq!(expand_tasks_per_node("8").unwrap(), [8]);
        assert_eq!(compress_tasks_per_node(&[2, 2, 2, 1]), "2(x3),1");
        assert_eq!(compress_tasks_per_node(&[1, 2, 1]), "1,2,1");
        for bad in ["", "x", "2(x0)", "2(x3", "-1", "2(y3)"] {
            assert!(expand_tasks_per_node(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn compress_then_expand_gives_the_list(
            hosts in proptest::collection::vec("(node|gpu|n)(0|00)?[0-9]{1,3}(-ib)?|login", 0..40)
        ) {
            let back = expand(&compress(&hosts)).unwrap();
            proptest::prop_assert_eq!(back, hosts);
        }

        #[test]
        fn expand_compress_expand_is_stable(
            lo in 0u64..200, len in 0u64..50, lo2 in 0u64..9, width in 1usize..4
        ) {
            let expr = format!("r[{lo:0width$}-{:0width$}]x[{lo2}-9]", lo + len);
            let once = expand(&expr).unwrap();
            let twice = expand(&compress(&once)).unwrap();
            proptest::prop_assert_eq!(&once, &twice);
            let sorted = expand(&compress_sorted(&once)).unwrap();
            proptest::prop_assert_eq!(sorted.len(), once.len());
        }
    }
}
