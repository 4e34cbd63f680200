//! The TLS handshake over a TCP socket, with rustls' unbuffered connections, ending in a
//! [`TlsStream`] that takes over the records with the keys rustls derived.

use std::{io, sync::Arc};

use rustls::{
    client::{ClientConnectionData, UnbufferedClientConnection},
    kernel::KernelConnection,
    pki_types::ServerName,
    server::{ServerConnectionData, UnbufferedServerConnection},
    unbuffered::{ConnectionState, EncodeError, UnbufferedConnectionCommon, UnbufferedStatus},
    ClientConfig, Error, ExtractedSecrets, ServerConfig,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{
    errors::to_io,
    stream::{Session, TlsStream},
};

/// The most handshake bytes buffered from a peer at once: what a peer that never
/// completes a message can make us hold. rustls limits a handshake message to 64 KiB
/// (`MAX_HANDSHAKE_SIZE`) and its own buffered connections hold at most 64 KiB and one
/// 4 KiB read of one; 80 KiB also holds the end of a record that carried the message
/// before (review M2: was 256 KiB).
const MAX_HANDSHAKE_BUFFER: usize = 80 * 1024;
/// The buffer a handshake starts with: a ClientHello, or the client's certificate flight,
/// is a few KiB; the buffer doubles (up to [`MAX_HANDSHAKE_BUFFER`]) when it is nearly
/// full. A handshake that never gets its bytes (a flood of idle connections to port 15008)
/// holds this much.
const INITIAL_BUFFER: usize = 4 * 1024;
/// Free space below which the buffer grows before the next read.
const MIN_FREE: usize = 1024;
/// Room made for an encoded flight at a time.
const ENCODE_SIZE: usize = 16 * 1024;

/// Runs the client side of the handshake on `tcp` (TLS 1.3, the `config`'s verifiers).
/// Errors are I/O errors wrapping the [`rustls::Error`], as tokio-rustls reports them.
pub(crate) async fn connect<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    tcp: S,
) -> io::Result<TlsStream<S>> {
    let conn = UnbufferedClientConnection::new(config, name).map_err(to_io)?;
    handshake(conn, tcp).await
}

/// Runs the server side of the handshake on `tcp`.
pub(crate) async fn accept<S: AsyncRead + AsyncWrite + Unpin>(
    config: Arc<ServerConfig>,
    tcp: S,
) -> io::Result<TlsStream<S>> {
    let conn = UnbufferedServerConnection::new(config).map_err(to_io)?;
    handshake(conn, tcp).await
}

/// What the two sides of an unbuffered connection have in common for the handshake.
trait Handshaking: Send {
    type Data;
    fn common(&mut self) -> &mut UnbufferedConnectionCommon<Self::Data>;
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, Self::Data>;
    fn into_session(self) -> Result<(ExtractedSecrets, Box<dyn Session>), Error>;
}

impl Handshaking for UnbufferedClientConnection {
    type Data = ClientConnectionData;
    fn common(&mut self) -> &mut UnbufferedConnectionCommon<ClientConnectionData> {
        self
    }
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ClientConnectionData> {
        self.process_tls_records(incoming)
    }
    fn into_session(self) -> Result<(ExtractedSecrets, Box<dyn Session>), Error> {
        let (secrets, kernel) = self.dangerous_into_kernel_connection()?;
        Ok((secrets, Box::new(kernel)))
    }
}

impl Handshaking for UnbufferedServerConnection {
    type Data = ServerConnectionData;
    fn common(&mut self) -> &mut UnbufferedConnectionCommon<ServerConnectionData> {
        self
    }
    fn process<'c, 'i>(
        &'c mut self,
        incoming: &'i mut [u8],
    ) -> UnbufferedStatus<'c, 'i, ServerConnectionData> {
        self.process_tls_records(incoming)
    }
    fn into_session(self) -> Result<(ExtractedSecrets, Box<dyn Session>), Error> {
        let (secrets, kernel) = self.dangerous_into_kernel_connection()?;
        Ok((secrets, Box::new(kernel)))
    }
}

/// What a side does with a NewSessionTicket: a client keeps it (in rustls' store), a
/// server never gets one.
trait Tickets: Sized {
    fn new_session_ticket(conn: &mut KernelConnection<Self>, payload: &[u8]) -> Result<(), Error>;
}

impl Tickets for ClientConnectionData {
    fn new_session_ticket(conn: &mut KernelConnection<Self>, payload: &[u8]) -> Result<(), Error> {
        conn.handle_new_session_ticket(payload)
    }
}

impl Tickets for ServerConnectionData {
    fn new_session_ticket(_: &mut KernelConnection<Self>, _: &[u8]) -> Result<(), Error> {
        Err(Error::InappropriateHandshakeMessage {
            expect_types: vec![rustls::HandshakeType::KeyUpdate],
            got_type: rustls::HandshakeType::NewSessionTicket,
        })
    }
}

