//! `wss://` through rustls, against a loopback TLS server with a test CA.

#![cfg(feature = "rustls")]

mod support;

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use steadfast_ws_resilient::rustls::pki_types::pem::PemObject;
use steadfast_ws_resilient::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use steadfast_ws_resilient::rustls::{self, ClientConfig, RootCertStore, ServerConfig};
use steadfast_ws_resilient::{Client, Message};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

fn fixture(name: &str) -> String {
    format!("{}/tests/tls/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// The provider named explicitly: with every feature of the workspace on, rustls has both
/// ring and aws-lc-rs and so no process default.
fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_tls() -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap())
        .unwrap();
    Arc::new(
        ClientConfig::builder_with_provider(ring())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A TLS echo server on 127.0.0.1 with a certificate for that address.
async fn tls_echo_server() -> String {
    let certs = CertificateDer::pem_file_iter(fixture("server.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(fixture("server.key")).unwrap();
    let config: ServerConfig = rustls::ServerConfig::builder_with_provider(ring())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("wss://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut ws) = tokio_tungstenite::accept_async(tls).await else {
                    return;
                };
                while let Some(Ok(frame)) = ws.next().await {
                    if frame.is_text() && ws.send(frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    url
}

#[tokio::test]
async fn wss_connects_through_rustls_with_a_private_root() {
    let url = tls_echo_server().await;
    let (client, mut incoming) = Client::builder(url).tls(client_tls()).build().unwrap();

    client.send("over tls").await.unwrap();

    assert_eq!(incoming.recv().await, Some(Message::text("over tls")));
    client.close().await;
}

#[tokio::test]
async fn an_untrusted_certificate_fails_the_attempt() {
    let url = tls_echo_server().await;
    // The default webpki roots do not know the test CA.
    let (client, _incoming) = Client::builder(url).build().unwrap();
    let mut events = client.events();

    let error = support::next_disconnect(&mut events).await;

    assert!(
        matches!(error, steadfast_ws_resilient::Error::WebSocket(_)),
        "{error}"
    );
    client.close().await;
}
