//! A CRI v1 client (RuntimeService and ImageService) over the daemon's unix socket.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::error::{Error, Result};

/// Largest gRPC message accepted, as kubelet allows (16 MiB).
pub const MAX_MESSAGE: usize = 16 * 1024 * 1024;
/// Deadline of every call made through a [`Client`].
pub const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// A connected CRI client; cloning it or its service clients shares one connection.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
    channel: Channel,
}

impl Client {
    /// Connects to the CRI socket at `socket`.
    ///
    /// The connection lives on a background runtime shared by every client of the test
    /// process, not on the caller's: a test thread that blocks (a `Drop` waiting for the
    /// daemon to exit) must not stall the connection, or the daemon's graceful shutdown
    /// would wait for an HTTP/2 peer that cannot answer.
    pub async fn connect(socket: impl AsRef<Path>) -> Result<Client> {
        let socket = socket.as_ref().to_path_buf();
        let path = socket.clone();
        // The URI is a placeholder: the connector ignores it and dials the unix socket.
        let endpoint = Endpoint::from_static("http://[::]:50051")
            .connect_timeout(Duration::from_secs(5))
            .timeout(CALL_TIMEOUT)
            .executor(Background(background().handle().clone()));
        let connect = async move { connect_unix(endpoint, &path).await };
        let channel = background()
            .spawn(connect)
            .await
            .map_err(|e| Error::Environment(format!("grpc connect task failed: {e}")))?
            .map_err(|source| Error::Connect {
                socket: socket.clone(),
                source,
            })?;
        Ok(Client { socket, channel })
    }

    /// The socket this client dials.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// A RuntimeService client (pods, containers, status).
    pub fn runtime(&self) -> RuntimeServiceClient<Channel> {
        RuntimeServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }

    /// An ImageService client (pull, list, status, remove, fs info).
    pub fn images(&self) -> ImageServiceClient<Channel> {
        ImageServiceClient::new(self.channel.clone())
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE)
    }
}

/// Connects `endpoint` (its URI a placeholder) to the unix socket at `socket`.
pub async fn connect_unix(
    endpoint: Endpoint,
    socket: &Path,
) -> std::result::Result<Channel, tonic::transport::Error> {
    let path = socket.to_path_buf();
    endpoint
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
}

/// The runtime that drives every client connection of this process.
fn background() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("berth-e2e-grpc")
            .enable_all()
            .build()
            .expect("build the gRPC client runtime")
    })
}

/// Spawns tonic's connection tasks on the background runtime.
#[derive(Clone)]
struct Background(tokio::runtime::Handle);

impl<F> hyper::rt::Executor<F> for Background
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}

/// Lets the fixtures take a daemon or a client of its own.
impl AsRef<Client> for Client {
    fn as_ref(&self) -> &Client {
        self
    }
}
