//! The world's API spoken as gRPC, for `tests/model_grpc.rs`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::sleep;
use tower::{BoxError, Service};
use tower_authtoken::tonic::GrpcResponseBody;

use super::harness::{Rejected, bearer_token};
use super::world::World;

/// The world's protected API spoken as gRPC over HTTP/2: every answer is a `200`. A token the
/// model accepts gets one message, then trailers with `grpc-status: 0`. A token it rejects
/// gets `grpc-status: 16` (`UNAUTHENTICATED`) in turn in the headers (a "trailers-only"
/// response: a unary handler that failed) and in the trailers after a message (a stream that
/// failed midway). Each rejection is marked [`Rejected`] for the
/// probe.
#[derive(Debug, Clone)]
pub struct GrpcModelApi(pub Arc<World>);

/// A gRPC response body: at most one message, then trailers if any.
#[derive(Debug, Default)]
pub struct GrpcBody {
    message: Option<bytes::Bytes>,
    trailers: Option<http::HeaderMap>,
}

impl http_body::Body for GrpcBody {
    type Data = bytes::Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<bytes::Bytes>, Infallible>>> {
        if let Some(message) = self.message.take() {
            return Poll::Ready(Some(Ok(http_body::Frame::data(message))));
        }
        Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }

    fn is_end_stream(&self) -> bool {
        self.message.is_none() && self.trailers.is_none()
    }
}

fn grpc_status(code: &'static str) -> http::HeaderMap {
    let mut map = http::HeaderMap::new();
    map.insert("grpc-status", http::HeaderValue::from_static(code));
    map
}

impl<B: Send + 'static> Service<Request<B>> for GrpcModelApi {
    type Response = Response<GrpcBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<GrpcBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let world = Arc::clone(&self.0);
        let token = bearer_token(&req);
        Box::pin(async move {
            let latency = world.setup().api_latency;
            sleep(latency).await;
            let status = world.decide(token.as_deref());
            let rejections = world.counts().api_401s;
            sleep(latency).await;
            let message = Some(bytes::Bytes::from_static(b"\0\0\0\0\0"));
            let (headers, body) = match status {
                StatusCode::OK => (
                    http::HeaderMap::new(),
                    GrpcBody {
                        message,
                        trailers: Some(grpc_status("0")),
                    },
                ),
                _ if rejections.is_multiple_of(2) => (grpc_status("16"), GrpcBody::default()),
                _ => (
                    http::HeaderMap::new(),
                    GrpcBody {
                        message,
                        trailers: Some(grpc_status("16")),
                    },
                ),
            };
            let mut response = Response::new(body);
            *response.version_mut() = http::Version::HTTP_2;
            response.headers_mut().extend(headers);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/grpc"),
            );
            if status != StatusCode::OK {
                response.extensions_mut().insert(Rejected);
            }
            Ok(response)
        })
    }
}

/// Whether a gRPC response's headers, or its trailers once read, say `UNAUTHENTICATED`.
fn unauthenticated(map: Option<&http::HeaderMap>) -> bool {
    map.and_then(|map| map.get("grpc-status"))
        .is_some_and(|status| status == "16")
}

/// Reads a call's response to its trailers, as tonic does, and tells the harness what it got:
/// an `UNAUTHENTICATED` call as a `401`, any other as a `200`.
pub async fn read_status(
    response: Response<GrpcResponseBody<GrpcBody>>,
) -> Result<Response<()>, BoxError> {
    let (parts, body) = response.into_parts();
    let trailers = body.collect().await?.trailers().cloned();
    let status = if unauthenticated(Some(&parts.headers)) || unauthenticated(trailers.as_ref()) {
        StatusCode::UNAUTHORIZED
    } else {
        StatusCode::OK
    };
    Ok(Response::builder().status(status).body(())?)
}

/// A gRPC call as the harness sends it: a relative URI, over HTTP/2.
pub fn call() -> Request<()> {
    Request::builder()
        .uri("/model.Api/Call")
        .version(http::Version::HTTP_2)
        .body(())
        .expect("a request")
}

/// Where the channel would connect: `https`, so that the plain-HTTP rule lets the token go.
pub fn origin() -> http::Uri {
    http::Uri::from_static("https://grpc.model.example")
}
