//! The byte stream under tungstenite, with a write queue that the socket task frames its
//! messages into and a read buffer that it takes simple frames from.
//!
//! tungstenite spends several hundred instructions on every frame either way, which for
//! small messages is more than the rest of this client's work per message. So the socket
//! task does the common cases itself and leaves the rest to tungstenite:
//!
//! - Writing, it frames data messages and pings and appends them to the queue.
//!   tungstenite writes its own frames (answers to the server's pings, the close
//!   handshake) through the same queue, and each of its writes is taken whole, so frames
//!   from the two never interleave on the wire.
//! - Reading, it takes whole, final, unmasked text and binary frames of modest size from
//!   the read buffer. Any other frame (control frames, fragments, anything malformed or
//!   too large) is handed to tungstenite whole, and so is everything while tungstenite is
//!   in the middle of a fragmented message, so its checks and its state stay as if it had
//!   read every frame itself.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::blocks::Blocks;

/// Opcode of a text frame.
pub(crate) const TEXT: u8 = 0x1;
/// Opcode of a binary frame.
pub(crate) const BINARY: u8 = 0x2;
/// Opcode of a ping frame.
pub(crate) const PING: u8 = 0x9;
/// Opcode of a frame that continues a fragmented message.
const CONTINUATION: u8 = 0x0;

/// Bytes asked of the stream per read.
const READ_SIZE: usize = 64 << 10;

/// What the socket task should do about the frame at the front of the read buffer.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Front {
    /// A whole data frame it may take itself: its payload is `rbuf[start..end]`.
    Data {
        text: bool,
        start: usize,
        end: usize,
    },
    /// Let tungstenite read the next frame.
    Tungstenite,
    /// More bytes must be read first.
    More,
}

/// The header of a frame, as far as deciding who reads it goes.
#[derive(Debug)]
struct Header {
    is_final: bool,
    reserved_bits: bool,
    opcode: u8,
    masked: bool,
    /// Header bytes, mask included.
    length: usize,
    payload: u64,
}

/// A stream with a write queue of whole frames and a read buffer of its own.
#[derive(Debug)]
pub(crate) struct Wire<S> {
    inner: S,
    /// Bytes waiting to be written, from `written` on.
    out: Vec<u8>,
    written: usize,
    /// Whether the upgrade is done. Until then, tungstenite's writes (the HTTP request) go
    /// straight through, as its handshake never flushes, and its reads get the response
    /// head only.
    framing: bool,
    /// Queued bytes above which tungstenite's writes wait for the queue to drain.
    max_queued: usize,
    /// The capacity the queue shrinks back to after a very large message.
    usual_capacity: usize,

    /// Bytes read from the stream and not yet taken.
    rbuf: BytesMut,
    /// Read buffers given up while the application holds payloads taken from them.
    blocks: Blocks,
    /// Whether a payload was taken since [`Wire::release_if_idle`] last looked.
    taken: bool,
    /// Bytes at the front of `rbuf` that belong to frames handed to tungstenite.
    delegated: usize,
    /// tungstenite holds the start of a fragmented message: every frame goes to it until
    /// the message is complete.
    fragmented: bool,
    /// The stream ended.
    eof: bool,
    /// Bytes arrived since [`Wire::take_progress`] last looked.
    progress: bool,
    /// Line ends seen in a row while reading the upgrade response, which ends at two.
    response_line_ends: u8,
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
            rbuf: BytesMut::with_capacity(READ_SIZE),
            blocks: Blocks::default(),
            taken: false,
            delegated: 0,
            fragmented: false,
            eof: false,
            progress: false,
            response_line_ends: 0,
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

    /// Decides who reads the frame at the front of the read buffer. The socket task may
    /// take a data frame whose payload is at most `max_payload` bytes.
    pub(crate) fn front(&self, max_payload: usize) -> Front {
        if self.delegated > 0 || self.fragmented {
            return Front::Tungstenite;
        }
        let Some(header) = Header::parse(&self.rbuf) else {
            // At the end of the stream tungstenite reports what is left as it sees fit.
            return if self.eof {
                Front::Tungstenite
            } else {
                Front::More
            };
        };

        let simple = header.is_final
            && !header.reserved_bits
            && !header.masked
            && matches!(header.opcode, TEXT | BINARY)
            && header.payload <= max_payload as u64;
        if !simple {
            return Front::Tungstenite;
        }
        let end = header.length + header.payload as usize;
        if self.rbuf.len() < end {
            return if self.eof {
                Front::Tungstenite
            } else {
                Front::More
            };
        }
        Front::Data {
            text: header.opcode == TEXT,
            start: header.length,
            end,
        }
    }

