//! A minimal Socket.IO v5 / Engine.IO v4 WebSocket client (tokio-tungstenite) built on the
//! dialogue crate's packet codec: connect with an auth payload, emit with acks, receive events.

use dialogue::protocol::socketio::{self, SioKind};
use futures_util::task::AtomicWaker;
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// Bytes read from the socket at a time; larger messages still arrive whole.
const READ_BUFFER: usize = 2 * 1024;

/// Source addresses connections are spread over: 127.0.0.1 … 127.0.0.N (`--source-ips`), so
/// more connections than one address has ephemeral ports (about 28,000) can be opened to one
/// server port. 1 = the kernel picks the address.
static SOURCE_IPS: AtomicU64 = AtomicU64::new(1);
static NEXT_SOURCE: AtomicU64 = AtomicU64::new(0);

/// Spreads the connections opened from now on over `n` loopback source addresses.
pub fn spread_source_ips(n: u64) {
    SOURCE_IPS.store(n.clamp(1, 254), Ordering::Relaxed);
}

/// Opens the WebSocket: from the next source address when they are spread.
async fn open_ws(
    url: &str,
    config: WebSocketConfig,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    let spread = SOURCE_IPS.load(Ordering::Relaxed);
    if spread <= 1 {
        let (ws, _) = tokio_tungstenite::connect_async_with_config(url, Some(config), true)
            .await
            .map_err(|e| format!("connect {url}: {e}"))?;
        return Ok(ws);
    }
    let host = url
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .ok_or(format!("no host in {url}"))?;
    let server = tokio::net::lookup_host(host)
        .await
        .map_err(|e| format!("resolve {host}: {e}"))?
        .find(|a| a.is_ipv4())
        .ok_or(format!("no IPv4 address for {host}"))?;
    let n = NEXT_SOURCE.fetch_add(1, Ordering::Relaxed) % spread;
    let source = std::net::Ipv4Addr::new(127, 0, 0, 1 + n as u8);
    let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
    socket
        .bind((source, 0).into())
        .map_err(|e| format!("bind {source}: {e}"))?;
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect {url} from {source}: {e}"))?;
    let _ = stream.set_nodelay(true);
    let stream = tokio_tungstenite::MaybeTlsStream::Plain(stream);
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config))
        .await
        .map_err(|e| format!("connect {url}: {e}"))?;
    Ok(ws)
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// Messages the client queues for its connection's task. Lighter than a channel, which the
/// task would poll after every frame it reads: here it checks one flag.
#[derive(Default)]
struct Outbox {
    /// `queue` has messages.
    queued: AtomicBool,
    /// The connection has ended: nothing queued will be sent.
    closed: AtomicBool,
    waker: AtomicWaker,
    queue: Mutex<Vec<Message>>,
}

impl Outbox {
    /// Queues `msg` for the task; `false` once the connection has ended.
    fn push(&self, msg: Message) -> bool {
        if self.closed.load(Ordering::Acquire) {
            return false;
        }
        if let Ok(mut q) = self.queue.lock() {
            q.push(msg);
        }
        self.queued.store(true, Ordering::Release);
        self.waker.wake();
        true
    }

    /// The queued messages, if any; otherwise wakes the task when some come.
    fn poll_take(&self, cx: &mut Context<'_>) -> Poll<Vec<Message>> {
        self.waker.register(cx.waker());
        if !self.queued.swap(false, Ordering::AcqRel) {
            return Poll::Pending;
        }
        Poll::Ready(
            self.queue
                .lock()
                .map(|mut q| std::mem::take(&mut *q))
                .unwrap_or_default(),
        )
    }
}

/// What the connection's task does next.
enum Next {
    Read(Option<Result<Message, tokio_tungstenite::tungstenite::Error>>),
    Write(Vec<Message>),
}

/// What a client does with the application events it receives.
pub enum OnEvent {
    /// Drops them.
    Ignore,
    /// Queues them for [`Client::next_event`].
    Collect,
    /// Hands each to a function on the connection's own task, as it is read: no queue and no
    /// second task to wake (the latency scenarios' subscribers, the load generator's hottest
    /// path).
    Handle(Box<dyn FnMut(Event) + Send>),
}

