//! Test data shared by the integration tests: the endpoint catalog, read
//! from the copies in `tests/data`.

pub struct Row {
    pub method: http::Method,
    pub template: String,
    pub auth: String,
    pub example: String,
    /// Version segments Synapse routes to the same servlet, if any.
    pub synapse_versions: Vec<String>,
}

fn tsv(src: &str) -> impl Iterator<Item = Vec<&str>> {
    src.lines().skip(1).map(|l| l.split('\t').collect())
}

pub fn rows() -> Vec<Row> {
    let catalog = tsv(include_str!("../data/client-server.tsv"));
    let samples = tsv(include_str!("../data/sample-requests.tsv"));
    let prefixes = tsv(include_str!("../data/synapse-prefixes.tsv"));
    let rows: Vec<Row> = catalog
        .zip(samples)
        .zip(prefixes)
        .map(|((c, s), p)| {
            assert_eq!(
                (c[0], c[1]),
                (s[0], s[1]),
                "catalog and samples out of step"
            );
            assert_eq!(
                (c[0], c[1]),
                (p[0], p[1]),
                "catalog and prefixes out of step"
            );
            let synapse_versions = match p[2] {
                "n/a" | "not-registered" | "unversioned" => Vec::new(),
                list => list.split(',').map(str::to_owned).collect(),
            };
            Row {
                method: c[0].parse().unwrap(),
                template: c[1].to_owned(),
                auth: c[3].to_owned(),
                example: s[2].to_owned(),
                synapse_versions,
            }
        })
        .collect();
    assert_eq!(rows.len(), 166);
    rows
}

/// The API prefix and version segment of a spec path:
/// `/_matrix/client/v3/sync` → `("/_matrix/client/", "v3")`.
pub fn split_version(path: &str) -> Option<(&'static str, &str)> {
    ["/_matrix/client/", "/_matrix/media/"]
        .into_iter()
        .find_map(|prefix| {
            let rest = path.strip_prefix(prefix)?;
            let (version, _) = rest.split_once('/')?;
            Some((prefix, version))
        })
}

/// The path with its version segment replaced.
pub fn with_version(path: &str, version: &str) -> String {
    let (prefix, old) = split_version(path).expect("versioned path");
    format!("{prefix}{version}{}", &path[prefix.len() + old.len()..])
}