    /// Takes the frame at the front, `..end`, and returns its payload `start..end` without
    /// copying it.
    pub(crate) fn take_payload(&mut self, start: usize, end: usize) -> Bytes {
        self.taken = true;
        let mut frame = self.rbuf.split_to(end);
        frame.advance(start);
        frame.freeze()
    }

    /// Lets go of the read buffers kept for reuse when no payload was taken since the last
    /// call, so that a connection gone quiet after a burst does not keep the burst's memory.
    pub(crate) fn release_if_idle(&mut self) {
        if !std::mem::take(&mut self.taken) {
            self.blocks.release();
        }
    }

    /// Whether bytes arrived since the last call, whoever read them.
    pub(crate) fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.progress)
    }

    fn delegate(&mut self, header: &Header) {
        let payload = usize::try_from(header.payload).unwrap_or(usize::MAX);
        self.delegated = header.length.saturating_add(payload);
        match header.opcode {
            TEXT | BINARY if !header.is_final => self.fragmented = true,
            CONTINUATION if header.is_final => self.fragmented = false,
            _ => {}
        }
    }
}

impl<S: AsyncRead + Unpin> Wire<S> {
    /// Reads more of the stream into the read buffer; at its end, [`Wire::front`] hands
    /// whatever is left to tungstenite.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe.
    pub(crate) fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.rbuf.capacity() - self.rbuf.len() < READ_SIZE / 4 {
            self.blocks.make_room(&mut self.rbuf, READ_SIZE);
        }
        let read = ready!(tokio_util::io::poll_read_buf(
            Pin::new(&mut self.inner),
            cx,
            &mut self.rbuf
        ))?;
        if read == 0 {
            self.eof = true;
        } else {
            self.progress = true;
        }
        Poll::Ready(Ok(()))
    }

    /// tungstenite's reads during the upgrade: the response and not a byte more, so the
    /// frames after it stay in the read buffer.
    fn poll_read_response(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.rbuf.is_empty() && !self.eof {
            ready!(self.poll_fill(cx))?;
        }
        let mut length = 0;
        for &byte in self.rbuf.iter().take(buf.remaining()) {
            length += 1;
            // The head ends at an empty line; a bare line feed ends a line too.
            match byte {
                b'\n' => self.response_line_ends += 1,
                b'\r' => {}
                _ => self.response_line_ends = 0,
            }
            if self.response_line_ends == 2 {
                break;
            }
        }
        buf.put_slice(&self.rbuf[..length]);
        self.rbuf.advance(length);
        Poll::Ready(Ok(()))
    }

    /// tungstenite's reads once the connection is open: the frames handed to it, whole.
    fn poll_read_frames(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if self.delegated == 0
                && let Some(header) = Header::parse(&self.rbuf)
            {
                self.delegate(&header);
            }
            if !self.rbuf.is_empty() && (self.delegated > 0 || self.eof) {
                // At the end of the stream, a part of a header goes over as it is.
                let allowed = if self.delegated > 0 {
                    self.delegated
                } else {
                    usize::MAX
                };
                let length = allowed.min(self.rbuf.len()).min(buf.remaining());
                buf.put_slice(&self.rbuf[..length]);
                self.rbuf.advance(length);
                self.delegated = self.delegated.saturating_sub(length);
                return Poll::Ready(Ok(()));
            }
            if self.eof {
                return Poll::Ready(Ok(()));
            }
            ready!(self.poll_fill(cx))?;
        }
    }
}

impl Header {
    /// The header at the start of `bytes`, or `None` while it is incomplete.
    fn parse(bytes: &[u8]) -> Option<Self> {
        let [first, second, ..] = *bytes else {
            return None;
        };
        let (payload, mut length) = match second & 0x7F {
            126 => (
                u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
                4,
            ),
            127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
            short => (u64::from(short), 2),
        };
        let masked = second & 0x80 != 0;
        if masked {
            length += 4;
        }
        if bytes.len() < length {
            return None;
        }
        Some(Self {
            is_final: first & 0x80 != 0,
            reserved_bits: first & 0x70 != 0,
            opcode: first & 0x0F,
            masked,
            length,
            payload,
        })
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
        let this = self.get_mut();
        if this.framing {
            this.poll_read_frames(cx, buf)
        } else {
            this.poll_read_response(cx, buf)
        }
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
