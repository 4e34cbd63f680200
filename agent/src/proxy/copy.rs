//! Moving bytes between the two halves of a proxied connection, with half-close: when one
//! side finishes sending, the other side's write half is shut down and the opposite
//! direction keeps flowing until it finishes too.

use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
};

use super::ProxyContext;

const BUF: usize = 64 * 1024;

/// A side of a relay that can be closed abortively when the other side failed.
pub trait Reset {
    fn reset(&self);
}

impl Reset for TcpStream {
    /// Makes the coming close send a RST instead of a FIN: how a proxy tells a client that
    /// the connection it accepted on behalf of a destination could not be completed.
    fn reset(&self) {
        let _ = socket2::SockRef::from(self).set_linger(Some(std::time::Duration::ZERO));
    }
}

impl<T> Reset for hyper_util::rt::TokioIo<T> {
    /// Dropping a tunnel that was not shut down resets its HTTP/2 stream.
    fn reset(&self) {}
}

pub fn reset(stream: &TcpStream) {
    stream.reset();
}

/// Copies both ways until both directions are done, then closes the connection's record.
/// When either side fails (a reset), the other side is reset too, as if there were no proxy.
pub async fn relay<A, B>(ctx: &ProxyContext, id: u64, mut client: A, mut server: B)
where
    A: AsyncRead + AsyncWrite + Unpin + Reset,
    B: AsyncRead + AsyncWrite + Unpin + Reset,
{
    let (sent, received, error) =
        match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUF, BUF).await {
            Ok((a, b)) => (a, b, None),
            Err(e) => {
                client.reset();
                server.reset();
                (0, 0, Some(e.to_string()))
            }
        };
    ctx.connections.close(id, sent, received, error);
}
