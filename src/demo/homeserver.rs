//! A tiny stand-in homeserver for the demo: just enough of the client API to
//! show requests passing through the gateway (versions, whoami, send, sync).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::TcpListener;

pub struct StubHomeserver {
    /// Token → user id, as the real homeserver would know them.
    users: HashMap<String, String>,
    timeline: Mutex<Vec<Value>>,
}

impl StubHomeserver {
    pub fn new(users: HashMap<String, String>) -> Arc<Self> {
        Arc::new(StubHomeserver {
            users,
            timeline: Mutex::new(Vec::new()),
        })
    }

    /// Serves on loopback until the process ends; returns the bound address.
    pub async fn start(self: Arc<Self>) -> std::io::Result<SocketAddr> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let hs = self.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| {
                        let hs = hs.clone();
                        async move { Ok::<_, Infallible>(hs.respond(req).await) }
                    });
                    let _ = http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(addr)
    }

    async fn respond(&self, req: Request<Incoming>) -> Response<Full<Bytes>> {
        let user = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| self.users.get(t))
            .cloned();
        let method = req.method().clone();
        let path = req.uri().path().to_owned();
        let segments: Vec<&str> = path.split('/').skip(1).collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["_matrix", "client", "versions"]) => {
                reply(StatusCode::OK, json!({"versions": ["v1.11", "v1.12"]}))
            }
            (&Method::GET, ["_matrix", "client", "v3", "account", "whoami"]) => match user {
                Some(user) => reply(StatusCode::OK, json!({"user_id": user})),
                None => unknown_token(),
            },
            (&Method::PUT, ["_matrix", "client", "v3", "rooms", room, "send", event_type, txn]) => {
                let Some(user) = user else {
                    return unknown_token();
                };
                let room = percent_encoding::percent_decode_str(room)
                    .decode_utf8_lossy()
                    .into_owned();
                let event_type = event_type.to_string();
                let event_id = format!("$demo-{txn}");
                let content: Value = match req.into_body().collect().await {
                    Ok(body) => serde_json::from_slice(&body.to_bytes()).unwrap_or(Value::Null),
                    Err(_) => Value::Null,
                };
                self.timeline.lock().expect("not poisoned").push(json!({
                    "room_id": room,
                    "type": event_type,
                    "sender": user,
                    "event_id": event_id,
                    "content": content,
                }));
                reply(StatusCode::OK, json!({"event_id": event_id}))
            }
            (&Method::GET, ["_matrix", "client", "v3", "sync"]) => {
                if user.is_none() {
                    return unknown_token();
                }
                let events = self.timeline.lock().expect("not poisoned").clone();
                let mut rooms = serde_json::Map::new();
                for event in events {
                    let room = event["room_id"].as_str().unwrap_or_default().to_string();
                    let entry = rooms
                        .entry(room)
                        .or_insert_with(|| json!({"timeline": {"events": []}}));
                    entry["timeline"]["events"]
                        .as_array_mut()
                        .expect("built above")
                        .push(event);
                }
                reply(
                    StatusCode::OK,
                    json!({"next_batch": "s1", "rooms": {"join": rooms}}),
                )
            }
            _ => reply(
                StatusCode::NOT_FOUND,
                json!({"errcode": "M_UNRECOGNIZED", "error": "Unrecognized request"}),
            ),
        }
    }
}

fn unknown_token() -> Response<Full<Bytes>> {
    reply(
        StatusCode::UNAUTHORIZED,
        json!({"errcode": "M_UNKNOWN_TOKEN", "error": "Unknown token"}),
    )
}

fn reply(status: StatusCode, body: Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}
