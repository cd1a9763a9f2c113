//! The compiled matcher: a trie over raw path segments.
//!
//! A lookup walks one segment at a time, so its cost follows the depth of the
//! path and the fan-out at each step (a binary search among literal
//! children), not the number of rules. Nothing is allocated: captures are
//! slices of the request path kept in a fixed array.
//!
//! **Precedence.** The most specific route wins, decided segment by segment
//! from the left: a literal beats a capture, a capture beats a tail, and a
//! route that ends where the path ends beats a tail that would match nothing.
//! Among routes of the same shape, one naming the request's method beats a
//! `*` route. The walk is depth-first in that order and backtracks, so a
//! literal route that lacks the request's method falls back to a capture or
//! tail route that has it.

use std::fmt;

use http::Method;

use super::compile::Rule;
use super::method::{self, MethodSet, KNOWN};
use super::path::Seg;
use super::Access;

/// Most captures a route may have (the API's deepest route has four).
pub const MAX_CAPTURES: usize = 8;

type RuleId = u32;

/// Rules that end at one node, by method.
#[derive(Default)]
struct Slot {
    methods: [Option<RuleId>; KNOWN.len()],
    any: Option<RuleId>,
}

impl Slot {
    fn get(&self, method: Option<usize>) -> Option<RuleId> {
        method.and_then(|m| self.methods[m]).or(self.any)
    }

    fn insert(&mut self, methods: MethodSet, rule: RuleId) {
        match methods {
            MethodSet::Any => {
                self.any.get_or_insert(rule);
            }
            MethodSet::Some(_) => {
                for m in methods.slots() {
                    self.methods[m].get_or_insert(rule);
                }
            }
        }
    }
}

#[derive(Default)]
struct Node {
    /// Literal children: (key, segment, child node).
    literals: Vec<(u32, Box<str>, u32)>,
    /// Open-addressed index into `literals` by key (entry = index + 1, 0 =
    /// empty), a power of two at least twice as long: one or two probes
    /// instead of a binary search over strings.
    table: Box<[u32]>,
    capture: Option<u32>,
    end: Slot,
    tail: Slot,
}

/// A cheap discriminator of a segment: length, first and last byte. Equal
/// keys are then told apart by comparing the segments.
fn key(seg: &[u8]) -> u32 {
    match seg {
        [] => 0,
        [first, .., last] | [first @ last] => {
            (seg.len().min(0xffff) as u32) << 16 | u32::from(*first) << 8 | u32::from(*last)
        }
    }
}

/// Byte equality without a libc call: segments are short.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let (mut a, mut b) = (a, b);
    while let (Some((x, ra)), Some((y, rb))) =
        (a.split_first_chunk::<8>(), b.split_first_chunk::<8>())
    {
        if x != y {
            return false;
        }
        (a, b) = (ra, rb);
    }
    a.iter().zip(b).all(|(x, y)| x == y)
}

impl Node {
    fn index(&mut self) {
        let size = (self.literals.len() * 2).next_power_of_two();
        let mut table = vec![0u32; size];
        for (i, (key, _, _)) in self.literals.iter().enumerate() {
            let mut at = slot_of(*key, size);
            while table[at] != 0 {
                at = (at + 1) & (size - 1);
            }
            table[at] = i as u32 + 1;
        }
        self.table = table.into();
    }

    fn literal(&self, seg: &str) -> Option<u32> {
        if self.table.is_empty() {
            return None;
        }
        let key = key(seg.as_bytes());
        let mut at = slot_of(key, self.table.len());
        loop {
            let entry = self.table[at];
            if entry == 0 {
                return None;
            }
            let (k, s, child) = &self.literals[entry as usize - 1];
            if *k == key && same(s.as_bytes(), seg.as_bytes()) {
                return Some(*child);
            }
            at = (at + 1) & (self.table.len() - 1);
        }
    }
}

fn slot_of(key: u32, size: usize) -> usize {
    (key.wrapping_mul(0x9e37_79b1) as usize) & (size - 1)
}

pub(crate) struct Trie {
    nodes: Vec<Node>,
}

impl Trie {
    /// Builds the trie. Conflicts were refused by `check`; if one slipped
    /// through, the earlier rule keeps the slot.
    pub(crate) fn build(rules: &[Rule]) -> Trie {
        let mut trie = Trie {
            nodes: vec![Node::default()],
        };
        for (id, rule) in rules.iter().enumerate() {
            let id = RuleId::try_from(id).expect("fewer than 2^32 rules");
            for pattern in &rule.patterns {
                trie.insert(pattern, rule.methods, id);
            }
        }
        for node in &mut trie.nodes {
            node.index();
        }
        trie
    }

