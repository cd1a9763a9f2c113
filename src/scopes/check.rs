//! Static checks over the compiled routes, run on every load.
//!
//! Precedence (see `matcher`) already decides every request, so what is
//! reported is what an author most likely did not mean:
//!
//! * **unreachable**: two routes of the same shape (same literals, captures
//!   in the same places) whose methods overlap, except the one pair
//!   precedence orders on purpose (`GET` beside `*`). The later one never wins.
//! * **overlap**: two routes that can match the same request with different
//!   requirements where neither is contained in the other. Containment is the
//!   intended way to carve an exception out of a broader rule (a literal
//!   inside a capture, anything inside a tail rule); a crossing like
//!   `/a/{x}/c` against `/a/b/{y}` is an accident waiting to happen.

use std::collections::HashSet;

use super::compile::Rule;
use super::diag::Sink;
use super::method::MethodSet;
use super::path::Seg;

pub(crate) fn check(rules: &[Rule], sink: &mut Sink<'_>) {
    let patterns: Vec<(usize, &[Seg])> = rules
        .iter()
        .enumerate()
        .flat_map(|(i, r)| r.patterns.iter().map(move |p| (i, p.as_slice())))
        .collect();
    let mut reported = HashSet::new();

    for (n, &(i, a)) in patterns.iter().enumerate() {
        for &(j, b) in &patterns[n + 1..] {
            let (ra, rb) = (&rules[i], &rules[j]);
            if !ra.methods.intersects(rb.methods) || reported.contains(&(i, j)) {
                continue;
            }
            let one_any = (ra.methods == MethodSet::Any) != (rb.methods == MethodSet::Any);
            if a == b {
                if !one_any {
                    reported.insert((i, j));
                    let what = if i == j {
                        "lists the same version twice".to_owned()
                    } else {
                        format!("is already routed by line {}", ra.line)
                    };
                    sink.error_at_line(
                        rb.line,
                        format!("unreachable: `{} {}` {what}", rb.methods, rb.path),
                    );
                }
                continue;
            }
            if ra.same_requirement(rb) {
                continue;
            }
            let contained = |x: &Rule, px: &[Seg], y: &Rule, py: &[Seg]| {
                x.methods.is_subset_of(y.methods) && subset(px, py)
            };
            if contained(ra, a, rb, b) || contained(rb, b, ra, a) {
                continue;
            }
            if let Some(example) = witness(a, b) {
                reported.insert((i, j));
                sink.error_at_line(
                    rb.line,
                    format!(
                        "overlap: `{} {}` and line {} `{} {}` both match `{example}` with different requirements, and neither contains the other",
                        rb.methods, rb.path, ra.line, ra.methods, ra.path
                    ),
                );
            }
        }
    }
}

/// A path both patterns match, if any.
fn witness(a: &[Seg], b: &[Seg]) -> Option<String> {
    let mut out = Vec::new();
    if !meet(a, b, &mut out) {
        return None;
    }
    Some(format!("/{}", out.join("/")))
}

fn meet(a: &[Seg], b: &[Seg], out: &mut Vec<String>) -> bool {
    match (a.split_first(), b.split_first()) {
        (None, None) => true,
        (Some((Seg::Tail, _)), _) => {
            example(b, out);
            true
        }
        (_, Some((Seg::Tail, _))) => {
            example(a, out);
            true
        }
        (None, Some(_)) | (Some(_), None) => false,
        (Some((x, ra)), Some((y, rb))) => {
            let seg = match (x, y) {
                (Seg::Lit(p), Seg::Lit(q)) if p == q => p.to_string(),
                (Seg::Lit(_), Seg::Lit(_)) => return false,
                (Seg::Lit(p), _) | (_, Seg::Lit(p)) => p.to_string(),
                _ => "x".to_owned(),
            };
            out.push(seg);
            meet(ra, rb, out)
        }
    }
}

/// Some path the pattern matches.
fn example(p: &[Seg], out: &mut Vec<String>) {
    out.extend(p.iter().filter_map(|s| match s {
        Seg::Lit(l) => Some(l.to_string()),
        Seg::Cap => Some("x".to_owned()),
        Seg::Tail => None,
    }));
}

/// Does every path `a` matches also match `b`?
pub(crate) fn subset(a: &[Seg], b: &[Seg]) -> bool {
    match (a.split_first(), b.split_first()) {
        (_, Some((Seg::Tail, _))) => true,
        (None, None) => true,
        (None, Some(_)) | (Some(_), None) => false,
        (Some((x, ra)), Some((y, rb))) => {
            let ok = match (x, y) {
                (Seg::Tail, _) => false,
                (Seg::Lit(p), Seg::Lit(q)) => p == q,
                (Seg::Lit(_) | Seg::Cap, Seg::Cap) => true,
                (Seg::Cap, Seg::Lit(_)) => false,
                (_, Seg::Tail) => unreachable!("handled above"),
            };
            ok && subset(ra, rb)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn segs(s: &str) -> Vec<Seg> {
        s.split('/')
            .skip(1)
            .map(|p| match p {
                "*" => Seg::Cap,
                "**" => Seg::Tail,
                l => Seg::Lit(l.into()),
            })
            .collect()
    }

    #[test]
    fn containment() {
        assert!(subset(&segs("/a/b"), &segs("/a/*")));
        assert!(!subset(&segs("/a/*"), &segs("/a/b")));
        assert!(subset(&segs("/a/*/c"), &segs("/a/**")));
        assert!(subset(&segs("/a"), &segs("/a/**")));
        assert!(!subset(&segs("/a/**"), &segs("/a/*")));
        assert!(!subset(&segs("/a/b"), &segs("/a/b/c")));
    }

    #[test]
    fn witnesses_cross_overlaps() {
        assert_eq!(
            witness(&segs("/a/*/c"), &segs("/a/b/*")).as_deref(),
            Some("/a/b/c")
        );
        assert_eq!(
            witness(&segs("/a/**"), &segs("/a/*/d")).as_deref(),
            Some("/a/x/d")
        );
        assert_eq!(witness(&segs("/a/b"), &segs("/a/c")), None);
        assert_eq!(witness(&segs("/a/*"), &segs("/a/*/c")), None);
    }
}
