//! The server: accepts one client at a time and runs a session that decodes each message,
//! validates it, dispatches it to the [`Device`] and answers it.

mod accept;
mod controls;
mod dispatch;
mod dma_channel;
pub mod observe;
mod session;
mod shutdown;

use std::os::unix::net::UnixListener;
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use tracing::{info, warn};

use crate::dma::DmaTable;
use crate::error::Error;
use crate::seam::Device;
use crate::sync::relock;
use crate::transport::{SocketTransport, Transport};
use crate::wire;
use accept::{Acceptor, Seat};
use session::Session;

pub use crate::listen::{bind_socket, bind_socket_with, BoundPath, SocketAccess, SUN_PATH_MAX};
pub use accept::Peer;
pub use controls::{Attached, Controls, ReplyDelay};
use observe::{Event, Observer};
pub use shutdown::Shutdown;

/// The protocol version we speak.
pub(crate) const VERSION_MAJOR: u16 = 0;
/// Our highest minor version.
pub(crate) const VERSION_MINOR: u16 = 2;

/// Server limits.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest data transfer we accept (the client may lower it).
    pub max_data_xfer_size: u32,
    /// Most DMA regions per client.
    pub max_dma_maps: u32,
    /// Most fds we accept in one message.
    pub max_msg_fds: u32,
    /// When set, only these uids may connect (SO_PEERCRED).
    pub allow_uids: Option<Vec<u32>>,
    /// A client whose message stays incomplete this long after its first bytes is dropped (it
    /// would hold the device forever). Waiting between messages is never limited.
    pub stall_timeout: Duration,
}

/// Default [`ServerConfig::stall_timeout`]: real clients send whole messages at once.
pub(crate) const DEFAULT_STALL_TIMEOUT: Duration = Duration::from_secs(5);

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_data_xfer_size: wire::DEFAULT_MAX_DATA_XFER_SIZE,
            max_dma_maps: wire::DEFAULT_MAX_DMA_MAPS,
            max_msg_fds: 16,
            allow_uids: None,
            stall_timeout: DEFAULT_STALL_TIMEOUT,
        }
    }
}

/// A vfio-user server for one device.
///
/// The device sits behind a lock taken for each message, so a control plane holding
/// [`Server::shared_device`] can look at it or change it between messages.
pub struct Server<D: Device> {
    device: Arc<Mutex<D>>,
    config: ServerConfig,
    observer: Option<Arc<dyn Observer>>,
    controls: Controls,
}

impl<D: Device> std::fmt::Debug for Server<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .field("observed", &self.observer.is_some())
            .finish_non_exhaustive()
    }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
    /// The client closed the connection.
    Closed,
    /// The stream could not be kept in sync (e.g. msg_size below a header), so we closed it.
    Desync,
    /// Shutdown was requested.
    Shutdown,
    /// The client stopped in the middle of a message for longer than the stall timeout.
    Stalled,
    /// [`Controls::drop_client`] disconnected it.
    Dropped,
}

impl SessionEnd {
    /// Its name as logs, traces and event streams spell it (`Closed`, `Dropped`, ...).
    pub fn name(self) -> &'static str {
        match self {
            SessionEnd::Closed => "Closed",
            SessionEnd::Desync => "Desync",
            SessionEnd::Shutdown => "Shutdown",
            SessionEnd::Stalled => "Stalled",
            SessionEnd::Dropped => "Dropped",
        }
    }
}

impl<D: Device> Server<D> {
    /// A server for `device`.
    pub fn new(device: D, config: ServerConfig) -> Self {
        Self::shared(Arc::new(Mutex::new(device)), config)
    }

    /// A server for a device that others hold too (see [`Server::shared_device`]).
    pub fn shared(device: Arc<Mutex<D>>, config: ServerConfig) -> Self {
        Self {
            device,
            config,
            observer: None,
            controls: Controls::new(),
        }
    }

    /// Reports every connection, request and reply to `observer`.
    pub fn with_observer(mut self, observer: Arc<dyn Observer>) -> Self {
        self.observer = Some(observer);
        self
    }

