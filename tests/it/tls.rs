//! TLS termination: the gateway serves HTTPS from PEM files and offers h2
//! and http/1.1 by ALPN.

use std::sync::Arc;

use http::Request;
use http_body_util::BodyExt;
use rustls_pki_types::{CertificateDer, ServerName};

use crate::support::*;

#[tokio::test]
async fn https_with_h2_by_alpn() {
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let upstream = ok_stub().await;
    let gate = GateBuilder::new()
        .server("tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"")
        .file("cert.pem", cert.cert.pem())
        .file("key.pem", cert.signing_key.serialize_pem())
        .start(upstream)
        .await;

    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from(cert.cert.der().to_vec()))
        .unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));

    let tcp = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let tls = connector
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));

    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = Request::get("https://localhost/_matrix/client/v3/account/whoami")
        .header("authorization", format!("Bearer {FULL_TOKEN}"))
        .body(full(""))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.version(), http::Version::HTTP_2);
    assert_eq!(response.status(), 200);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], br#"{"ok":true}"#);

    // A plaintext client on the TLS port gets nothing served.
    let (parts, _) = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        let stream = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
        let io = hyper_util::rt::TokioIo::new(stream);
        match hyper::client::conn::http1::handshake::<_, TestBody>(io).await {
            Ok((mut sender, conn)) => {
                tokio::spawn(conn);
                match sender
                    .send_request(Request::get("/").body(full("")).unwrap())
                    .await
                {
                    Ok(r) => (Some(r.status()), ()),
                    Err(_) => (None, ()),
                }
            }
            Err(_) => (None, ()),
        }
    })
    .await
    .unwrap();
    assert_eq!(parts, None);
}