impl<D: Tickets> Session for KernelConnection<D>
where
    KernelConnection<D>: Send + Sync,
{
    fn update_tx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), Error> {
        self.update_tx_secret()
    }
    fn update_rx(&mut self) -> Result<(u64, rustls::ConnectionTrafficSecrets), Error> {
        self.update_rx_secret()
    }
    fn new_session_ticket(&mut self, payload: &[u8]) -> Result<(), Error> {
        D::new_session_ticket(self, payload)
    }
    fn suite(&self) -> rustls::SupportedCipherSuite {
        self.negotiated_cipher_suite()
    }
}

/// Drives `conn` through the handshake, then hands the records to a [`TlsStream`]: the
/// bytes the peer already sent after its last handshake message, and any application data
/// rustls already decrypted, go with it.
async fn handshake<C: Handshaking, S: AsyncRead + AsyncWrite + Unpin>(
    mut conn: C,
    mut tcp: S,
) -> io::Result<TlsStream<S>> {
    let mut incoming = vec![0u8; INITIAL_BUFFER];
    let mut filled = 0;
    let mut outgoing = Vec::new();
    let mut early = Vec::new();
    loop {
        let UnbufferedStatus { discard, state } = conn.process(&mut incoming[..filled]);
        let mut need_read = false;
        match state {
            Err(e) => {
                state_done(discard, &mut incoming, &mut filled);
                send_alert(&mut conn, &mut incoming[..filled], outgoing, &mut tcp).await;
                return Err(to_io(e));
            }
            Ok(ConnectionState::EncodeTlsData(mut enc)) => {
                let at = outgoing.len();
                outgoing.resize(at + ENCODE_SIZE, 0);
                let n = match enc.encode(&mut outgoing[at..]) {
                    Err(EncodeError::InsufficientSize(e)) => {
                        outgoing.resize(at + e.required_size, 0);
                        enc.encode(&mut outgoing[at..])
                    }
                    other => other,
                }
                .map_err(|e| io::Error::other(e.to_string()))?;
                outgoing.truncate(at + n);
            }
            Ok(ConnectionState::TransmitTlsData(t)) => {
                tcp.write_all(&outgoing).await?;
                outgoing.clear();
                t.done();
            }
            Ok(ConnectionState::BlockedHandshake) => need_read = true,
            Ok(ConnectionState::ReadTraffic(mut data)) => {
                while let Some(record) = data.next_record() {
                    let record = record.map_err(to_io)?;
                    early.extend_from_slice(record.payload);
                }
            }
            Ok(ConnectionState::WriteTraffic(_)) => {
                state_done(discard, &mut incoming, &mut filled);
                break;
            }
            Ok(ConnectionState::PeerClosed | ConnectionState::Closed) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the peer closed the TLS session during the handshake",
                ));
            }
            Ok(other) => {
                return Err(io::Error::other(format!(
                    "unexpected TLS handshake state {other:?}"
                )));
            }
        }
        state_done(discard, &mut incoming, &mut filled);
        if need_read {
            if incoming.len() - filled < MIN_FREE {
                if incoming.len() >= MAX_HANDSHAKE_BUFFER {
                    return Err(to_io(Error::General("handshake message too large".into())));
                }
                incoming.resize((incoming.len() * 2).min(MAX_HANDSHAKE_BUFFER), 0);
            }
            let n = tcp.read(&mut incoming[filled..]).await?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tls handshake eof",
                ));
            }
            filled += n;
        }
    }
    let peer = crate::identity::peer_identity(conn.common());
    let (secrets, session) = conn.into_session().map_err(to_io)?;
    TlsStream::new(tcp, secrets, session, &incoming[..filled], early, peer).map_err(to_io)
}

/// Removes the `discard` bytes rustls is done with from the front of the buffer.
fn state_done(discard: usize, incoming: &mut [u8], filled: &mut usize) {
    if discard > 0 {
        incoming.copy_within(discard..*filled, 0);
        *filled -= discard;
    }
}

/// After a failed handshake, sends what was encoded and the alert rustls queued for the
/// peer (best effort), so that the peer learns why (for example that its certificate was
/// refused). rustls is asked once: the queued alert comes before anything else, and a second
/// call would make it look at the input it already refused.
async fn send_alert<C: Handshaking, S: AsyncWrite + Unpin>(
    conn: &mut C,
    incoming: &mut [u8],
    mut outgoing: Vec<u8>,
    tcp: &mut S,
) {
    if let UnbufferedStatus {
        state: Ok(ConnectionState::EncodeTlsData(mut enc)),
        ..
    } = conn.process(incoming)
    {
        let mut buf = [0u8; 64];
        if let Ok(n) = enc.encode(&mut buf) {
            outgoing.extend_from_slice(&buf[..n]);
        }
    }
    if !outgoing.is_empty() {
        let _ = tcp.write_all(&outgoing).await;
    }
}