    /// Uses `controls` (shared with a control plane) instead of the server's own.
    pub fn with_controls(mut self, controls: Controls) -> Self {
        self.controls = controls;
        self
    }

    /// The device, behind the lock the session takes for each message.
    pub fn shared_device(&self) -> Arc<Mutex<D>> {
        self.device.clone()
    }

    /// The run-time controls (drop the client, refuse connections, delay replies).
    pub fn controls(&self) -> &Controls {
        &self.controls
    }

    /// Serves clients one after another until `shutdown` is triggered. Accepting runs on a
    /// thread of its own, so a client that connects while another holds the device is answered
    /// at once (EBUSY) instead of waiting unseen.
    pub fn serve(&mut self, listener: UnixListener, shutdown: &Shutdown) -> Result<(), Error> {
        listener.set_nonblocking(true)?;
        let seat = Seat::new()?;
        let (handoff, clients) = mpsc::sync_channel(0);
        let allow_uids = self.config.allow_uids.clone();
        let observer = self.observer.clone();
        let controls = self.controls.clone();
        std::thread::scope(|scope| {
            let acceptor = Acceptor::new(
                &listener,
                shutdown,
                allow_uids.as_deref(),
                &seat,
                handoff,
                accept::Watch {
                    observer: observer.as_deref(),
                    controls: &controls,
                },
            );
            let accepting = scope.spawn(move || acceptor.run());
            // Ends when the acceptor stops (shutdown or failure) and drops its sender.
            while let Ok(client) = clients.recv() {
                self.serve_client(client, shutdown);
                seat.release();
            }
            accepting.join().unwrap_or_else(|_| {
                Err(Error::Io(std::io::Error::other(
                    "the accept thread panicked",
                )))
            })
        })
    }

    fn serve_client(&mut self, client: accept::Client, shutdown: &Shutdown) {
        let accept::Client { stream, peer, conn } = client;
        // A reply the client stops reading is bounded like a request it stops sending: the
        // session ends after the stall timeout instead of waiting in a send for good.
        let blocking = stream
            .set_nonblocking(false)
            .and_then(|()| stream.set_write_timeout(Some(self.config.stall_timeout)));
        if let Err(e) = blocking {
            warn!(%peer, "cannot serve a client: {e}");
            return;
        }
        let Some(registration) = shutdown.register(conn.clone()) else {
            return;
        };
        info!(%peer, "client connected");
        self.controls.attach(peer, conn);
        self.observe(&Event::Connected(peer));
        let drops = self.controls.drops();
        let mut transport = SocketTransport::new(stream);
        transport.set_stall_timeout(Some(self.config.stall_timeout));
        let mut end = self.run_session(transport, Some(shutdown.clone()));
        self.controls.detach();
        drop(registration);
        if self.controls.drops() != drops {
            // Whatever the session saw (end of stream, a failed send) came from the drop.
            end = Ok(SessionEnd::Dropped);
        }
        match &end {
            Ok(how) => info!(%peer, ?how, "client disconnected"),
            Err(e) => warn!(%peer, "session ended: {}", crate::error::error_chain(e)),
        }
        self.observe(&Event::Disconnected(peer, end.as_ref().copied()));
    }

    fn observe(&self, event: &Event<'_>) {
        if let Some(o) = &self.observer {
            o.observe(event);
        }
    }

    /// Runs one session to its end. Per-client state (DMA, eventfds) is dropped at the end;
    /// device state is kept.
    pub fn serve_connection<T: Transport>(&mut self, transport: T) -> Result<SessionEnd, Error> {
        self.run_session(transport, None)
    }

    fn run_session<T: Transport>(
        &mut self,
        mut transport: T,
        stop: Option<Shutdown>,
    ) -> Result<SessionEnd, Error> {
        let mut session = Session::new(
            &self.config,
            self.observer.clone(),
            self.controls.clone(),
            stop,
        );
        {
            let mut device = relock(&self.device);
            device.client_attached();
            device.dma_attached(session.dma.clone());
        }
        let end = session.run(&self.device, &mut transport);
        session.dma.with(DmaTable::clear);
        session.dma.set_channel(None);
        relock(&self.device).client_detached();
        end
    }
}
