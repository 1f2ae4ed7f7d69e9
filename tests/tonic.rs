//! The tonic integration against a real tonic server in-process, over a real `Channel`.
//!
//! The gRPC server is hand-written (a bytes codec, no protoc): every call checks its bearer token
//! with the reference server's model (`ReferenceServer::accepts`) and fails with
//! `UNAUTHENTICATED` when the token is not good. Its unary method fails "trailers-only"
//! (`grpc-status: 16` in the response headers); its streaming method sends one message and then
//! its verdict in the trailers. Time runs on Tokio's paused clock.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::Uri;
use http::uri::PathAndQuery;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tonic::body::Body as GrpcBody;
use tonic::client::{Grpc, GrpcService};
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Endpoint, Server};
use tonic::{Code, Status};
use tower::{Layer, Service, service_fn};
use tower_authtoken::testing::{Failure, ReferenceServer};
use tower_authtoken::tonic::{
    BytesCodec, GrpcBearerAuth, GrpcBearerAuthLayer, KeyedGrpcBearerAuth, KeyedGrpcBearerAuthLayer,
};
use tower_authtoken::{
    AuthTokenSource, BearerAuthLayer, Credentials, ErrorKind, KeyedBearerAuthLayer,
    KeyedTokenCache, TokenCache,
};

const UNARY: &str = "/test.Echo/Unary";
const STREAM: &str = "/test.Echo/Stream";

// ---------------------------------------------------------------------------------------------
// The gRPC server.

/// A protected gRPC API whose tokens come from the reference server.
#[derive(Clone)]
struct Api {
    auth: Arc<ReferenceServer>,
    /// The bearer token of every call that reached the API, in order (`None`: no header).
    seen: Arc<Mutex<Vec<Option<String>>>>,
}

impl Api {
    fn new(auth: &Arc<ReferenceServer>) -> Api {
        Api {
            auth: Arc::clone(auth),
            seen: Arc::default(),
        }
    }

    /// `Ok` for a token the reference server accepts now; `UNAUTHENTICATED` otherwise.
    fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        let token = metadata
            .get("authorization")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .map(str::to_owned);
        let accepted = token.as_deref().is_some_and(|t| self.auth.accepts(t));
        self.seen.lock().unwrap().push(token);
        if accepted {
            Ok(())
        } else {
            Err(Status::unauthenticated("invalid token"))
        }
    }

    fn seen(&self) -> Vec<Option<String>> {
        self.seen.lock().unwrap().clone()
    }

    /// Serves the API on a random loopback port.
    async fn serve(&self) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server =
            Server::builder().serve_with_incoming(self.clone(), TcpIncoming::from(listener));
        tokio::spawn(server);
        addr
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl Service<http::Request<GrpcBody>> for Api {
    type Response = http::Response<GrpcBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<GrpcBody>) -> Self::Future {
        let api = self.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(BytesCodec);
            let response = match req.uri().path() {
                // Echo, or fail before any message: `grpc-status` in the response headers.
                UNARY => {
                    let echo = service_fn(move |call: tonic::Request<Bytes>| {
                        let verdict = api.check(call.metadata());
                        async move { verdict.map(|()| tonic::Response::new(call.into_inner())) }
                    });
                    grpc.unary(echo, req).await
                }
                // The message, then the verdict: `grpc-status` in the trailers.
                STREAM => {
                    let stream = service_fn(move |call: tonic::Request<Bytes>| {
                        let verdict = api.check(call.metadata());
                        let items = [Ok(call.into_inner()), verdict.map(|()| Bytes::from("done"))];
                        async move { Ok(tonic::Response::new(tokio_stream::iter(items))) }
                    });
                    grpc.server_streaming(stream, req).await
                }
                _ => Status::unimplemented("no such method").into_http(),
            };
            Ok(response)
        })
    }
}

// ---------------------------------------------------------------------------------------------
// Clients.

