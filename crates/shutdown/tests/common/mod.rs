//! Helpers shared by the HTTP tests: a minimal hyper client on loopback.

use std::net::SocketAddr;

use axum::body::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::{SendRequest, handshake};
use hyper::{Request, Response, body::Incoming};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

/// One client connection, and the task driving it (it ends when the connection closes).
pub(crate) struct Client {
    pub(crate) sender: SendRequest<Empty<Bytes>>,
    pub(crate) driver: JoinHandle<Result<(), hyper::Error>>,
}

pub(crate) async fn connect(addr: SocketAddr) -> Client {
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (sender, connection) = handshake(TokioIo::new(stream)).await.expect("handshake");
    let driver = tokio::spawn(connection);
    Client { sender, driver }
}

impl Client {
    pub(crate) async fn get(&mut self, path: &str) -> Result<Response<Incoming>, hyper::Error> {
        let request = Request::get(path)
            .header("host", "localhost")
            .body(Empty::new())
            .expect("request");
        self.sender.ready().await?;
        self.sender.send_request(request).await
    }
}

/// GET on a fresh connection; returns the status and the `Connection` header.
pub(crate) async fn get_fresh(addr: SocketAddr, path: &str) -> (u16, Option<String>, String) {
    let mut client = connect(addr).await;
    let response = client.get(path).await.expect("response");
    let status = response.status().as_u16();
    let connection = connection_header(&response);
    let body = text(response).await;
    (status, connection, body)
}

pub(crate) fn connection_header(response: &Response<Incoming>) -> Option<String> {
    response
        .headers()
        .get("connection")
        .map(|value| value.to_str().expect("ascii").to_owned())
}

pub(crate) async fn text(response: Response<Incoming>) -> String {
    let body = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    String::from_utf8(body.to_vec()).expect("utf-8")
}
