//! A fault-injecting TCP proxy between replicas and a real `redis-server`, on loopback.
//!
//! Point a store at [`FaultProxy::url`] and switch faults on and off with [`FaultProxy::set`]:
//!
//! - [`Fault::Latency`]: every chunk, each way, arrives that much later;
//! - [`Fault::BlackHole`]: nothing moves either way and new connections hang; when the fault
//!   ends, the connections that were held die (as TCP gives up on a path that lost everything);
//! - [`Fault::Reset`]: every open connection is reset at once, and new ones are reset on arrival;
//! - [`Fault::Pause`]: nothing moves and new connections wait, and when the pause ends,
//!   everything held is delivered (a stalled network or a stalled peer).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// What the proxy does to the traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forwards everything at once.
    Healthy,
    /// Delays every chunk, each way.
    Latency(Duration),
    /// Drops into a black hole; the held connections die when it ends.
    BlackHole,
    /// Resets every connection.
    Reset,
    /// Holds everything, and delivers it when the pause ends.
    Pause,
}

/// The proxy; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    connections: Arc<AtomicU64>,
    accept: JoinHandle<()>,
}

impl FaultProxy {
    /// A proxy on a free loopback port to `upstream`, healthy, on the current runtime.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (fault, watch) = watch::channel(Fault::Healthy);
        let connections = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&connections);
        let accept = tokio::spawn(async move {
            let mut tasks = Vec::new();
            while let Ok((client, _)) = listener.accept().await {
                counted.fetch_add(1, Ordering::Relaxed);
                tasks.retain(|task: &AbortOnDrop| !task.0.is_finished());
                tasks.push(AbortOnDrop(tokio::spawn(serve(
                    client,
                    upstream,
                    watch.clone(),
                ))));
            }
        });
        FaultProxy {
            addr,
            fault,
            connections,
            accept,
        }
    }

    /// `redis://` at the proxy.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Switches to `fault`.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// Back to forwarding everything.
    pub fn heal(&self) {
        self.set(Fault::Healthy);
    }

    /// How many connections the proxy accepted so far.
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Why a connection ends.
struct Broken;

/// Waits until the fault lets traffic through; `Err` if the connection must die.
async fn passable(fault: &mut watch::Receiver<Fault>) -> Result<Fault, Broken> {
    let mut held_by_black_hole = false;
    loop {
        let now = *fault.borrow_and_update();
        match now {
            Fault::Reset => return Err(Broken),
            Fault::BlackHole => held_by_black_hole = true,
            Fault::Pause => {}
            Fault::Healthy | Fault::Latency(_) if held_by_black_hole => return Err(Broken),
            Fault::Healthy | Fault::Latency(_) => return Ok(now),
        }
        fault.changed().await.map_err(|_| Broken)?;
    }
}

async fn serve(client: TcpStream, upstream: SocketAddr, mut fault: watch::Receiver<Fault>) {
    client.set_zero_linger().ok();
    if passable(&mut fault).await.is_err() {
        return;
    }
    let Ok(server) = TcpStream::connect(upstream).await else {
        return;
    };
    server.set_zero_linger().ok();
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    tokio::select! {
        _ = pump(client_read, server_write, fault.clone()) => {}
        _ = pump(server_read, client_write, fault) => {}
    }
    // Dropping both sockets with a zero linger resets them.
}

async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
) -> Result<(), Broken> {
    let mut buffer = vec![0u8; 16 * 1024];
    loop {
        let now = passable(&mut fault).await?;
        tokio::select! {
            read = from.read(&mut buffer) => {
                let n = read.map_err(|_| Broken)?;
                if n == 0 {
                    return Ok(());
                }
                if let Fault::Latency(delay) = now {
                    tokio::time::sleep(delay).await;
                }
                // What was read before a pause or black hole still goes through once it passes.
                passable(&mut fault).await?;
                to.write_all(&buffer[..n]).await.map_err(|_| Broken)?;
            }
            changed = fault.changed() => changed.map_err(|_| Broken)?,
        }
    }
}
