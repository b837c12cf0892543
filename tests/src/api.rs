//! The HTTP API as a program calls it, through reqwest: plain API calls in tests. curl
//! stays where it is the peer a test is about (`tests/http.rs`, `tests/auth.rs`,
//! `tests/https.rs`). [`Api::trusting`] is the HTTPS client fixture: it trusts only the
//! test's own certificate.

use std::path::Path;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder};
use serde_json::Value;

/// A client for one server's API.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    client: reqwest::Client,
}

/// What came back: the status, the headers and the body as text.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// The body as JSON; `Null` when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name)?.to_str().ok()
    }
}

fn builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(120))
        .redirect(reqwest::redirect::Policy::none())
}

impl Api {
    /// Plain HTTP to `base` (`http://127.0.0.1:PORT`).
    pub fn new(base: &str) -> Api {
        Api {
            base: base.to_string(),
            client: builder().build().expect("an HTTP client"),
        }
    }

    /// HTTPS to `base`, trusting `cert` (a PEM certificate, as made by
    /// [`crate::self_signed`]) and nothing else.
    pub fn trusting(base: &str, cert: &Path) -> Api {
        let pem = std::fs::read(cert).expect("read the certificate");
        let cert = reqwest::Certificate::from_pem(&pem).expect("a PEM certificate");
        let client = builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(cert)
            .build()
            .expect("an HTTPS client");
        Api {
            base: base.to_string(),
            client,
        }
    }

    /// A request to `path` (from `/`), to add headers or a body to before [`send`].
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, format!("{}{path}", self.base))
    }

    /// `GET path` with a bearer token (none when empty).
    pub async fn get(&self, path: &str, token: &str) -> Reply {
        send(bearer(self.request(Method::GET, path), token)).await
    }

    /// `GET path` of the dashboard with `cookie` (`ctdata_session=…`).
    pub async fn page(&self, path: &str, cookie: &str) -> Reply {
        send(self.request(Method::GET, path).header("Cookie", cookie)).await
    }

    /// `POST path` with no body and a bearer token (none when empty).
    pub async fn post(&self, path: &str, token: &str) -> Reply {
        send(bearer(self.request(Method::POST, path), token)).await
    }

    /// `GET path` that must answer 200 with JSON.
    pub async fn get_json(&self, path: &str, token: &str) -> Value {
        let reply = self.get(path, token).await;
        assert_eq!(reply.status, 200, "GET {path}: {}", reply.body);
        serde_json::from_str(&reply.body)
            .unwrap_or_else(|e| panic!("GET {path}: {e}: {}", reply.body))
    }

    /// `POST /api/v1/batches` with `body` as a device with `token`.
    pub async fn post_batch(&self, token: &str, body: impl Into<reqwest::Body>) -> Reply {
        let request = self.request(Method::POST, "/api/v1/batches").body(body);
        send(bearer(request, token)).await
    }

    /// [`Api::post_batch`] with the bytes of `file`.
    pub async fn post_file(&self, token: &str, file: &Path) -> Reply {
        let bytes = std::fs::read(file).expect("read the batch file");
        self.post_batch(token, bytes).await
    }
}

fn bearer(request: RequestBuilder, token: &str) -> RequestBuilder {
    match token {
        "" => request,
        token => request.bearer_auth(token),
    }
}

/// Sends and reads the whole answer; a transport error fails the test.
pub async fn send(request: RequestBuilder) -> Reply {
    let response = request.send().await.expect("an HTTP answer");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response.text().await.expect("the response body");
    Reply {
        status,
        headers,
        body,
    }
}
