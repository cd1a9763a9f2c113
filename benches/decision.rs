//! Cost of one decision (route + authorize) over the shipped rules, for the
//! request mix of `sample-requests.tsv` (one request per client-server
//! endpoint, with realistic encodings) and three kinds of token.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use http::Method;
use scopegate::scopes::{RuleSet, ScopeSet};

fn requests() -> Vec<(Method, String)> {
    include_str!("../tests/data/sample-requests.tsv")
        .lines()
        .skip(1)
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            (cols[0].parse().unwrap(), cols[2].to_owned())
        })
        .collect()
}

fn tokens() -> [(&'static str, ScopeSet); 3] {
    [
        (
            "full",
            ScopeSet::from_space_separated(
                "openid urn:matrix:client:api:* urn:matrix:client:device:ABCDEFGHIJ",
            ),
        ),
        (
            "widget",
            ScopeSet::from_space_separated(
                "org.matrix.msc2762.timeline:!31hneApxJ_1o-63DmFrpeqnkFfWppnzWso1JvH3ogLM \
                 org.matrix.msc2762.send.event:m.room.message \
                 org.matrix.msc2762.send.event:m.reaction \
                 org.matrix.msc2762.receive.event:m.room.message \
                 org.matrix.msc2762.send.state_event:m.room.member#@bob:matrix.org \
                 org.matrix.msc4039.upload_file urn:matrix:client:device:WIDGETDEV1",
            ),
        ),
        (
            "bot",
            ScopeSet::from_space_separated("scopegate:messaging scopegate:media"),
        ),
    ]
}

fn decision(c: &mut Criterion) {
    let rules = RuleSet::builtin();
    let requests = requests();
    let tokens = tokens();
    let mut group = c.benchmark_group("decision");

    for (name, token) in &tokens {
        let mut i = 0;
        group.bench_function(*name, |b| {
            b.iter(|| {
                let (method, path) = &requests[i % requests.len()];
                i += 1;
                let route = rules.route(black_box(method), black_box(path));
                black_box(rules.authorize(&route, token))
            })
        });
    }

    // Every request with every token, interleaved.
    let mix: Vec<(&Method, &str, &ScopeSet)> = requests
        .iter()
        .flat_map(|(m, p)| tokens.iter().map(move |(_, t)| (m, p.as_str(), t)))
        .collect();
    let mut i = 0;
    group.bench_function("mix", |b| {
        b.iter(|| {
            let (method, path, token) = mix[i % mix.len()];
            i += 1;
            let route = rules.route(black_box(method), black_box(path));
            black_box(rules.authorize(&route, token))
        })
    });

    let mut i = 0;
    group.bench_function("route_only", |b| {
        b.iter(|| {
            let (method, path) = &requests[i % requests.len()];
            i += 1;
            black_box(rules.route(black_box(method), black_box(path)).rule_line())
        })
    });
    group.finish();

    c.bench_function("load/builtin", |b| b.iter(RuleSet::builtin));
}

criterion_group!(benches, decision);
criterion_main!(benches);
