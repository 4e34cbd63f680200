//! Moving bytes between the two halves of a proxied connection, with half-close: when one
//! side finishes sending, the other side's write half is shut down and the opposite
//! direction keeps flowing until it finishes too.

use tokio::net::TcpStream;

use super::ProxyContext;

const BUF: usize = 64 * 1024;

/// Copies both ways until both directions are done, then closes the connection's record.
/// When either side fails (a reset), the other side is reset too, as if there were no proxy.
pub async fn relay(ctx: &ProxyContext, id: u64, mut client: TcpStream, mut server: TcpStream) {
    let (sent, received, error) =
        match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUF, BUF).await {
            Ok((a, b)) => (a, b, None),
            Err(e) => {
                reset(&client);
                reset(&server);
                (0, 0, Some(e.to_string()))
            }
        };
    ctx.connections.close(id, sent, received, error);
}

/// Makes the coming close send a RST instead of a FIN: how a proxy tells a client that the
/// connection it accepted on behalf of a destination could not be completed.
pub fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO));
}
