use super::*;

const MINIMAL: &str = r#"
[server]
listen = "127.0.0.1:8080"

[upstream]
url = "http://127.0.0.1:8008"

[auth]
server_name = "example.org"
"#;

fn parse(src: &str) -> Result<Config, ConfigError> {
    Config::parse(src, Path::new("/etc/scopegate/scopegate.toml"), [])
}

#[test]
fn minimal_config_takes_defaults() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.admin.listen, "127.0.0.1:9090".parse().unwrap());
    assert!(c.upstream.response_header_timeout() >= Duration::from_secs(300));
    assert!(c.server.allow_query_token);
    assert_eq!(c.base_dir, Path::new("/etc/scopegate"));
    assert_eq!(
        c.resolve(Path::new("scopes.toml")),
        Path::new("/etc/scopegate/scopes.toml")
    );
}

#[test]
fn unknown_key_names_its_line() {
    let src = MINIMAL.replace("[upstream]\n", "[upstream]\nurll = \"x\"\n");
    let e = parse(&src).unwrap_err();
    assert_eq!(e.mistakes[0].line, Some(6), "{e}");
    assert!(e.to_string().contains("urll"), "{e}");
}

#[test]
fn invalid_values_name_line_and_reason() {
    let e = parse(&MINIMAL.replace("http://127.0.0.1:8008", "ftp://x")).unwrap_err();
    assert_eq!(e.mistakes[0].line, Some(6));
    assert!(e.mistakes[0].message.contains("http:// or https://"), "{e}");

    let e = parse(&MINIMAL.replace("http://127.0.0.1:8008", "http://hs/base")).unwrap_err();
    assert!(e.mistakes[0].message.contains("path"), "{e}");

    let e = parse(&MINIMAL.replace("example.org", "exa mple")).unwrap_err();
    assert_eq!(e.mistakes[0].line, Some(9));

    let e = parse(&MINIMAL.replace("127.0.0.1:8080", "localhost")).unwrap_err();
    assert_eq!(e.mistakes[0].line, Some(3));
}

#[test]
fn cross_field_errors_point_at_the_key() {
    let src = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\ntls_cert = \"cert.pem\"",
    );
    let e = parse(&src).unwrap_err();
    assert_eq!(e.mistakes[0].line, Some(4), "{e}");
    assert!(e.mistakes[0].message.contains("tls_key"));
}

#[test]
fn trusted_proxies_accept_addresses_and_blocks() {
    let src = MINIMAL.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\ntrusted_proxies = [\"10.0.0.0/8\", \"::1\"]",
    );
    let c = parse(&src).unwrap();
    assert_eq!(c.server.trusted_proxies.len(), 2);
    assert!(c.server.trusted_proxies[1]
        .0
        .contains(&"::1".parse::<std::net::IpAddr>().unwrap()));
    assert!(parse(&src.replace("10.0.0.0/8", "ten")).is_err());
}

#[test]
fn environment_overrides_keys() {
    let env = [
        (
            "SCOPEGATE__UPSTREAM__URL".to_string(),
            "https://hs.internal".to_string(),
        ),
        (
            "SCOPEGATE__SERVER__MAX_CONNECTIONS".to_string(),
            "7".to_string(),
        ),
        ("UNRELATED".to_string(), "x".to_string()),
    ];
    let c = Config::parse(MINIMAL, Path::new("c.toml"), env).unwrap();
    assert!(c.upstream.url.is_https());
    assert_eq!(c.server.max_connections, 7);

    let env = [(
        "SCOPEGATE__SERVER__MAX_CONNECTIONS".to_string(),
        "many".to_string(),
    )];
    let e = Config::parse(MINIMAL, Path::new("c.toml"), env).unwrap_err();
    assert!(
        e.mistakes[0]
            .message
            .contains("SCOPEGATE__SERVER__MAX_CONNECTIONS"),
        "{e}"
    );
}

#[test]
fn static_tokens_hold_digests() {
    let src = format!(
        "{MINIMAL}\n[[auth.static]]\ntoken_sha256 = \"{}\"\nuser_id = \"@bot:example.org\"\nscopes = [\"urn:matrix:client:api:*\"]\n",
        "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
    );
    let c = parse(&src).unwrap();
    assert_eq!(c.auth.static_tokens.len(), 1);
    let e = parse(&src.replace("9f86", "zz86")).unwrap_err();
    assert_eq!(e.mistakes[0].line, Some(12), "{e}");
}

/// Checks that once needed the network stack or a secret file to run
/// (JWT, introspection, relay) are reported at load, all at once, each at
/// the line of its key or of its section.
#[test]
fn every_mistake_is_reported_with_its_line() {
    let src = format!(
        "{MINIMAL}issuer = \"http://id.example.org\"\n\
         \n[auth.jwt]\nenabled = true\nalgorithms = [\"HS256\"]\n\
         \n[auth.introspection]\nenabled = true\nauth_method = \"client_secret_post\"\n\
         client_secret = \"x\"\n\
         \n[auth.rate_limit]\nburst = 0\n\
         \n[cache]\nmax_ttl_s = 90000\n\
         \n[relay]\nlisten = \"127.0.0.1:9090\"\nsecret = \"short\"\n"
    );
    let e = parse(&src).unwrap_err();
    let found: Vec<(Option<usize>, &str)> = e
        .mistakes
        .iter()
        .map(|m| (m.line, m.message.as_str()))
        .collect();
    let expect = [
        // The key's own line…
        (10, "[auth] issuer: `http://id.example.org` must use https"),
        // …its section's header when the key is missing…
        (12, "[auth.jwt] audiences: must name the audience"),
        (
            14,
            "[auth.jwt] algorithms: lists an HS* algorithm but no hmac_secret",
        ),
        (16, "[auth.introspection] client_id: is required"),
        (
            16,
            "[auth.introspection] endpoint: is required without [auth] issuer",
        ),
        (
            22,
            "[auth.rate_limit] burst: burst and per_minute must be at least 1",
        ),
        // …and the parent section's key when the section is missing.
        (
            25,
            "[cache.revocations] max_ttl_s: (86400) must be at least [cache] max_ttl_s (90000)",
        ),
        (29, "[relay] secret: use at least 16 characters"),
        (
            28,
            "[relay] listen: must differ from the public and admin listeners",
        ),
    ];
    assert_eq!(found.len(), expect.len(), "{e}");
    for ((line, message), (want_line, want)) in found.iter().zip(expect) {
        assert!(
            message.starts_with(want),
            "{message} should start with {want}"
        );
        assert_eq!(*line, Some(want_line), "{message}");
    }
    // One `file:line: message` line per mistake.
    assert_eq!(e.to_string().lines().count(), expect.len());
    assert!(e
        .to_string()
        .starts_with("/etc/scopegate/scopegate.toml:10: [auth] issuer"));
}

#[test]
fn a_key_is_found_in_its_own_section() {
    let src = "[server]\nlisten = \"127.0.0.1:1\"\n[admin]\nlisten = \"127.0.0.1:1\"\n";
    assert_eq!(find_key_line(src, "admin", "listen"), Some(4));
    assert_eq!(find_key_line(src, "server", "listen"), Some(2));
    assert_eq!(find_key_line(src, "relay", "listen"), None);
    assert_eq!(find_key_line(src, "admin", "missing"), Some(3));
    assert_eq!(find_key_line(src, "admin.sub", "listen"), Some(4));
}
