//! The login's `authtoken.fetch` span follows from the span of the request that caused it.
//!
//! A small `tracing_subscriber::Layer` records every `follows_from` by span name. It is set as
//! the thread's default subscriber, and the tests run on a current-thread runtime, so the
//! cache's background task (where the login runs) reports to it too.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::{Request, Response, StatusCode, header::AUTHORIZATION};
use tower::{Layer as _, ServiceExt, service_fn};
use tower_authtoken::testing::ReferenceServer;
use tower_authtoken::{AuthTokenSource, BearerAuthLayer, TokenCache};
use tracing::Instrument;
use tracing::span::{Attributes, Id};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::registry::LookupSpan;

/// Every `follows_from` seen, as (span, the span it follows from), by name; and the name of
/// every span created and closed.
#[derive(Clone, Default)]
struct Links {
    follows: Arc<Mutex<Vec<(String, String)>>>,
    created: Arc<Mutex<Vec<String>>>,
    closed: Arc<Mutex<Vec<String>>>,
}

impl Links {
    fn follows(&self) -> Vec<(String, String)> {
        self.follows.lock().unwrap().clone()
    }

    fn fetches(&self) -> usize {
        let created = self.created.lock().unwrap();
        created.iter().filter(|n| *n == "authtoken.fetch").count()
    }

    fn closed(&self, name: &str) -> bool {
        self.closed.lock().unwrap().iter().any(|n| n == name)
    }
}

impl<S: tracing::Subscriber + for<'a> LookupSpan<'a>> tracing_subscriber::Layer<S> for Links {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let name = attrs.metadata().name().to_owned();
        self.created.lock().unwrap().push(name);
    }

    fn on_close(&self, id: Id, ctx: Context<'_, S>) {
        if let Some(span) = ctx.span(&id) {
            self.closed.lock().unwrap().push(span.name().to_owned());
        }
    }

    fn on_follows_from(&self, span: &Id, follows: &Id, ctx: Context<'_, S>) {
        let name = |id| ctx.span(id).map_or("<closed>", |s| s.name()).to_owned();
        let link = (name(span), name(follows));
        self.follows.lock().unwrap().push(link);
    }
}

fn fetch_follows(cause: &str) -> (String, String) {
    ("authtoken.fetch".to_owned(), cause.to_owned())
}

fn cache_for(server: &ReferenceServer) -> TokenCache {
    TokenCache::new(AuthTokenSource::new(&server.base_url(), server.credentials()).unwrap())
}

#[tokio::test(start_paused = true)]
async fn cold_login_follows_from_the_first_request_that_waited_for_it() {
    let links = Links::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(links.clone()));
    let server = ReferenceServer::start().await;
    let cache = cache_for(&server);

    let first = cache
        .token()
        .instrument(tracing::info_span!("first_request"));
    let second = cache
        .token()
        .instrument(tracing::info_span!("second_request"));
    let (a, b) = tokio::join!(first, second);
    a.unwrap();
    b.unwrap();

    assert_eq!(links.fetches(), 1);
    assert_eq!(links.follows(), vec![fetch_follows("first_request")]);
}

#[tokio::test(start_paused = true)]
async fn cold_login_follows_from_the_first_waiting_request_that_has_a_span() {
    let links = Links::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(links.clone()));
    let server = ReferenceServer::start().await;
    let cache = cache_for(&server);

    let untraced = cache.token();
    let traced = cache
        .token()
        .instrument(tracing::info_span!("traced_request"));
    let (a, b) = tokio::join!(untraced, traced);
    a.unwrap();
    b.unwrap();

    assert_eq!(links.follows(), vec![fetch_follows("traced_request")]);
}