/// The reference server issuing tokens, and the gRPC API checking them.
struct World {
    auth: Arc<ReferenceServer>,
    api: Api,
    endpoint: Endpoint,
}

impl World {
    async fn start() -> World {
        World::with(ReferenceServer::start().await).await
    }

    async fn with(auth: ReferenceServer) -> World {
        let auth = Arc::new(auth);
        let api = Api::new(&auth);
        let addr = api.serve().await;
        let endpoint = Endpoint::from_shared(format!("http://{addr}")).unwrap();
        World {
            auth,
            api,
            endpoint,
        }
    }

    /// A cache logging in to the reference server as its default user.
    fn cache(&self) -> TokenCache {
        let source = AuthTokenSource::new(&self.auth.base_url(), self.auth.credentials());
        TokenCache::new(source.unwrap())
    }

    /// A client on a channel to the API, through `GrpcBearerAuthLayer`.
    fn client(&self, cache: TokenCache) -> Grpc<GrpcBearerAuth<Channel>> {
        let layer = GrpcBearerAuthLayer::new(cache, self.endpoint.uri());
        Grpc::new(layer.layer(self.endpoint.connect_lazy()))
    }
}

/// A unary call, as a generated client makes it.
async fn unary<T>(client: &mut Grpc<T>) -> Result<Bytes, Status>
where
    T: GrpcService<GrpcBody>,
    T::ResponseBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<tower::BoxError>,
{
    let mut messages = keyed_call(client, None, false).await?;
    Ok(messages.remove(0))
}

