//! A fake Flagsmith on 127.0.0.1 (raw tokio, HTTP/1.1, one request per
//! connection): `GET /api/v1/flags/` and `POST /api/v1/identities/` in
//! Flagsmith's JSON shape, `401` unless `X-Environment-Key` is the test key.
//! It records every request it receives.

use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::KEY;

#[derive(Clone)]
pub(crate) enum Answer {
    /// A flag list: the body of `flags/`, or `flags` of an identities answer.
    Flags(Value),
    /// This status and body, whatever the request.
    Raw(u16, String),
    /// Read the request, never answer (the connection stays open).
    Hang,
}

#[derive(Debug, Clone)]
pub(crate) struct Received {
    pub method: String,
    pub path: String,
    pub key: Option<String>,
    pub body: Vec<u8>,
}

impl Received {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap()
    }
}

pub(crate) struct FakeFlagsmith {
    /// `http://127.0.0.1:PORT/api/v1/`.
    pub api_url: String,
    answer: Arc<Mutex<Answer>>,
    received: Arc<Mutex<Vec<Received>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeFlagsmith {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// One flag state as Flagsmith's `GET flags/` lists it.
pub(crate) fn flag(name: &str, enabled: bool) -> Value {
    json!({
        "id": 101,
        "feature": {
            "id": 7,
            "name": name,
            "created_date": "2026-01-05T10:00:00Z",
            "description": null,
            "initial_value": null,
            "default_enabled": false,
            "type": "STANDARD"
        },
        "feature_state_value": null,
        "environment": 3,
        "identity": null,
        "feature_segment": null,
        "enabled": enabled
    })
}

impl FakeFlagsmith {
    pub async fn start(answer: Answer) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}/api/v1/", listener.local_addr().unwrap());
        let answer = Arc::new(Mutex::new(answer));
        let received = Arc::new(Mutex::new(Vec::new()));
        let (answer_in, received_in) = (Arc::clone(&answer), Arc::clone(&received));
        let task = tokio::spawn(async move {
            // Hanging connections are kept open here until the server stops.
            let mut hanging = Vec::new();
            loop {
                let Ok((mut conn, _)) = listener.accept().await else {
                    return;
                };
                let Some(request) = read_request(&mut conn).await else {
                    continue;
                };
                received_in.lock().unwrap().push(request.clone());
                let answer = answer_in.lock().unwrap().clone();
                let (status, body) = match answer {
                    Answer::Hang => {
                        hanging.push(conn);
                        continue;
                    }
                    _ if request.key.as_deref() != Some(KEY) => (
                        401,
                        json!({"detail": "Invalid Environment Key"}).to_string(),
                    ),
                    Answer::Raw(status, body) => (status, body),
                    Answer::Flags(flags) => {
                        match (request.method.as_str(), request.path.as_str()) {
                            ("GET", "/api/v1/flags/") => (200, flags.to_string()),
                            ("POST", "/api/v1/identities/") => {
                                let identity = request.json();
                                let body = json!({
                                    "identifier": identity["identifier"],
                                    "flags": flags,
                                    "traits": identity["traits"],
                                });
                                (200, body.to_string())
                            }
                            _ => (404, json!({"detail": "Not found."}).to_string()),
                        }
                    }
                };
                let response = format!(
                    "HTTP/1.1 {status} Fake\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                let _ = conn.shutdown().await;
            }
        });
        Self {
            api_url,
            answer,
            received,
            task,
        }
    }

    pub fn answer(&self, answer: Answer) {
        *self.answer.lock().unwrap() = answer;
    }

    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }

    /// Stops serving and closes the port (and every open connection).
    pub async fn stop(&mut self) {
        self.task.abort();
        let _ = (&mut self.task).await;
    }
}

/// A URL on 127.0.0.1 where nothing listens.
pub(crate) fn closed_api_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    format!("http://{addr}/api/v1/")
}

async fn read_request(conn: &mut TcpStream) -> Option<Received> {
    let mut data = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_owned();
    let path = request_line.next()?.to_owned();
    let mut key = None;
    let mut content_length = 0;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        match name.trim().to_ascii_lowercase().as_str() {
            "x-environment-key" => key = Some(value.trim().to_owned()),
            "content-length" => content_length = value.trim().parse().ok()?,
            _ => {}
        }
    }
    let mut body = data[head_end..].to_vec();
    while body.len() < content_length {
        match conn.read(&mut buf).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    Some(Received {
        method,
        path,
        key,
        body,
    })
}