#[tokio::test(start_paused = true)]
async fn login_after_a_401_follows_from_the_rejected_request() {
    let links = Links::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(links.clone()));
    let server = ReferenceServer::builder()
        .login_delay(Duration::from_millis(200))
        .start()
        .await;
    let cache = cache_for(&server);
    cache.token().await.unwrap();

    // An API that rejects the first token it sees.
    let first_token = Arc::new(Mutex::new(None));
    let upstream = service_fn(move |request: Request<()>| {
        let header = request.headers()[AUTHORIZATION].clone();
        let first = Arc::clone(&first_token);
        async move {
            let mut first = first.lock().unwrap();
            let status = if first.get_or_insert_with(|| header.clone()) == &header {
                StatusCode::UNAUTHORIZED
            } else {
                StatusCode::OK
            };
            let mut response = Response::new(());
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    });
    let client = BearerAuthLayer::new(cache.clone()).layer(upstream);
    let rejected = client
        .clone()
        .oneshot(Request::new(()))
        .instrument(tracing::info_span!("rejected_request"))
        .await
        .unwrap();
    assert_eq!(rejected.status(), StatusCode::UNAUTHORIZED);
    // While the login runs, the cache holds on to the request's span no longer: it closed.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.login_attempts(), 2);
    assert!(links.closed("rejected_request"));
    // The renewal runs on the background task; the next request waits for it.
    let next = client
        .oneshot(Request::new(()))
        .instrument(tracing::info_span!("next_request"))
        .await
        .unwrap();
    assert_eq!(next.status(), StatusCode::OK);

    assert_eq!(links.fetches(), 2);
    assert_eq!(
        links.follows(),
        vec![fetch_follows("rejected_request")],
        "the cold first login had no request span; the second is the 401's"
    );
}

#[tokio::test(start_paused = true)]
async fn renewal_on_the_timer_follows_from_no_request() {
    let links = Links::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(links.clone()));
    let server = ReferenceServer::builder()
        .token_lifetime(Duration::from_secs(30))
        .login_delay(Duration::from_millis(200))
        .start()
        .await;
    let cache = cache_for(&server);
    // The second caller joins the login while it runs: it caused nothing, and must not be
    // taken for the cause of the next login either.
    let first = cache
        .token()
        .instrument(tracing::info_span!("first_request"));
    let second = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        cache.token().await
    }
    .instrument(tracing::info_span!("second_request"));
    let (a, b) = tokio::join!(first, second);
    a.unwrap();
    b.unwrap();
    // Renewed at half its life by the background task's own timer, for no one request.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(server.logins(), 2);

    assert_eq!(links.fetches(), 2);
    assert_eq!(links.follows(), vec![fetch_follows("first_request")]);
}

/// A source of one-second tokens, without a server.
struct OneSecond;

impl tower_authtoken::TokenSource for OneSecond {
    async fn fetch(&self) -> Result<tower_authtoken::Token, tower_authtoken::Error> {
        tower_authtoken::Token::new("opaque", Duration::from_secs(1))
    }
}

#[tokio::test(start_paused = true)]
async fn renewal_a_reader_found_due_follows_from_that_reader() {
    let links = Links::default();
    let _default =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(links.clone()));
    let cache = TokenCache::builder(OneSecond)
        .jitter(Duration::ZERO)
        .build()
        .unwrap();
    cache.token().await.unwrap();
    // Readers judge the renewal due on the real (coarse) clock, which the paused clock does not
    // move: the renewal of a 1 s token is due after 480 ms of it, the deadline after 880 ms.
    // Block the runtime for 600 ms of it, so that the background task's own timer (on the
    // paused clock) has not fired, and the reader is the one that finds the renewal due.
    std::thread::sleep(Duration::from_millis(600));
    let read = tracing::info_span!("reader").in_scope(|| cache.current());
    assert!(read.is_some());
    tokio::time::sleep(Duration::from_millis(600)).await;

    assert_eq!(cache.stats().renewals, 1);
    assert_eq!(
        links.follows(),
        vec![fetch_follows("reader")],
        "the first login had no request span"
    );
}