/// A server-streaming call read to its end: the messages, or the status in the trailers.
async fn stream<T>(client: &mut Grpc<T>) -> Result<Vec<Bytes>, (Vec<Bytes>, Status)>
where
    T: GrpcService<GrpcBody>,
    T::ResponseBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<tower::BoxError>,
{
    let mut messages = Vec::new();
    let ready = client.ready().await;
    ready.map_err(|error| (Vec::new(), Status::from_error(error.into())))?;
    let request = tonic::Request::new(Bytes::from_static(b"hello"));
    let path = PathAndQuery::from_static(STREAM);
    let response = client.server_streaming(request, path, BytesCodec).await;
    let mut stream = response
        .map_err(|status| (Vec::new(), status))?
        .into_inner();
    loop {
        match stream.message().await {
            Ok(Some(message)) => messages.push(message),
            Ok(None) => return Ok(messages),
            Err(status) => return Err((messages, status)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Tests.

#[tokio::test(start_paused = true)]
async fn a_unary_call_carries_a_token_the_grpc_server_accepts() {
    let world = World::start().await;
    let mut client = world.client(world.cache());

    assert_eq!(unary(&mut client).await.unwrap(), "hello");
    assert_eq!(unary(&mut client).await.unwrap(), "hello");

    let seen = world.api.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0], seen[1], "the second call reuses the token");
    let issued = world.auth.issued_tokens();
    assert_eq!(seen[0].as_deref(), issued.first().map(String::as_str));
    assert_eq!(world.auth.logins(), 1);
}

/// A trailers-only `UNAUTHENTICATED` (a unary handler's error) is `grpc-status: 16` in the
/// response headers: the token is invalidated and the next call logs in again. Checked with
/// `GrpcBearerAuth` and with a plain `BearerAuth`, which shares the headers check with HTTP.
#[tokio::test(start_paused = true)]
async fn grpc_status_16_in_the_headers_invalidates_the_token_and_the_next_call_logs_in_again() {
    let world = World::start().await;
    let (grpc_cache, plain_cache) = (world.cache(), world.cache());
    let mut grpc = world.client(grpc_cache.clone());
    let plain_layer = BearerAuthLayer::new(plain_cache.clone()).with_origin(world.endpoint.uri());
    let mut plain = Grpc::new(plain_layer.layer(world.endpoint.connect_lazy()));
    unary(&mut grpc).await.unwrap();
    unary(&mut plain).await.unwrap();
    assert_eq!(world.auth.logins(), 2);

    world.auth.revoke_all();
    for client_result in [unary(&mut grpc).await, unary(&mut plain).await] {
        assert_eq!(client_result.unwrap_err().code(), Code::Unauthenticated);
    }
    assert_eq!(grpc_cache.stats().invalidations, 1);
    assert_eq!(plain_cache.stats().invalidations, 1);

    assert_eq!(unary(&mut grpc).await.unwrap(), "hello");
    assert_eq!(unary(&mut plain).await.unwrap(), "hello");
    assert_eq!(world.auth.logins(), 4, "one new login for each cache");
    let seen = world.api.seen();
    for token in &seen[seen.len() - 2..] {
        assert!(
            world.auth.accepts(token.as_deref().unwrap()),
            "a new token was sent"
        );
    }
}

/// A gRPC call streams its request, so `retry_on_unauthorized` compiles over a channel but
/// never replays one: the call fails with `UNAUTHENTICATED` once, reaches the API once, and the
/// token is invalidated all the same.
#[tokio::test(start_paused = true)]
async fn retry_on_unauthorized_over_a_channel_invalidates_but_never_replays_a_grpc_call() {
    let world = World::start().await;
    let cache = world.cache();
    let layer = BearerAuthLayer::new(cache.clone())
        .with_origin(world.endpoint.uri())
        .retry_on_unauthorized_any_method();
    let mut client = Grpc::new(layer.layer(world.endpoint.connect_lazy()));
    unary(&mut client).await.unwrap();

    world.auth.revoke_all();
    let status = unary(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(
        world.api.seen().len(),
        2,
        "the rejected call was not replayed"
    );
    assert_eq!(cache.stats().invalidations, 1);

    assert_eq!(unary(&mut client).await.unwrap(), "hello");
    assert_eq!(world.auth.logins(), 2);
}

/// A stream that fails midway carries `grpc-status: 16` in its trailers, after the headers
/// and a message went through: `GrpcBearerAuth`'s body sees it.
#[tokio::test(start_paused = true)]
async fn grpc_status_16_in_the_trailers_of_a_stream_invalidates_the_token() {
    let world = World::start().await;
    let cache = world.cache();
    let mut client = world.client(cache.clone());
    assert_eq!(stream(&mut client).await.unwrap(), ["hello", "done"]);

    world.auth.revoke_all();
    let (messages, status) = stream(&mut client).await.unwrap_err();
    assert_eq!(messages, ["hello"], "the rejection came after a message");
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(cache.stats().invalidations, 1);

    assert_eq!(stream(&mut client).await.unwrap(), ["hello", "done"]);
    assert_eq!(world.auth.logins(), 2);
    let seen = world.api.seen();
    assert_ne!(
        seen[1], seen[2],
        "the call after the rejection carries a new token"
    );
}

/// An API that refuses every token while the login works, called ten times a second for a
/// minute, alternating unary calls (`16` in headers) and streams (`16` in trailers): the
/// cache's spacing of invalidations in a row (1 s, 2 s, 4 s, ...) holds for gRPC, so a handful
/// of logins are made, not one per call.
#[tokio::test(start_paused = true)]
async fn a_grpc_api_that_rejects_every_token_gets_a_handful_of_logins_not_one_per_call() {
    let world = World::with(
        ReferenceServer::builder()
            .reject_all_tokens(true)
            .start()
            .await,
    )
    .await;
    let cache = world.cache();
    let mut client = world.client(cache.clone());

    let calls = 600;
    for call in 0..calls {
        let code = if call % 2 == 0 {
            unary(&mut client).await.unwrap_err().code()
        } else {
            stream(&mut client).await.unwrap_err().1.code()
        };
        assert_eq!(code, Code::Unauthenticated);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    assert_eq!(world.api.seen().len(), calls, "every call reached the API");
    let logins = world.auth.logins();
    let stats = cache.stats();
    println!("{calls} calls rejected: {logins} logins, {stats:?}");
    assert!(
        (3..=8).contains(&logins),
        "a handful of logins in a minute, each after a spaced invalidation: {logins} ({stats:?})"
    );
    assert_eq!(stats.invalidations + 1, logins);
    assert!(stats.ignored_invalidations > 500, "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn a_wrong_password_reaches_the_tonic_client_as_unauthenticated_without_the_password() {
    let world = World::start().await;
    let password = "not-the-password-42";
    let source = AuthTokenSource::new(&world.auth.base_url(), Credentials::new("alice", password));
    let mut client = world.client(TokenCache::new(source.unwrap()));

    let status = unary(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    assert!(
        status.message().contains("authentication failed"),
        "{status:?}"
    );
    assert!(!format!("{status:?}").contains(password));
    assert_eq!(kind_of(&status), Some(ErrorKind::AuthenticationFailed));
    assert!(world.api.seen().is_empty(), "no call reached the API");
}

#[tokio::test(start_paused = true)]
async fn a_failing_login_endpoint_reaches_the_tonic_client_as_unavailable() {
    let world = World::start().await;
    let mut client = world.client(world.cache());

    world.auth.push_failure(Failure::Status(503));
    let status = unary(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert_eq!(kind_of(&status), Some(ErrorKind::Server));
    assert!(world.api.seen().is_empty(), "no call reached the API");
}

/// The kind of the crate's error behind a status.
fn kind_of(status: &Status) -> Option<ErrorKind> {
    let source = std::error::Error::source(status)?;
    source
        .downcast_ref::<tower_authtoken::Error>()
        .map(tower_authtoken::Error::kind)
}

/// A channel to `http://10.255.255.1:50051` whose connector counts its connections and leads
/// them to the in-process API on loopback, so that a token sent by mistake would be seen
/// (and no packet leaves the machine).
fn channel_to_a_remote_h2c_host(world: &World) -> (Endpoint, Channel, Arc<AtomicUsize>) {
    let endpoint = Endpoint::from_static("http://10.255.255.1:50051");
    let connects = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&connects);
    let api = world
        .endpoint
        .uri()
        .authority()
        .unwrap()
        .as_str()
        .to_owned();
    let connector = service_fn(move |_: Uri| {
        counter.fetch_add(1, Ordering::SeqCst);
        let api = api.clone();
        async move { TcpStream::connect(api).await.map(TokioIo::new) }
    });
    let channel = endpoint.connect_with_connector_lazy(connector);
    (endpoint, channel, connects)
}

#[tokio::test(start_paused = true)]
async fn a_token_is_never_sent_over_h2c_to_a_non_loopback_host_without_the_opt_in() {
    let world = World::start().await;
    let (endpoint, channel, connects) = channel_to_a_remote_h2c_host(&world);

    let layer = GrpcBearerAuthLayer::new(world.cache(), endpoint.uri());
    let mut client = Grpc::new(layer.layer(channel.clone()));
    let status = unary(&mut client).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert!(status.message().contains("10.255.255.1"), "{status:?}");

    // The same rule with the plain layer given the channel's endpoint.
    let layer = BearerAuthLayer::new(world.cache()).with_origin(endpoint.uri());
    let mut client = Grpc::new(layer.layer(channel));
    let status = unary(&mut client).await.unwrap_err();
    assert_eq!(kind_of(&status), Some(ErrorKind::InsecureTransport));

    assert_eq!(
        connects.load(Ordering::SeqCst),
        0,
        "the channel never connected"
    );
    assert!(
        world.api.seen().is_empty(),
        "no call, and so no token, reached the API"
    );
}

#[tokio::test(start_paused = true)]
async fn with_the_opt_in_a_token_goes_over_h2c_to_a_non_loopback_host() {
    let world = World::start().await;
    let (endpoint, channel, connects) = channel_to_a_remote_h2c_host(&world);
    let source = AuthTokenSource::new(&world.auth.base_url(), world.auth.credentials());
    let cache = TokenCache::builder(source.unwrap())
        .allow_insecure_http(true)
        .build()
        .unwrap();

    let layer = GrpcBearerAuthLayer::new(cache, endpoint.uri());
    let mut client = Grpc::new(layer.layer(channel));
    assert_eq!(unary(&mut client).await.unwrap(), "hello");
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    let seen = world.api.seen();
    assert_eq!(seen.len(), 1);
    assert!(world.auth.accepts(seen[0].as_deref().unwrap()));
}

// ---------------------------------------------------------------------------------------------
// Many accounts: `KeyedGrpcBearerAuthLayer`.

/// The account a call is made for, as the application tags its `tonic::Request`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
struct Agency(u32);

/// Accounts `1..=3` are users `agency-N` of the reference server (`agency-3`'s password is
/// wrong), and those in `allow_insecure` may log in and be sent over plain HTTP; the factory
/// refuses any other account.
fn accounts(world: &World, allow_insecure: &'static [u32]) -> KeyedTokenCache<Agency> {
    for account in 1..=3 {
        let password = format!("pw-{account}");
        world.auth.add_user(&format!("agency-{account}"), &password);
    }
    let base_url = world.auth.base_url();
    KeyedTokenCache::builder(move |&Agency(account): &Agency| {
        if !(1..=3).contains(&account) {
            return Err(format!("no agency {account}"));
        }
        let password = if account == 3 { "wrong" } else { "pw" };
        let credentials =
            Credentials::new(format!("agency-{account}"), format!("{password}-{account}"));
        AuthTokenSource::builder(&base_url, credentials)
            .allow_insecure_http(allow_insecure.contains(&account))
            .build()
            .map_err(|error| error.to_string())
    })
    .build()
    .unwrap()
}

/// A client for many accounts on `channel` to `endpoint`; the account is a request extension.
fn keyed_client(
    endpoint: &Endpoint,
    channel: Channel,
    accounts: KeyedTokenCache<Agency>,
) -> Grpc<KeyedGrpcBearerAuth<Channel, Agency>> {
    let layer = KeyedGrpcBearerAuthLayer::new(accounts, endpoint.uri());
    Grpc::new(layer.layer(channel))
}

/// A unary call, or a server stream read to its end, for `account` (`None`: untagged). The
/// account goes in a request extension and in the `x-agency` metadata entry.
async fn keyed_call<T>(
    client: &mut Grpc<T>,
    account: Option<u32>,
    streaming: bool,
) -> Result<Vec<Bytes>, Status>
where
    T: GrpcService<GrpcBody>,
    T::ResponseBody: hyper::body::Body<Data = Bytes> + Send + 'static,
    <T::ResponseBody as hyper::body::Body>::Error: Into<tower::BoxError>,
{
    client
        .ready()
        .await
        .map_err(|error| Status::from_error(error.into()))?;
    let mut request = tonic::Request::new(Bytes::from_static(b"hello"));
    if let Some(account) = account {
        request.extensions_mut().insert(Agency(account));
        let value = account.to_string().parse().unwrap();
        request.metadata_mut().insert("x-agency", value);
    }
    if !streaming {
        let path = PathAndQuery::from_static(UNARY);
        let response = client.unary(request, path, BytesCodec).await?;
        return Ok(vec![response.into_inner()]);
    }
    let path = PathAndQuery::from_static(STREAM);
    let response = client.server_streaming(request, path, BytesCodec).await?;
    let mut stream = response.into_inner();
    let mut messages = Vec::new();
    while let Some(message) = stream.message().await? {
        messages.push(message);
    }
    Ok(messages)
}

/// Each call carries its own account's token, whether the account is a request extension (the
/// default, which tonic carries from the `tonic::Request` to the channel) or read from the
/// call's metadata by a closure; one login per account, and revoking one account's token
/// leaves the other's in use.
#[tokio::test(start_paused = true)]
async fn keyed_calls_carry_their_own_accounts_token_from_an_extension_or_from_metadata() {
    let world = World::start().await;
    let accounts = accounts(&world, &[]);
    let channel = world.endpoint.connect_lazy();
    let mut by_extension = keyed_client(&world.endpoint, channel.clone(), accounts.clone());
    let layer = KeyedGrpcBearerAuthLayer::new(accounts.clone(), world.endpoint.uri()).account_from(
        |req: &http::Request<GrpcBody>| {
            let value = req.headers().get("x-agency")?.to_str().ok()?;
            value.parse().ok().map(Agency)
        },
    );
    let mut by_metadata = Grpc::new(layer.layer(channel));

    for account in [1, 2, 1, 2] {
        keyed_call(&mut by_extension, Some(account), false)
            .await
            .unwrap();
        keyed_call(&mut by_metadata, Some(account), true)
            .await
            .unwrap();
    }
    let seen = world.api.seen();
    assert_eq!(seen.len(), 8);
    let (one, two) = (&seen[0], &seen[2]);
    assert_ne!(one, two, "each account has its own token");
    for (call, token) in seen.iter().enumerate() {
        let expected = if call % 4 < 2 { one } else { two };
        assert_eq!(
            token, expected,
            "call {call}: both clients use the account's token"
        );
    }
    assert_eq!(world.auth.logins_of("agency-1"), 1);
    assert_eq!(world.auth.logins_of("agency-2"), 1);

    assert_eq!(world.auth.revoke_user("agency-1"), 1);
    keyed_call(&mut by_extension, Some(2), false).await.unwrap();
    keyed_call(&mut by_metadata, Some(2), true).await.unwrap();
    assert_eq!(world.api.seen()[8..], [two.clone(), two.clone()]);
}

/// A rejection of one account's token, in the headers (a unary call's trailers-only
/// `UNAUTHENTICATED`) or in a stream's trailers after a message, takes that account's token out
/// of service and no other: its next call logs in again, the other account keeps its token.
#[tokio::test(start_paused = true)]
async fn keyed_grpc_status_16_in_the_headers_or_the_trailers_renews_only_that_accounts_token() {
    let world = World::start().await;
    let accounts = accounts(&world, &[]);
    let mut client = keyed_client(
        &world.endpoint,
        world.endpoint.connect_lazy(),
        accounts.clone(),
    );
    keyed_call(&mut client, Some(1), false).await.unwrap();
    keyed_call(&mut client, Some(2), false).await.unwrap();
    let two = world.api.seen()[1].clone();

    for (round, streaming) in [(1, false), (2, true)] {
        // Past the cache's spacing of invalidations in a row (1 s after the first).
        tokio::time::sleep(Duration::from_secs(10)).await;
        world.auth.revoke_user("agency-1");
        let status = keyed_call(&mut client, Some(1), streaming)
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
        let cache = accounts.cache(&Agency(1)).unwrap();
        assert_eq!(cache.stats().invalidations, round, "streaming: {streaming}");

        let messages = keyed_call(&mut client, Some(1), streaming).await.unwrap();
        assert_eq!(messages.len(), if streaming { 2 } else { 1 });
        assert_eq!(world.auth.logins_of("agency-1"), 1 + round);
        keyed_call(&mut client, Some(2), streaming).await.unwrap();
        assert_eq!(
            world.api.seen().last(),
            Some(&two),
            "account 2 keeps its token"
        );
    }
    assert_eq!(world.auth.logins_of("agency-2"), 1);
    assert_eq!(accounts.cache(&Agency(2)).unwrap().stats().invalidations, 0);
}

/// A call that names no account, names one the factory refuses, or whose account cannot log
/// in fails with a `Status` whose code says which, and whose source is the crate's error; no
/// call reaches the API and no password is in the status.
#[tokio::test(start_paused = true)]
async fn keyed_calls_without_an_account_or_with_a_refused_or_failing_one_fail_as_a_status() {
    let world = World::start().await;
    let accounts = accounts(&world, &[]);
    let mut client = keyed_client(&world.endpoint, world.endpoint.connect_lazy(), accounts);

    let cases = [
        (None, Code::InvalidArgument, ErrorKind::NoAccount),
        (Some(9), Code::PermissionDenied, ErrorKind::UnknownAccount),
        (
            Some(3),
            Code::Unauthenticated,
            ErrorKind::AuthenticationFailed,
        ),
    ];
    for (account, code, kind) in cases {
        for streaming in [false, true] {
            let status = keyed_call(&mut client, account, streaming)
                .await
                .unwrap_err();
            assert_eq!(status.code(), code, "{account:?}: {status:?}");
            assert_eq!(kind_of(&status), Some(kind), "{account:?}: {status:?}");
            assert!(!format!("{status:?}").contains("wrong-3"), "{status:?}");
        }
    }
    assert!(world.api.seen().is_empty(), "no call reached the API");
    assert_eq!(world.auth.logins_of("agency-1"), 0);
}

/// Over `h2c` to a host that is not loopback, only the account whose login client allows plain
/// HTTP is sent; the other is refused before the channel connects.
#[tokio::test(start_paused = true)]
async fn keyed_calls_over_h2c_to_a_non_loopback_host_go_only_for_the_account_that_allows_it() {
    let world = World::start().await;
    let (endpoint, channel, connects) = channel_to_a_remote_h2c_host(&world);
    let mut client = keyed_client(&endpoint, channel, accounts(&world, &[2]));

    let status = keyed_call(&mut client, Some(1), false).await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition, "{status:?}");
    assert_eq!(kind_of(&status), Some(ErrorKind::InsecureTransport));
    assert!(status.message().contains("10.255.255.1"), "{status:?}");
    assert_eq!(
        connects.load(Ordering::SeqCst),
        0,
        "the channel never connected"
    );
    assert!(world.api.seen().is_empty());

    keyed_call(&mut client, Some(2), false).await.unwrap();
    assert_eq!(connects.load(Ordering::SeqCst), 1);
    let seen = world.api.seen();
    assert_eq!(seen.len(), 1);
    assert!(world.auth.accepts(seen[0].as_deref().unwrap()));
}

/// What the README says of a plain `KeyedBearerAuthLayer` over a channel, which this module's
/// layer exists to fix: it sees `grpc-status: 16` in the headers only (a stream's trailers
/// leave the token in service), and its own errors reach the tonic client as `Code::Unknown`.
#[tokio::test(start_paused = true)]
async fn a_plain_keyed_layer_over_a_channel_misses_the_trailers_and_its_errors_are_unknown() {
    let world = World::start().await;
    let accounts = accounts(&world, &[]);
    let layer = KeyedBearerAuthLayer::new(accounts.clone()).with_origin(world.endpoint.uri());
    let mut client = Grpc::new(layer.layer(world.endpoint.connect_lazy()));
    keyed_call(&mut client, Some(1), true).await.unwrap();
    let cache = accounts.cache(&Agency(1)).unwrap();

    world.auth.revoke_user("agency-1");
    let status = keyed_call(&mut client, Some(1), true).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(cache.stats().invalidations, 0, "the trailers went unseen");
    let status = keyed_call(&mut client, Some(1), false).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
    assert_eq!(cache.stats().invalidations, 1, "the headers were seen");

    let status = keyed_call(&mut client, None, false).await.unwrap_err();
    assert_eq!(status.code(), Code::Unknown, "{status:?}");
    assert_eq!(kind_of(&status), Some(ErrorKind::NoAccount));
}
