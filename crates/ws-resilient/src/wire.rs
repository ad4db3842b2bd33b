//! The byte stream under tungstenite, with a write queue that the socket task encodes its
//! own frames into.
//!
//! tungstenite's write path spends several hundred instructions on every frame before the
//! payload is even copied, which for small messages is more than the rest of this client's
//! work per message. The socket task therefore frames data messages and pings itself and
//! appends them here. tungstenite still writes its own frames (answers to the server's
//! pings, the close handshake) through the same queue, and each of its writes is taken
//! whole, so frames from the two never interleave on the wire.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Opcode of a text frame.
pub(crate) const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub(crate) const BINARY: u8 = 0x2;
/// Opcode of a ping frame.
pub(crate) const PING: u8 = 0x9;

/// A stream with a write queue of whole frames in front of it.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    inner: S,
    /// Bytes waiting to be written, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// Whether the upgrade is done. Until then, tungstenite's writes (the HTTP request) go
    /// straight through, as its handshake never flushes.
    framing: bool,
    /// Queued bytes above which tungstenite's writes wait for the queue to drain.
    max_queued: usize,
    /// The capacity the queue shrinks back to after a very large message.
    usual_capacity: usize,
}

impl<S> Wire<S> {
    /// Wraps `inner`. `usual_size` is how much is normally queued before a write;
    /// `max_queued` bounds what tungstenite may add on top.
    pub(crate) fn new(inner: S, usual_size: usize, max_queued: usize) -> Self {
        Self {
            inner,
            out: Vec::new(),
            written: 0,
            framing: false,
            max_queued,
            usual_capacity: usual_size,
        }
    }

    /// Switches to queueing, once the upgrade is done.
    pub(crate) fn start_framing(&mut self) {
        self.framing = true;
    }

    /// Bytes queued and not yet written.
    pub(crate) fn queued(&self) -> usize {
        self.out.len() - self.written
    }

    /// Appends one whole, final, masked frame carrying `payload`, as a client must send it.
    pub(crate) fn push_frame(&mut self, opcode: u8, payload: &[u8], mask: [u8; 4]) {
        self.compact();
        let length = payload.len();
        self.out.reserve(14 + length);

        self.out.push(0x80 | opcode);
        match length {
            0..=125 => self.out.push(0x80 | length as u8),
            126..=0xFFFF => {
                self.out.push(0x80 | 126);
                self.out.extend_from_slice(&(length as u16).to_be_bytes());
            }
            _ => {
                self.out.push(0x80 | 127);
                self.out.extend_from_slice(&(length as u64).to_be_bytes());
            }
        }
        self.out.extend_from_slice(&mask);

        let start = self.out.len();
        self.out.extend_from_slice(payload);
        apply_mask(&mut self.out[start..], mask);
    }

    /// Drops what was written already, so the queue does not creep forward in memory.
    fn compact(&mut self) {
        if self.written == 0 {
            return;
        }
        if self.written == self.out.len() {
            self.out.clear();
        } else if self.written >= self.out.len() / 2 {
            self.out.drain(..self.written);
        } else {
            return;
        }
        self.written = 0;
    }
}

impl<S: AsyncWrite + Unpin> Wire<S> {
    /// Writes out everything queued. Ready once the queue is empty.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: what was written is remembered, and the rest stays queued.
    pub(crate) fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let written =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.written..]))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += written;
        }

        self.out.clear();
        self.written = 0;
        if self.out.capacity() > 4 * self.usual_capacity {
            // One very large message should not pin its size for the connection's life.
            self.out.shrink_to(self.usual_capacity);
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Wire<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Wire<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.framing {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        if this.queued() >= this.max_queued {
            ready!(this.poll_drain(cx))?;
        }
        // Taken whole: tungstenite hands over whole frames, and a part of one left
        // behind could be overtaken by a frame of the socket task's.
        this.compact();
        this.out.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

/// XORs `data` with the repeated four-byte `mask`, eight bytes at a time.
fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let [a, b, c, d] = mask;
    let wide = u64::from_ne_bytes([a, b, c, d, a, b, c, d]);
    let mut words = data.chunks_exact_mut(8);
    for word in &mut words {
        let masked = u64::from_ne_bytes(word.try_into().expect("eight bytes")) ^ wide;
        word.copy_from_slice(&masked.to_ne_bytes());
    }
    // The tail starts at a multiple of eight, so the mask starts over with its first byte.
    for (index, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

    use super::*;

    fn unmasked(frame: &[u8]) -> (FrameHeader, Vec<u8>) {
        let mut cursor = Cursor::new(frame);
        let (header, length) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
        let start = cursor.position() as usize;
        assert_eq!(frame.len() - start, length as usize, "payload length");
        let mut payload = frame[start..].to_vec();
        let mask = header.mask.expect("a client frame is masked");
        for (index, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[index % 4];
        }
        (header, payload)
    }

    #[test]
    fn frames_of_every_length_class_parse_back_as_sent() {
        for length in [0, 1, 7, 8, 9, 125, 126, 127, 65_535, 65_536, 70_001] {
            let payload: Vec<u8> = (0..length).map(|i| (i * 31 % 251) as u8).collect();
            let mut wire = Wire::new((), 1024, 1024);
            wire.push_frame(BINARY, &payload, [0x6d, 0xb6, 0xb2, 0x80]);

            let (header, got) = unmasked(&wire.out);

            assert!(header.is_final);
            assert!(!header.rsv1 && !header.rsv2 && !header.rsv3);
            assert_eq!(header.opcode, OpCode::Data(Data::Binary));
            assert_eq!(got, payload, "length {length}");
        }
    }

    #[test]
    fn masking_matches_the_byte_by_byte_definition_at_every_length() {
        let mask = [1, 2, 4, 8];
        for length in 0..40 {
            let original: Vec<u8> = (0..length).map(|i| i as u8).collect();
            let mut fast = original.clone();
            apply_mask(&mut fast, mask);
            let slow: Vec<u8> = original
                .iter()
                .enumerate()
                .map(|(i, byte)| byte ^ mask[i % 4])
                .collect();
            assert_eq!(fast, slow, "length {length}");
        }
    }

    #[tokio::test]
    async fn writes_from_tungstenite_are_taken_whole_and_drained_in_order() {
        let (client, mut server) = tokio::io::duplex(64);
        let mut wire = Wire::new(client, 1024, 1 << 20);
        wire.start_framing();

        wire.push_frame(TEXT, b"first", [0; 4]);
        let mut tail = vec![0x8a, 0x80, 0, 0, 0, 0];
        tail.extend(std::iter::repeat_n(0, 100));
        // Larger than the duplex can take at once, yet accepted whole.
        let taken = std::future::poll_fn(|cx| Pin::new(&mut wire).poll_write(cx, &tail)).await;
        assert_eq!(taken.unwrap(), tail.len());

        let reader = tokio::spawn(async move {
            let mut all = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut server, &mut all)
                .await
                .unwrap();
            all
        });
        tokio::io::AsyncWriteExt::shutdown(&mut wire).await.unwrap();

        let all = reader.await.unwrap();
        assert_eq!(&all[..2], &[0x81, 0x85]);
        assert_eq!(&all[6..11], b"first");
        assert_eq!(&all[11..], &tail[..]);
    }
}