/// One connected client.
pub struct Client {
    out: Arc<Outbox>,
    pending: Pending,
    next_id: AtomicU64,
    /// Received application events, when collected.
    events: Option<mpsc::UnboundedReceiver<Event>>,
    /// The task that reads and writes the connection (aborted by [`Client::cut`]).
    task: tokio::task::JoinHandle<()>,
}

/// A received Socket.IO event frame, kept as the WebSocket message's own buffer (no copy).
pub struct Event(Utf8Bytes);

impl Event {
    /// The Socket.IO data: `["name", payload]` JSON text.
    pub fn data(&self) -> &str {
        // The frame is `4` (Engine.IO message) + `2` (Socket.IO EVENT) + the data.
        &self.0.as_str()[2..]
    }
}

/// `http://host:port` → the Engine.IO WebSocket endpoint.
pub fn ws_url(url: &str) -> String {
    let base = url.trim_end_matches('/');
    let base = base
        .strip_prefix("http://")
        .map(|r| format!("ws://{r}"))
        .or_else(|| base.strip_prefix("https://").map(|r| format!("wss://{r}")))
        .unwrap_or_else(|| base.to_owned());
    format!("{base}/socket.io/?EIO=4&transport=websocket")
}

impl Client {
    /// Connects, completes the Socket.IO CONNECT with `{userId}`, and starts the I/O task.
    /// With `collect_events`, received events are queued on [`Client::events`].
    pub async fn connect(url: &str, user_id: &str, collect_events: bool) -> Result<Client, String> {
        let on_event = if collect_events {
            OnEvent::Collect
        } else {
            OnEvent::Ignore
        };
        Self::connect_handling(url, user_id, on_event).await
    }

    /// [`Client::connect`], doing `on_event` with received events.
    pub async fn connect_handling(
        url: &str,
        user_id: &str,
        on_event: OnEvent,
    ) -> Result<Client, String> {
        let auth = serde_json::json!({ "userId": user_id });
        Ok(Self::connect_with(url, &auth, on_event).await?.0)
    }

