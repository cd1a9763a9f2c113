//! The hot path (route + authorize) allocates nothing, allowed or denied.
//!
//! The counting allocator below is the whole test binary's: it counts only
//! on a thread that is measuring, and costs every other allocation one
//! thread-local read. Tests run one per thread, so no other test's
//! allocations are counted.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use scopegate::scopes::{Decision, RuleSet, ScopeSet};

use crate::catalog;

struct Counting;

thread_local! {
    /// Allocations on this thread while measuring (`None`: not measuring).
    /// Per thread, because the test harness allocates on its own threads.
    static ALLOCATIONS: Cell<Option<usize>> = const { Cell::new(None) };
}

fn count() {
    ALLOCATIONS.with(|c| c.set(c.get().map(|n| n + 1)));
}

/// Runs `f`, returning its result and how many allocations it made.
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATIONS.with(|c| c.set(Some(0)));
    let out = f();
    let n = ALLOCATIONS.with(|c| c.take()).unwrap_or_default();
    (out, n)
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn decide_all(rs: &RuleSet, requests: &[(http::Method, String)], tokens: &[ScopeSet]) -> usize {
    let mut allowed = 0;
    for (method, path) in requests {
        let route = rs.route(method, path);
        for token in tokens {
            if let Decision::Allow = rs.authorize(&route, token) {
                allowed += 1;
            }
        }
    }
    allowed
}

#[test]
fn route_and_authorize_do_not_allocate() {
    let rs = RuleSet::builtin();
    let requests: Vec<(http::Method, String)> = catalog::rows()
        .into_iter()
        .map(|r| (r.method, r.example))
        .chain([
            (
                http::Method::GET,
                "/_matrix/client/unstable/org.matrix.msc9999/x".into(),
            ),
            (http::Method::GET, "/nowhere".into()),
        ])
        .collect();
    let tokens: Vec<ScopeSet> = [
        "urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ",
        "org.matrix.msc2762.timeline:* org.matrix.msc2762.send.event:m.room.message \
         org.matrix.msc2762.send.state_event:m.room.member#@alice:example.org",
        "org.matrix.msc2762.timeline:!abc123:example.org org.matrix.msc4039.upload_file",
        "scopegate:messaging",
        "urn:matrix:client:device:ABC",
    ]
    .iter()
    .map(|s| ScopeSet::from_space_separated(s))
    .collect();

    let warm = decide_all(&rs, &requests, &tokens);
    let (allowed, allocations) = measure(|| decide_all(&rs, &requests, &tokens));

    assert_eq!(allowed, warm);
    // Both paths ran: some decisions allowed, some denied.
    assert!(allowed > requests.len() && allowed < requests.len() * tokens.len());
    assert_eq!(allocations, 0);
}

#[test]
fn the_counter_counts() {
    let (v, allocations) = measure(|| Vec::<u8>::with_capacity(std::hint::black_box(8)));
    drop(v);
    assert_eq!(allocations, 1);
}
