//! An OpenID issuer in the same process, for `scopegate demo` and the tests:
//! freshly generated keys (RS256, ES256, EdDSA), a discovery document and a
//! JWKS on a loopback port, and real signed access tokens. The gateway checks
//! them with exactly the production code path: discovery, JWKS, signature.
//!
//! The knobs tests need (key rotation, counting JWKS fetches, taking the
//! issuer down) are here too, as a real provider would behave under them.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::signature::{EcdsaKeyPair, Ed25519KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use jsonwebtoken::jwk::{Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, AlgorithmFamily, EncodingKey, Header};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::config::{AuthSettings, JwtConfig};

/// The `aud` the demo issuer puts in its tokens.
pub const DEMO_AUDIENCE: &str = "scopegate-demo";

pub struct DemoIssuer {
    issuer: String,
    state: Arc<State>,
    server: JoinHandle<()>,
}

struct State {
    issuer: String,
    keys: RwLock<Vec<SigningKey>>,
    jwks_fetches: AtomicUsize,
    available: AtomicBool,
    next_kid: AtomicUsize,
}

struct SigningKey {
    kid: String,
    family: AlgorithmFamily,
    encoding: EncodingKey,
    jwk: Value,
}

impl DemoIssuer {
    /// Generates the keys and starts serving on `127.0.0.1`, port chosen by the OS.
    pub async fn start() -> std::io::Result<DemoIssuer> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
        let issuer = format!("http://{}", listener.local_addr()?);
        let state = Arc::new(State {
            issuer: issuer.clone(),
            keys: RwLock::new(Vec::new()),
            jwks_fetches: AtomicUsize::new(0),
            available: AtomicBool::new(true),
            next_kid: AtomicUsize::new(1),
        });
        for alg in [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA] {
            let key = state.generate(alg);
            state.keys.write().expect("key lock").push(key);
        }
        let server = tokio::spawn(serve(listener, state.clone()));
        Ok(DemoIssuer {
            issuer,
            state,
            server,
        })
    }

    /// `http://127.0.0.1:PORT`, the `iss` of every token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `[auth]` settings that trust this issuer's JWTs and nothing else.
    pub fn settings(&self, server_name: &str) -> AuthSettings {
        AuthSettings {
            server_name: server_name.to_string(),
            issuer: Some(self.issuer.clone()),
            jwt: JwtConfig {
                enabled: true,
                audiences: vec![DEMO_AUDIENCE.to_string()],
                ..JwtConfig::default()
            },
            ..AuthSettings::default()
        }
    }

    /// An access token for `user` (a localpart or full user id) with
    /// space-separated `scope`, valid for `ttl`, signed RS256.
    pub fn access_token(&self, user: &str, scope: &str, ttl: Duration) -> String {
        let now = unix_now();
        self.sign(
            Algorithm::RS256,
            &json!({
                "iss": self.issuer,
                "aud": DEMO_AUDIENCE,
                "sub": user,
                "client_id": "scopegate-demo-client",
                "scope": scope,
                "iat": now,
                "nbf": now,
                "exp": now + ttl.as_secs(),
                "jti": format!("demo-{}", self.state.next_kid.fetch_add(1, Ordering::Relaxed)),
            }),
        )
    }

    /// Signs arbitrary claims with the current key of `alg`'s family,
    /// header `typ: at+jwt` and that key's `kid`.
    pub fn sign(&self, alg: Algorithm, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.typ = Some("at+jwt".into());
        self.sign_with(header, claims)
    }

    /// Signs with the current key of `header.alg`'s family; the header is
    /// sent as given, except that a missing `kid` becomes the key's.
    pub fn sign_with(&self, mut header: Header, claims: &Value) -> String {
        let keys = self.state.keys.read().expect("key lock");
        let key = keys
            .iter()
            .find(|k| k.family == header.alg.family())
            .expect("the demo issuer has RSA, EC and Ed25519 keys only");
        header.kid.get_or_insert_with(|| key.kid.clone());
        jsonwebtoken::encode(&header, claims, &key.encoding).expect("signing with a generated key")
    }

    /// Replaces the key for `alg`'s family with a new one under a new `kid`;
    /// returns that kid. Tokens signed before no longer verify after a refetch.
    pub fn rotate(&self, alg: Algorithm) -> String {
        let key = self.state.generate(alg);
        let kid = key.kid.clone();
        let mut keys = self.state.keys.write().expect("key lock");
        keys.retain(|k| k.family != alg.family());
        keys.push(key);
        kid
    }

    /// The published JWKS, as served.
    pub fn jwks(&self) -> Value {
        self.state.jwks()
    }

    /// How many times the JWKS has been served.
    pub fn jwks_fetches(&self) -> usize {
        self.state.jwks_fetches.load(Ordering::SeqCst)
    }

    /// While down, every endpoint answers 503.
    pub fn set_available(&self, up: bool) {
        self.state.available.store(up, Ordering::SeqCst);
    }
}