    /// [`Client::connect_handling`] with any CONNECT `auth` payload; also answers the
    /// server's CONNECT answer (`{sid, pid?}`).
    pub async fn connect_with(
        url: &str,
        auth: &Value,
        on_event: OnEvent,
    ) -> Result<(Client, Value), String> {
        // A small read buffer (the default is 128 KiB): thousands of clients share one process,
        // and tungstenite zeroes this much before each read. Larger messages still arrive whole.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let mut ws = open_ws(&ws_url(url), config).await?;
        // Engine.IO open packet.
        match ws.next().await {
            Some(Ok(Message::Text(t))) if t.starts_with('0') => {}
            other => return Err(format!("no open packet: {other:?}")),
        }
        ws.send(Message::text(format!("40{auth}")))
            .await
            .map_err(|e| e.to_string())?;

        let out = Arc::new(Outbox::default());
        let pending: Pending = Arc::default();
        // What the task does with an event: nothing, queue it (a channel only then), or hand
        // it to the handler.
        let (events, mut handler, collected) = match on_event {
            OnEvent::Ignore => (None, None, None),
            OnEvent::Collect => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Some(tx), None, Some(rx))
            }
            OnEvent::Handle(f) => (None, Some(f), None),
        };
        let (ready_tx, ready_rx) = oneshot::channel();

        // One task reads and writes the whole (unsplit) stream: a received frame wakes one
        // task and takes no lock. A dropped client's connection stays open (and answers
        // pings) until the server closes it.
        let (task_pending, task_out) = (pending.clone(), out.clone());
        let task = tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                let next = std::future::poll_fn(|cx| match ws.poll_next_unpin(cx) {
                    Poll::Ready(msg) => Poll::Ready(Next::Read(msg)),
                    Poll::Pending => task_out.poll_take(cx).map(Next::Write),
                })
                .await;
                let msg = match next {
                    Next::Read(msg) => msg,
                    Next::Write(msgs) => {
                        let mut msgs = futures_util::stream::iter(msgs.into_iter().map(Ok));
                        if ws.send_all(&mut msgs).await.is_err() {
                            break;
                        }
                        continue;
                    }
                };
                let Some(Ok(msg)) = msg else { break };
                let Message::Text(frame) = msg else { continue };
                let text = frame.as_str();
                match text.as_bytes().first() {
                    Some(b'2') => {
                        let pong = ws.send(Message::text("3")).await;
                        if pong.is_err() {
                            break;
                        }
                    }
                    Some(b'4') => {
                        // `text` is `4` (Engine.IO message) + a Socket.IO packet.
                        let data = &text[1..];
                        if let Some(connect) = data.strip_prefix('0') {
                            if let Some(tx) = ready.take() {
                                let answer = serde_json::from_str(connect).unwrap_or_default();
                                let _ = tx.send(answer);
                            }
                        } else if data.starts_with('2') {
                            if let Some(f) = handler.as_mut() {
                                f(Event(frame));
                            } else if let Some(tx) = &events {
                                let _ = tx.send(Event(frame));
                            }
                        } else if let Ok(p) = socketio::decode(data) {
                            if p.kind == SioKind::Ack {
                                let tx = p.id.and_then(|id| {
                                    task_pending.lock().ok().and_then(|mut m| m.remove(&id))
                                });
                                let value = match p.data {
                                    Some(Value::Array(mut items)) if !items.is_empty() => {
                                        items.swap_remove(0)
                                    }
                                    _ => Value::Null,
                                };
                                if let Some(tx) = tx {
                                    let _ = tx.send(value);
                                }
                            }
                        }
                    }
                    _ => {}
                }
            }
            // The connection ended: requests still waiting for their ack fail now instead of
            // waiting for ever (and later ones at once).
            task_out.closed.store(true, Ordering::Release);
            if let Ok(mut m) = task_pending.lock() {
                m.clear();
            }
        });
        let answer: Value = ready_rx
            .await
            .map_err(|_| "the server closed before CONNECT completed".to_owned())?;
        let client = Client {
            out,
            pending,
            next_id: AtomicU64::new(1),
            events: collected,
            task,
        };
        Ok((client, answer))
    }

    /// Emits `event` with an ack id and waits for the ack's first argument.
    pub async fn request(&self, event: &str, payload: &Value) -> Result<Value, String> {
        let rx = self.send_request(event, payload)?;
        rx.await.map_err(|_| "connection closed".to_owned())
    }

    /// Emits `event` with an ack id; the receiver resolves with the ack.
    pub fn send_request(
        &self,
        event: &str,
        payload: &Value,
    ) -> Result<oneshot::Receiver<Value>, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut m) = self.pending.lock() {
            m.insert(id, tx);
        }
        let frame = socketio::encode_event_with_ack(id, event, &payload.to_string());
        if !self.out.push(Message::text(frame)) {
            return Err("connection closed".to_owned());
        }
        Ok(rx)
    }

    /// The next received event, if events are collected.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.as_mut()?.recv().await
    }

    /// The connection is still open (its task has not seen it end).
    pub fn is_open(&self) -> bool {
        !self.task.is_finished()
    }

    /// Closes the connection.
    pub fn close(&self) {
        self.out.push(Message::Close(None));
    }

    /// Cuts the connection as a failing network would: the socket is dropped, with no
    /// WebSocket or Engine.IO close.
    pub fn cut(self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that completes the Engine.IO and Socket.IO handshakes, then drops the
    /// connection on the first message it gets.
    async fn hang_up_after_connect() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut ws = tokio_tungstenite::accept_async(tcp).await.unwrap();
            let open = r#"0{"sid":"s","upgrades":[],"pingInterval":25000,"pingTimeout":20000,"maxPayload":1000000}"#;
            ws.send(Message::text(open)).await.unwrap();
            let _connect = ws.next().await;
            ws.send(Message::text(r#"40{"sid":"x"}"#)).await.unwrap();
            let _request = ws.next().await;
        });
        url
    }

    #[tokio::test]
    async fn a_request_fails_once_the_connection_ends() {
        let url = hang_up_after_connect().await;
        let client = Client::connect(&url, "u", false).await.unwrap();
        let join = serde_json::json!({ "roomId": "r" });
        let asked = client.request("dialogue:join", &join);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), asked).await;
        assert_eq!(answer, Ok(Err("connection closed".to_owned())));
        // The connection's task ends just after it failed the request.
        for _ in 0..100 {
            if !client.is_open() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(!client.is_open(), "the client still counts as open");
        // A later request fails at once.
        let later = client.request("dialogue:join", &join);
        let answer = tokio::time::timeout(std::time::Duration::from_secs(1), later).await;
        assert_eq!(answer, Ok(Err("connection closed".to_owned())));
    }
}
