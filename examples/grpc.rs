//! gRPC with tonic: every call on a `Channel` carries a bearer token from the cache, and a token
//! the gRPC server rejects (`UNAUTHENTICATED`) is replaced for the next call.
//!
//! Everything runs in this process: the reference `/authtoken` server issues tokens, and a tiny
//! gRPC service (written by hand with a bytes codec: no protoc, no generated code) accepts a
//! call only with a token the reference server would accept.
//!
//! ```text
//! cargo run --example grpc --features tonic,test-util
//! ```

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::uri::PathAndQuery;
use tokio::net::TcpListener;
use tonic::body::Body;
use tonic::client::Grpc;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tower::{BoxError, ServiceBuilder, service_fn};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::tonic::{BytesCodec, GrpcBearerAuth, GrpcBearerAuthLayer};
use tower_authtoken::{AuthTokenSource, TokenCache};

const HELLO: &str = "/demo.Greeter/Hello";

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth = Arc::new(ReferenceServer::start().await);
    let endpoint = serve_greeter(Arc::clone(&auth)).await?;

    // The client: a cache logging in to the /authtoken endpoint, and a channel wrapped in the
    // layer. The layer is told the channel's endpoint, since tonic's request URIs are relative.
    let cache = TokenCache::new(AuthTokenSource::new(&auth.base_url(), auth.credentials())?);
    let channel = ServiceBuilder::new()
        .layer(GrpcBearerAuthLayer::new(cache, endpoint.uri()))
        .service(endpoint.connect_lazy());
    // A generated client takes the channel the same way: `GreeterClient::new(channel)`.
    let mut client = Grpc::new(channel);

    println!("hello -> {:?}", hello(&mut client).await?);

    // The server stops accepting the token: the call fails with UNAUTHENTICATED, the token is
    // taken out of service, and the call made again logs in and goes through.
    auth.revoke_all();
    let reply = match hello(&mut client).await {
        Err(status) if status.code() == Code::Unauthenticated => {
            println!("rejected: {status:?}; calling again with a new token");
            hello(&mut client).await?
        }
        other => other?,
    };
    println!("hello -> {reply:?}");
    println!("logins: {}", auth.logins());
    assert_eq!(auth.logins(), 2);
    Ok(())
}

/// One unary call.
async fn hello(client: &mut Grpc<GrpcBearerAuth<Channel>>) -> Result<Bytes, Status> {
    client.ready().await.map_err(Status::from_error)?;
    let request = tonic::Request::new(Bytes::from_static(b"alice"));
    let response = client
        .unary(request, PathAndQuery::from_static(HELLO), BytesCodec)
        .await?;
    Ok(response.into_inner())
}

/// Serves the greeter on a random loopback port; returns the endpoint to reach it.
async fn serve_greeter(auth: Arc<ReferenceServer>) -> Result<Endpoint, BoxError> {
    let greeter = service_fn(move |request: http::Request<Body>| {
        let auth = Arc::clone(&auth);
        let hello = service_fn(move |call: tonic::Request<Bytes>| {
            let token = call
                .metadata()
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "));
            let reply = match token {
                Some(token) if auth.accepts(token) => {
                    let mut reply = b"hello, ".to_vec();
                    reply.extend_from_slice(call.get_ref());
                    Ok(tonic::Response::new(Bytes::from(reply)))
                }
                _ => Err(Status::unauthenticated("invalid token")),
            };
            async move { reply }
        });
        async move {
            let response = match request.uri().path() {
                HELLO => {
                    tonic::server::Grpc::new(BytesCodec)
                        .unary(hello, request)
                        .await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok::<_, Infallible>(response)
        }
    });
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = Endpoint::from_shared(format!("http://{}", listener.local_addr()?))?;
    tokio::spawn(Server::builder().serve_with_incoming(greeter, TcpIncoming::from(listener)));
    Ok(endpoint)
}
