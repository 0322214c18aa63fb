//! HTTP Datagrams (RFC 9297) on one QUIC connection: each QUIC DATAGRAM frame starts with
//! the quarter stream ID of the request it belongs to. One reader per connection (started
//! by the first CONNECT-UDP tunnel on it) hands each datagram to its stream's tunnel, and
//! drops those of streams with none (RFC 9297 §2.1 allows dropping them silently) or whose
//! tunnel is not keeping up (datagrams are unreliable: never buffered without bound).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

/// Datagrams a tunnel may have waiting before further ones are dropped.
const QUEUE: usize = 256;

/// The connection's datagram routes.
pub struct Datagrams {
    conn: quinn::Connection,
    routes: Mutex<Routes>,
}

#[derive(Default)]
struct Routes {
    by_stream: HashMap<u64, mpsc::Sender<Bytes>>,
    /// The reader, once started; it holds a handle of the connection, so it is stopped when
    /// the connection's serving ends ([`Datagrams::stop`]).
    reader: Option<tokio::task::JoinHandle<()>>,
    stopped: bool,
}

/// A tunnel's place in [`Datagrams`]: its datagrams arrive on `rx`; dropped, it leaves.
pub struct Registration {
    pub rx: mpsc::Receiver<Bytes>,
    owner: Arc<Datagrams>,
    quarter: u64,
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.owner.lock().by_stream.remove(&self.quarter);
    }
}

impl Datagrams {
    pub fn new(conn: quinn::Connection) -> Arc<Datagrams> {
        Arc::new(Datagrams {
            conn,
            routes: Mutex::new(Routes::default()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Routes> {
        self.routes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Routes the datagrams of request stream `stream_id` to the returned registration.
    pub fn register(self: &Arc<Self>, stream_id: u64) -> Registration {
        let quarter = stream_id / 4;
        let (tx, rx) = mpsc::channel(QUEUE);
        {
            let mut routes = self.lock();
            routes.by_stream.insert(quarter, tx);
            if routes.reader.is_none() && !routes.stopped {
                let me = self.clone();
                routes.reader = Some(tokio::spawn(async move { me.read().await }));
            }
        }
        Registration {
            rx,
            owner: self.clone(),
            quarter,
        }
    }

    /// The connection is done: the reader lets its handle go.
    pub fn stop(&self) {
        let mut routes = self.lock();
        routes.stopped = true;
        if let Some(r) = routes.reader.take() {
            r.abort();
        }
        routes.by_stream.clear();
    }

    /// Reads the connection's datagrams until it closes.
    async fn read(self: Arc<Self>) {
        while let Ok(d) = self.conn.read_datagram().await {
            let Some((quarter, at)) = varint(&d) else {
                continue;
            };
            let tx = self.lock().by_stream.get(&quarter).cloned();
            if let Some(tx) = tx {
                let _ = tx.try_send(d.slice(at..));
            }
        }
    }

    /// Sends `payload` as an HTTP Datagram of request stream `stream_id`; false when the
    /// peer takes no datagrams or it is too large for the path (it is dropped, as UDP would).
    pub fn send(&self, stream_id: u64, payload: &[u8]) -> bool {
        let mut d = BytesMut::with_capacity(payload.len() + 8);
        put_varint(&mut d, stream_id / 4);
        d.put_slice(payload);
        self.conn.send_datagram(d.freeze()).is_ok()
    }
}

/// A QUIC variable-length integer (RFC 9000 §16) at the start of `b`, and its length.
pub fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let first = *b.first()?;
    let len = 1usize << (first >> 6);
    let bytes = b.get(..len)?;
    let mut v = u64::from(first & 0x3f);
    for byte in &bytes[1..] {
        v = (v << 8) | u64::from(*byte);
    }
    Some((v, len))
}

/// Appends `v` as a QUIC variable-length integer (at most 2^62 - 1).
pub fn put_varint(b: &mut BytesMut, v: u64) {
    if v < 1 << 6 {
        b.put_u8(v as u8);
    } else if v < 1 << 14 {
        b.put_u16(0x4000 | v as u16);
    } else if v < 1 << 30 {
        b.put_u32(0x8000_0000 | v as u32);
    } else {
        b.put_u64(0xc000_0000_0000_0000 | v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints_round_trip_at_every_length() {
        for v in [
            0,
            63,
            64,
            16_383,
            16_384,
            1 << 29,
            (1 << 30) - 1,
            1 << 30,
            (1 << 62) - 1,
        ] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            b.put_u8(0xaa);
            let (got, len) = varint(&b).expect("decodes");
            assert_eq!((got, b[len]), (v, 0xaa), "{v}");
        }
        assert_eq!(varint(&[0x40]), None, "truncated");
    }
}
