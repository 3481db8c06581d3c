//! A TCP forwarder that takes a dependency away from a running process and gives it back.

use std::net::SocketAddr;
use std::sync::Arc;

/// A TCP forwarder that can cut every connection and refuse new ones, or hold them without
/// an answer, to take a dependency away from a running process and give it back.
pub struct TcpProxy {
    pub port: u16,
    mode: Arc<std::sync::atomic::AtomicU8>,
    generation: tokio::sync::watch::Sender<u64>,
}

const FORWARD: u8 = 0;
const REFUSE: u8 = 1;
const STALL: u8 = 2;

impl TcpProxy {
    pub async fn start(target: SocketAddr) -> TcpProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let mode = Arc::new(std::sync::atomic::AtomicU8::new(FORWARD));
        let (generation, _) = tokio::sync::watch::channel(0u64);
        let current = Arc::clone(&mode);
        let cuts = generation.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    return;
                };
                let mut cut = cuts.subscribe();
                match current.load(std::sync::atomic::Ordering::SeqCst) {
                    REFUSE => drop(inbound),
                    STALL => {
                        // Accepted, never answered, until the mode changes.
                        tokio::spawn(async move {
                            let _ = cut.changed().await;
                            drop(inbound);
                        });
                    }
                    _ => {
                        tokio::spawn(async move {
                            let Ok(mut outbound) = tokio::net::TcpStream::connect(target).await
                            else {
                                return;
                            };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                                _ = cut.changed() => {}
                            }
                        });
                    }
                }
            }
        });
        TcpProxy {
            port,
            mode,
            generation,
        }
    }

    /// A proxy to `host:port` (its IPv4 address).
    pub async fn to_authority(authority: &str) -> TcpProxy {
        let target = tokio::net::lookup_host(authority)
            .await
            .unwrap()
            .find(|a| a.is_ipv4())
            .unwrap_or_else(|| panic!("{authority} has no IPv4 address"));
        TcpProxy::start(target).await
    }

    fn switch(&self, mode: u8) {
        self.mode.store(mode, std::sync::atomic::Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    /// Cuts open connections and refuses new ones.
    pub fn disable(&self) {
        self.switch(REFUSE);
    }

    /// Cuts open connections and holds new ones without an answer.
    pub fn stall(&self) {
        self.switch(STALL);
    }

    pub fn enable(&self) {
        self.mode
            .store(FORWARD, std::sync::atomic::Ordering::SeqCst);
    }
}
