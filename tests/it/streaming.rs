//! Bodies stream through the gateway in both directions: each test holds
//! back the rest of a 50 MB body until the far side has seen the first
//! megabyte, which can only happen if nothing buffers the whole body.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Request;
use http_body::Body;
use http_body_util::BodyExt;
use tokio::sync::{oneshot, Mutex};

use crate::support::*;

const MIB: usize = 1024 * 1024;
const TOTAL: usize = 50 * MIB;
const CHUNK: usize = 64 * 1024;

async fn pump(tx: &tokio::sync::mpsc::Sender<Bytes>, bytes: usize) {
    let chunk = Bytes::from(vec![b'x'; CHUNK]);
    for _ in 0..bytes / CHUNK {
        tx.send(chunk.clone()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_upload_streams() {
    let (first_mib_tx, first_mib_rx) = oneshot::channel::<()>();
    let first_mib_tx = Arc::new(Mutex::new(Some(first_mib_tx)));
    let upstream = stub(move |req| {
        let signal = first_mib_tx.clone();
        async move {
            if req.uri().path() == "/_matrix/client/versions" {
                return json_response(200, "{}");
            }
            let mut body = req.into_body();
            let mut seen = 0usize;
            while let Some(frame) = body.frame().await {
                if let Ok(data) = frame.unwrap().into_data() {
                    seen += data.len();
                    if seen >= MIB {
                        if let Some(tx) = signal.lock().await.take() {
                            let _ = tx.send(());
                        }
                    }
                }
            }
            json_response(200, &format!(r#"{{"received":{seen}}}"#))
        }
    })
    .await;
    let gate = GateBuilder::new().binary().start(upstream).await;

    let (tx, body) = channel_body();
    let req = Request::post("/_matrix/media/v3/upload")
        .header("authorization", format!("Bearer {FULL_TOKEN}"))
        .header("content-type", "application/octet-stream")
        .header("content-length", TOTAL.to_string())
        .body(body)
        .unwrap();
    let response = tokio::spawn(send(gate.addr, req));
    pump(&tx, MIB).await;
    tokio::time::timeout(Duration::from_secs(10), first_mib_rx)
        .await
        .expect("the upstream saw the first megabyte while the rest was held back")
        .unwrap();
    pump(&tx, TOTAL - MIB).await;
    drop(tx);
    let (parts, body) = response.await.unwrap();
    assert_eq!(parts.status, 200);
    assert_eq!(json(&body)["received"], TOTAL);
    let peak = gate.peak_rss_kib();
    assert!(
        peak < 40 * 1024,
        "gateway peak RSS {peak} KiB for a 50 MB body"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_megabyte_download_streams() {
    let (client_has_first_tx, client_has_first_rx) = oneshot::channel::<()>();
    let gate_rx = Arc::new(Mutex::new(Some(client_has_first_rx)));
    let upstream = stub(move |req| {
        let gate_rx = gate_rx.clone();
        async move {
            if req.uri().path() == "/_matrix/client/versions" {
                return json_response(200, "{}");
            }
            let (tx, body) = channel_body();
            let wait = gate_rx.lock().await.take().unwrap();
            tokio::spawn(async move {
                pump(&tx, MIB).await;
                if wait.await.is_ok() {
                    pump(&tx, TOTAL - MIB).await;
                }
            });
            http::Response::builder()
                .header("content-type", "application/octet-stream")
                .header("content-length", TOTAL.to_string())
                .body(body)
                .unwrap()
        }
    })
    .await;
    let gate = GateBuilder::new().binary().start(upstream).await;

    let req = Request::get("/_matrix/client/v1/media/download/example.org/abc")
        .header("authorization", format!("Bearer {FULL_TOKEN}"))
        .body(full(""))
        .unwrap();
    let response = send_streaming(gate.addr, req).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-length"], TOTAL.to_string());
    let mut body = response.into_body();
    let received = AtomicUsize::new(0);
    let mut signal = Some(client_has_first_tx);
    let read_all = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                let n = received.fetch_add(data.len(), Ordering::Relaxed) + data.len();
                if n >= MIB {
                    if let Some(tx) = signal.take() {
                        tx.send(()).unwrap();
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(60), read_all)
        .await
        .expect("the client got the first megabyte while the rest was held back");
    assert!(body.is_end_stream());
    assert_eq!(received.load(Ordering::Relaxed), TOTAL);
    let peak = gate.peak_rss_kib();
    assert!(
        peak < 40 * 1024,
        "gateway peak RSS {peak} KiB for a 50 MB body"
    );
}