    fn insert(&mut self, pattern: &[Seg], methods: MethodSet, rule: RuleId) {
        let mut at = 0usize;
        for seg in pattern {
            at = match seg {
                Seg::Tail => return self.nodes[at].tail.insert(methods, rule),
                Seg::Cap => match self.nodes[at].capture {
                    Some(next) => next as usize,
                    None => {
                        let next = self.push();
                        self.nodes[at].capture = Some(next as u32);
                        next
                    }
                },
                Seg::Lit(lit) => match self.nodes[at].literals.iter().find(|(_, s, _)| s == lit) {
                    Some(&(_, _, next)) => next as usize,
                    None => {
                        let next = self.push();
                        let entry = (key(lit.as_bytes()), lit.clone(), next as u32);
                        self.nodes[at].literals.push(entry);
                        next
                    }
                },
            };
        }
        self.nodes[at].end.insert(methods, rule);
    }

    fn push(&mut self) -> usize {
        self.nodes.push(Node::default());
        self.nodes.len() - 1
    }

    /// Finds the rule for `path` (which starts with `/`), filling `captures`.
    pub(crate) fn lookup<'p>(
        &self,
        method: &Method,
        path: &'p str,
        captures: &mut [&'p str; MAX_CAPTURES],
    ) -> Option<RuleId> {
        let rest = path.strip_prefix('/')?;
        self.walk(0, Some(rest), method::slot(method), captures, 0)
    }

    /// `rest` is the unconsumed path after a `/`, or `None` once the last
    /// segment is consumed.
    fn walk<'p>(
        &self,
        at: usize,
        rest: Option<&'p str>,
        method: Option<usize>,
        captures: &mut [&'p str; MAX_CAPTURES],
        depth: usize,
    ) -> Option<RuleId> {
        let node = &self.nodes[at];
        match rest {
            None => {
                if let Some(rule) = node.end.get(method) {
                    return Some(rule);
                }
            }
            Some(rest) => {
                let (seg, next) = match rest.bytes().position(|b| b == b'/') {
                    Some(i) => (&rest[..i], Some(&rest[i + 1..])),
                    None => (rest, None),
                };
                if let Some(child) = node.literal(seg) {
                    if let Some(rule) = self.walk(child as usize, next, method, captures, depth) {
                        return Some(rule);
                    }
                }
                // `{name}` may be empty only as the last segment.
                if let (Some(child), true) = (node.capture, !seg.is_empty() || next.is_none()) {
                    if depth < MAX_CAPTURES {
                        captures[depth] = seg;
                        if let Some(rule) =
                            self.walk(child as usize, next, method, captures, depth + 1)
                        {
                            return Some(rule);
                        }
                    }
                }
            }
        }
        let rule = node.tail.get(method)?;
        if depth < MAX_CAPTURES {
            captures[depth] = rest.unwrap_or("");
        }
        Some(rule)
    }
}

/// The rule a request matched, with its captured raw segments.
#[derive(Clone, Copy)]
pub struct RouteMatch<'r, 'p> {
    pub(crate) rule: Option<&'r Rule>,
    pub(crate) id: Option<RuleId>,
    pub(crate) captures: [&'p str; MAX_CAPTURES],
}

impl<'r, 'p> RouteMatch<'r, 'p> {
    pub fn access(&self) -> Access {
        self.rule.map_or(Access::Unmatched, |r| r.access)
    }

    /// The rule's path template, for metrics labels (bounded cardinality);
    /// `"unmatched"` when no rule matched.
    pub fn label(&self) -> &'r str {
        self.rule.map_or("unmatched", |r| r.path.as_str())
    }

    /// The rule's position in its rule set, below [`super::RuleSet::rule_count`].
    pub fn index(&self) -> Option<usize> {
        self.id.map(|id| id as usize)
    }

    pub fn rule_line(&self) -> Option<usize> {
        self.rule.map(|r| r.line)
    }

    /// Captured values by name, raw (still percent-encoded), in path order.
    pub fn captures(&self) -> impl Iterator<Item = (&'r str, &'p str)> + '_ {
        let names = self.rule.map_or(&[][..], |r| &r.captures[..]);
        names
            .iter()
            .zip(self.captures)
            .map(|(name, value)| (&**name, value))
    }

    /// The raw captured segment named `name`.
    pub fn capture(&self, name: &str) -> Option<&'p str> {
        self.captures().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub(crate) fn values(&self) -> &[&'p str] {
        let n = self.rule.map_or(0, |r| r.captures.len());
        &self.captures[..n]
    }
}

