//! Renewal notifications: one pubsub connection per store, shared by all its waiters.
//!
//! A replica waiting for a peer's login listens on that user's `renewed` channel. Before, each
//! wait opened a pubsub connection of its own. A keyed cache waits for many accounts at once:
//! three replicas starting cold on 6,000 accounts held 10,000 connections to Redis at the peak,
//! Redis's default `maxclients`, after which it refuses every new client, other applications'
//! included. Now a store holds one pubsub connection, opened at the first wait, and subscribes
//! to a channel while anyone listens on it.
//!
//! One task on the store's runtime owns the connection. It takes commands (listen, leave) and
//! forwards each message to the listeners of its channel. When the connection fails, the task
//! ends: every listener's receiver closes (the waiters poll instead, as they do in a cluster),
//! and the next wait opens a new connection.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tokio::time::timeout;

/// A store's subscriptions. See the [module docs](self).
#[derive(Default)]
pub(super) struct Notifications {
    /// The commands of the task that owns the connection, while it runs.
    hub: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    next_id: AtomicU64,
}

enum Command {
    Listen {
        channel: String,
        id: u64,
        messages: mpsc::Sender<()>,
        ready: oneshot::Sender<()>,
    },
    Leave {
        channel: String,
        id: u64,
    },
}

/// One listener's subscription to a channel: a message arrives on `messages` for each
/// notification. Dropping it leaves the channel (unsubscribed once its last listener leaves).
pub(super) struct Subscription {
    pub(super) messages: mpsc::Receiver<()>,
    hub: mpsc::UnboundedSender<Command>,
    channel: String,
    id: u64,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _ = self.hub.send(Command::Leave {
            channel: std::mem::take(&mut self.channel),
            id: self.id,
        });
    }
}

impl Notifications {
    /// Subscribes to `channel`, through the store's pubsub connection (opened on `runtime` if
    /// there is none). Returns once Redis confirmed the subscription, so that no notification
    /// published afterwards is missed; `None` if that took longer than `limit` or failed.
    pub(super) async fn listen(
        &self,
        client: &redis::Client,
        runtime: &tokio::runtime::Handle,
        channel: &str,
        limit: Duration,
    ) -> Option<Subscription> {
        let hub = self.hub(client, runtime, limit);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (messages_tx, messages) = mpsc::channel(4);
        let (ready_tx, ready) = oneshot::channel();
        hub.send(Command::Listen {
            channel: channel.to_owned(),
            id,
            messages: messages_tx,
            ready: ready_tx,
        })
        .ok()?;
        // From here on, dropping the subscription leaves the channel, even if it never
        // confirmed.
        let subscription = Subscription {
            messages,
            hub,
            channel: channel.to_owned(),
            id,
        };
        match timeout(limit, ready).await {
            Ok(Ok(())) => Some(subscription),
            _ => None,
        }
    }

    /// The running task's commands, or those of a new one.
    fn hub(
        &self,
        client: &redis::Client,
        runtime: &tokio::runtime::Handle,
        limit: Duration,
    ) -> mpsc::UnboundedSender<Command> {
        let mut hub = self.hub.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(commands) = &*hub
            && !commands.is_closed()
        {
            return commands.clone();
        }
        let (commands, received) = mpsc::unbounded_channel();
        runtime.spawn(run(client.clone(), received, limit));
        *hub = Some(commands.clone());
        commands
    }
}

/// Owns the pubsub connection until it fails or the store is dropped.
async fn run(
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<Command>,
    limit: Duration,
) {
    let Ok(Ok(pubsub)) = timeout(limit, client.get_async_pubsub()).await else {
        tracing::debug!("could not open the pubsub connection; waiters poll");
        return;
    };
    let (sink, mut stream) = pubsub.split();
    let mut hub = Hub {
        sink,
        limit,
        listeners: HashMap::new(),
        subscribed: HashSet::new(),
    };
    loop {
        tokio::select! {
            command = commands.recv() => {
                // Every sender is gone: the store was dropped.
                let Some(command) = command else { return };
                // Whatever else is queued goes in the same SUBSCRIBE and UNSUBSCRIBE: a keyed
                // cache starts hundreds of waits at once, and one round trip each would
                // outlast the waiters' patience.
                let mut batch = vec![command];
                while let Ok(more) = commands.try_recv() {
                    batch.push(more);
                }
                if hub.apply(batch).await.is_err() {
                    tracing::debug!("subscribing failed; waiters poll");
                    return;
                }
            }
            message = stream.next() => {
                // The connection closed.
                let Some(message) = message else { return };
                if let Some(list) = hub.listeners.get(message.get_channel_name()) {
                    for (_, messages) in list {
                        // A listener with a message pending needs no second one.
                        let _ = messages.try_send(());
                    }
                }
            }
        }
    }
}

/// The connection's subscriptions and who listens on each channel.
struct Hub {
    sink: redis::aio::PubSubSink,
    limit: Duration,
    listeners: HashMap<String, Vec<(u64, mpsc::Sender<()>)>>,
    /// The channels Redis has confirmed.
    subscribed: HashSet<String>,
}

impl Hub {
    /// Applies `batch` in order, brings the subscriptions in line with one UNSUBSCRIBE and one
    /// SUBSCRIBE, and only then tells the new listeners they are subscribed.
    async fn apply(&mut self, batch: Vec<Command>) -> Result<(), ()> {
        let mut touched = HashSet::new();
        let mut ready = Vec::new();
        for command in batch {
            match command {
                Command::Listen {
                    channel,
                    id,
                    messages,
                    ready: listener,
                } => {
                    self.listeners
                        .entry(channel.clone())
                        .or_default()
                        .push((id, messages));
                    touched.insert(channel);
                    ready.push(listener);
                }
                Command::Leave { channel, id } => {
                    if let Some(list) = self.listeners.get_mut(&channel) {
                        list.retain(|(listener, _)| *listener != id);
                        if list.is_empty() {
                            self.listeners.remove(&channel);
                        }
                    }
                    touched.insert(channel);
                }
            }
        }
        let (mut leave, mut join) = (Vec::new(), Vec::new());
        for channel in touched {
            match (
                self.subscribed.contains(&channel),
                self.listeners.contains_key(&channel),
            ) {
                (true, false) => leave.push(channel),
                (false, true) => join.push(channel),
                _ => {}
            }
        }
        if !leave.is_empty() {
            confirmed(timeout(self.limit, self.sink.unsubscribe(&leave)).await)?;
            for channel in &leave {
                self.subscribed.remove(channel);
            }
        }
        if !join.is_empty() {
            confirmed(timeout(self.limit, self.sink.subscribe(&join)).await)?;
            self.subscribed.extend(join);
        }
        for listener in ready {
            let _ = listener.send(());
        }
        Ok(())
    }
}

fn confirmed<E>(answer: Result<redis::RedisResult<()>, E>) -> Result<(), ()> {
    match answer {
        Ok(Ok(())) => Ok(()),
        _ => Err(()),
    }
}
