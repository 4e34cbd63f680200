//! Moving bytes between the two halves of a proxied connection, with half-close: when one
//! side finishes sending, the other side's write half is shut down and the opposite
//! direction keeps flowing until it finishes too.

use tokio::net::TcpStream;

use super::ProxyContext;

const BUF: usize = 64 * 1024;

/// Copies both ways until both directions are done, then closes the connection's record.
pub async fn relay(ctx: &ProxyContext, id: u64, mut client: TcpStream, mut server: TcpStream) {
    let (sent, received, error) =
        match tokio::io::copy_bidirectional_with_sizes(&mut client, &mut server, BUF, BUF).await {
            Ok((a, b)) => (a, b, None),
            Err(e) => (0, 0, Some(e.to_string())),
        };
    ctx.connections.close(id, sent, received, error);
}