impl fmt::Debug for RouteMatch<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteMatch")
            .field("access", &self.access())
            .field("label", &self.label())
            .field("line", &self.rule_line())
            .field("captures", &self.captures().collect::<Vec<_>>())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use proptest::prelude::*;

    use super::super::RuleSet;
    use super::*;

    const RULES: &str = r#"
[[rule]]
routes = [
  "GET /a/{x}",
  "* /a/b",
  "PUT /a/b/{y}",
  "GET /a/{x}/c/{z}",
  "* /a/{rest..}",
  "GET /s/{k}/",
  "DELETE /s/{k}/{v}",
  "POST|PUT /s/{k}/{v}",
  "* /{all..}",
]
allow = ["s"]
"#;

    fn rules() -> RuleSet {
        RuleSet::parse(RULES, "t.toml").unwrap().rules
    }

    fn hit(rs: &RuleSet, method: Method, path: &str) -> (Option<usize>, Vec<String>) {
        let m = rs.route(&method, path);
        let caps = m.captures().map(|(_, v)| v.to_owned()).collect();
        (m.rule_line(), caps)
    }

    #[test]
    fn literal_beats_capture_beats_tail() {
        let rs = rules();
        assert_eq!(hit(&rs, Method::GET, "/a/b").0, Some(5));
        assert_eq!(hit(&rs, Method::GET, "/a/q"), (Some(4), vec!["q".into()]));
        assert_eq!(
            hit(&rs, Method::GET, "/a/q/r"),
            (Some(8), vec!["q/r".into()])
        );
        assert_eq!(hit(&rs, Method::GET, "/a"), (Some(8), vec!["".into()]));
        assert_eq!(hit(&rs, Method::GET, "/z/y").0, Some(12));
    }

    #[test]
    fn backtracks_when_the_specific_route_lacks_the_method_or_the_rest() {
        let rs = rules();
        assert_eq!(hit(&rs, Method::PUT, "/a/b/c"), (Some(6), vec!["c".into()]));
        // `/a/b/{y}` has no GET and no deeper routes: back to `/a/{x}/c/{z}`.
        assert_eq!(
            hit(&rs, Method::GET, "/a/b/c/d"),
            (Some(7), vec!["b".into(), "d".into()])
        );
        assert_eq!(
            hit(&rs, Method::GET, "/a/b/c"),
            (Some(8), vec!["b/c".into()])
        );
    }

    #[test]
    fn empty_capture_only_last() {
        let rs = rules();
        assert_eq!(hit(&rs, Method::GET, "/s/k/"), (Some(9), vec!["k".into()]));
        assert_eq!(
            hit(&rs, Method::DELETE, "/s/k/"),
            (Some(10), vec!["k".into(), "".into()])
        );
        assert_eq!(hit(&rs, Method::GET, "/a//c/d").0, Some(8));
    }

    #[test]
    fn head_is_get_and_extensions_take_any() {
        let rs = rules();
        assert_eq!(hit(&rs, Method::HEAD, "/a/q").0, Some(4));
        let purge = Method::from_bytes(b"PURGE").unwrap();
        assert_eq!(hit(&rs, purge, "/a/q").0, Some(8));
    }

    #[test]
    fn same_compares_bytes() {
        assert!(same(b"", b"") && same(b"_matrix", b"_matrix"));
        assert!(same(
            b"m.login.registration_token",
            b"m.login.registration_token"
        ));
        assert!(!same(
            b"m.login.registration_tokeN",
            b"m.login.registration_token"
        ));
        assert!(!same(b"abcdefgh1", b"abcdefgh2") && !same(b"ab", b"abc"));
    }

    #[test]
    fn unmatched_without_leading_slash() {
        let rs = rules();
        let m = rs.route(&Method::GET, "a/b");
        assert_eq!((m.access(), m.label()), (Access::Unmatched, "unmatched"));
    }

    // ---- reference matcher: a plain linear scan over every expanded route ----

    /// Rank of a pattern position: what the route has where the path has
    /// segment `i` (or has ended). Higher is more specific.
    fn rank(pattern: &[Seg], i: usize) -> u8 {
        match pattern.get(i) {
            None => 3,
            Some(Seg::Lit(_)) => 2,
            Some(Seg::Cap) => 1,
            Some(Seg::Tail) => 0,
        }
    }

    fn naive_match<'p>(pattern: &[Seg], segs: &[&'p str], rest: &'p str) -> Option<Vec<&'p str>> {
        let mut caps = Vec::new();
        let mut offset = 0;
        for (i, seg) in pattern.iter().enumerate() {
            match seg {
                Seg::Tail => {
                    caps.push(if i < segs.len() { &rest[offset..] } else { "" });
                    return Some(caps);
                }
                _ if i >= segs.len() => return None,
                Seg::Lit(l) if **l == *segs[i] => {}
                Seg::Lit(_) => return None,
                Seg::Cap if segs[i].is_empty() && i + 1 < segs.len() => return None,
                Seg::Cap => caps.push(segs[i]),
            }
            offset += segs[i].len() + 1;
        }
        (pattern.len() == segs.len()).then_some(caps)
    }

    fn reference<'p>(
        rs: &RuleSet,
        method: &Method,
        path: &'p str,
    ) -> Option<(usize, Vec<&'p str>)> {
        let rest = path.strip_prefix('/')?;
        let segs: Vec<&str> = rest.split('/').collect();
        let slot = method::slot(method);
        let mut best: Option<(Vec<u8>, bool, usize, Vec<&str>)> = None;
        for rule in &rs.rules {
            let specific = match rule.methods {
                MethodSet::Any => false,
                MethodSet::Some(_) if rule.methods.slots().any(|m| Some(m) == slot) => true,
                MethodSet::Some(_) => continue,
            };
            for pattern in &rule.patterns {
                let Some(caps) = naive_match(pattern, &segs, rest) else {
                    continue;
                };
                let key: Vec<u8> = (0..=segs.len()).map(|i| rank(pattern, i)).collect();
                let better = best
                    .as_ref()
                    .is_none_or(|(k, s, _, _)| (&key, specific) > (k, *s));
                if better {
                    best = Some((key, specific, rule.line, caps));
                }
            }
        }
        best.map(|(_, _, line, caps)| (line, caps))
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            4 => prop::sample::select(vec![
                "a", "b", "c", "s", "x", "_matrix", "client", "media", "v3", "r0", "v1", "api",
                "unstable", "rooms", "send", "state", "m.room.message", "profile", "user",
                "keys", "pushrules", "global", "%21r%3Ax", "!r:x", "",
            ])
            .prop_map(str::to_owned),
            1 => "[a-z%0-9:!@$.]{0,6}",
        ]
    }

    fn request() -> impl Strategy<Value = (Method, String)> {
        let method = prop::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
            Method::PATCH,
            Method::TRACE,
        ]);
        (method, prop::collection::vec(segment(), 1..9))
            .prop_map(|(m, segs)| (m, format!("/{}", segs.join("/"))))
    }

    fn shipped() -> &'static RuleSet {
        static SHIPPED: std::sync::OnceLock<RuleSet> = std::sync::OnceLock::new();
        SHIPPED.get_or_init(RuleSet::builtin)
    }

    /// Paths shaped like the shipped routes: a route's pattern with its
    /// captures filled, then perhaps cut short or extended.
    fn shipped_request() -> impl Strategy<Value = (Method, String)> {
        let patterns: Vec<Vec<Seg>> = shipped()
            .rules
            .iter()
            .flat_map(|r| r.patterns.iter().cloned())
            .collect();
        let method = prop::sample::select(vec![
            Method::GET,
            Method::HEAD,
            Method::PUT,
            Method::POST,
            Method::DELETE,
            Method::OPTIONS,
        ]);
        let fills = prop::collection::vec(segment(), 10);
        (method, prop::sample::select(patterns), fills, 0..4usize).prop_map(
            |(method, pattern, fills, edit)| {
                let mut fills = fills.into_iter().cycle();
                let mut segs: Vec<String> = Vec::new();
                for seg in &pattern {
                    match seg {
                        Seg::Lit(l) => segs.push(l.to_string()),
                        Seg::Cap => segs.push(fills.next().unwrap()),
                        Seg::Tail => segs.extend(fills.by_ref().take(edit)),
                    }
                }
                match edit {
                    1 => drop(segs.pop()),
                    2 => segs.push(fills.next().unwrap()),
                    _ => {}
                }
                (method, format!("/{}", segs.join("/")))
            },
        )
    }

    fn agree(rs: &RuleSet, method: &Method, path: &str) -> Result<(), TestCaseError> {
        let m = rs.route(method, path);
        let got = m.rule_line().map(|l| (l, m.values().to_vec()));
        prop_assert_eq!(got, reference(rs, method, path), "{} {}", method, path);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn trie_agrees_with_linear_scan_on_the_shipped_rules((method, path) in shipped_request()) {
            agree(shipped(), &method, &path)?;
        }

        #[test]
        fn trie_agrees_with_linear_scan_on_random_paths((method, path) in request()) {
            agree(shipped(), &method, &path)?;
        }

        #[test]
        fn trie_agrees_with_linear_scan_on_nested_overlaps((method, path) in request()) {
            agree(&rules(), &method, &path)?;
        }
    }
}