impl Drop for DemoIssuer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl State {
    fn generate(&self, alg: Algorithm) -> SigningKey {
        let (encoding, family) = match alg.family() {
            AlgorithmFamily::Rsa => {
                let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
                    .expect("RSA key generation");
                let der = AsDer::<aws_lc_rs::encoding::Pkcs8V1Der>::as_der(&pair).expect("PKCS#8");
                let pem = pem("PRIVATE KEY", der.as_ref());
                (
                    EncodingKey::from_rsa_pem(pem.as_bytes()).expect("own RSA key"),
                    AlgorithmFamily::Rsa,
                )
            }
            AlgorithmFamily::Ec => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING)
                    .expect("P-256 key generation");
                let der = pair.to_pkcs8v1().expect("PKCS#8");
                (EncodingKey::from_ec_der(der.as_ref()), AlgorithmFamily::Ec)
            }
            AlgorithmFamily::Ed => {
                let pair = Ed25519KeyPair::generate().expect("Ed25519 key generation");
                let der = pair.to_pkcs8v1().expect("PKCS#8");
                (EncodingKey::from_ed_der(der.as_ref()), AlgorithmFamily::Ed)
            }
            AlgorithmFamily::Hmac => panic!("the demo issuer publishes public keys only"),
        };
        // Unique across issuers, so one issuer's kid is unknown to another.
        let mut salt = [0u8; 4];
        aws_lc_rs::rand::fill(&mut salt).expect("system randomness");
        let kid = format!(
            "demo-{}-{}",
            self.next_kid.fetch_add(1, Ordering::Relaxed),
            hex::encode(salt)
        );
        let mut jwk = Jwk::from_encoding_key(&encoding, alg).expect("public half of own key");
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        // Unpinned: the RSA key serves RS256 and PS256 alike.
        jwk.common.key_algorithm = None;
        SigningKey {
            kid,
            family,
            encoding,
            jwk: serde_json::to_value(jwk).expect("JWK serializes"),
        }
    }

    fn jwks(&self) -> Value {
        let keys = self.keys.read().expect("key lock");
        json!({ "keys": keys.iter().map(|k| k.jwk.clone()).collect::<Vec<_>>() })
    }

    fn respond(&self, path: &str) -> (StatusCode, Value) {
        if !self.available.load(Ordering::SeqCst) {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                json!({"error": "down for the test"}),
            );
        }
        match path {
            "/.well-known/openid-configuration" => (
                StatusCode::OK,
                json!({
                    "issuer": self.issuer,
                    "jwks_uri": format!("{}/jwks.json", self.issuer),
                    "response_types_supported": ["code"],
                    "subject_types_supported": ["public"],
                    "id_token_signing_alg_values_supported": ["RS256", "ES256", "EdDSA"],
                }),
            ),
            "/jwks.json" => {
                self.jwks_fetches.fetch_add(1, Ordering::SeqCst);
                (StatusCode::OK, self.jwks())
            }
            _ => (StatusCode::NOT_FOUND, json!({"error": "not found"})),
        }
    }
}

async fn serve(listener: TcpListener, state: Arc<State>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let (status, body) = state.respond(req.uri().path());
                let resp = Response::builder()
                    .status(status)
                    .header(http::header::CONTENT_TYPE, "application/json")
                    .body(Full::new(Bytes::from(body.to_string())))
                    .expect("static response parts");
                async move { Ok::<_, Infallible>(resp) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
