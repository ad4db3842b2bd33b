//! Memory for received payloads, reused once the application has let go of it.
//!
//! Received payloads are handed to the application without a copy: each one shares the
//! buffer it was read into. While the application holds any payload of a buffer, that
//! buffer cannot be refilled, so reading goes on in another one. Asking the allocator for
//! each new buffer is what a raw client avoids by dropping every payload at once: freed
//! buffers go back to the operating system and the next ones come back as fresh pages,
//! one page fault per 4 KiB. So the buffers given up are kept, and the oldest is refilled
//! as soon as everything taken from it has been dropped.

use std::collections::VecDeque;

use bytes::BytesMut;

/// Buffers kept for reuse. Together with the buffer being filled, this bounds what the
/// client keeps of memory the application has already let go of.
pub(crate) const KEPT: usize = 16;

/// Buffers looked at for one that is free again: the application usually drops payloads
/// in the order it got them, so a free buffer is near the front, and one payload it keeps
/// for long should not stop the others behind it from being reused.
const SCANNED: usize = 4;

/// Buffers given up while the application may still hold payloads in them, oldest first.
#[derive(Debug, Default)]
pub(crate) struct Blocks {
    given_up: VecDeque<BytesMut>,
}

impl Blocks {
    /// Makes room for `room` more bytes in `current`: in place when nothing taken from it is
    /// still held, else by moving its contents to a kept buffer that is free again, or to a
    /// new one.
    pub(crate) fn make_room(&mut self, current: &mut BytesMut, room: usize) {
        if current.try_reclaim(room) {
            return;
        }
        let needed = current.len().saturating_add(room);

        let free = self
            .given_up
            .iter_mut()
            .take(SCANNED)
            .position(|block| block.try_reclaim(needed));
        let mut next = match free.and_then(|index| self.given_up.remove(index)) {
            Some(block) => block,
            None => BytesMut::with_capacity(needed),
        };
        next.extend_from_slice(current);

        let mut given_up = std::mem::replace(current, next);
        given_up.clear();
        self.given_up.push_back(given_up);
        if self.given_up.len() > KEPT {
            // Its payloads stay valid; the buffer itself is freed with the last of them.
            self.given_up.pop_front();
        }
    }

    /// Lets go of every buffer kept, once traffic has stopped: payloads still held stay
    /// valid, and the rest goes back to the allocator.
    pub(crate) fn release(&mut self) {
        self.given_up = VecDeque::new();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads 16 bytes of `byte` into `buffer` and takes them, as the wire takes a payload;
    /// new buffers have room for one payload.
    fn filled(blocks: &mut Blocks, buffer: &mut BytesMut, byte: u8) -> bytes::Bytes {
        blocks.make_room(buffer, 16);
        buffer.extend_from_slice(&[byte; 16]);
        buffer.split().freeze()
    }

    #[test]
    fn a_buffer_is_refilled_in_place_once_its_payload_is_dropped() {
        let mut blocks = Blocks::default();
        let mut buffer = BytesMut::with_capacity(16);
        let start = buffer.as_ptr();

        for byte in 0..10 {
            let payload = filled(&mut blocks, &mut buffer, byte);
            assert_eq!(payload.as_ptr(), start);
        }

        assert!(blocks.given_up.is_empty());
    }

    #[test]
    fn a_buffer_given_up_is_reused_once_the_application_lets_go_and_payloads_stay_intact() {
        let mut blocks = Blocks::default();
        let mut buffer = BytesMut::with_capacity(16);
        let first_block = buffer.as_ptr();

        let held = filled(&mut blocks, &mut buffer, 1);
        let second = filled(&mut blocks, &mut buffer, 2);
        assert_ne!(
            second.as_ptr(),
            first_block,
            "a held buffer is not refilled"
        );
        assert_eq!(&held[..], &[1; 16]);

        drop(held);
        let third = filled(&mut blocks, &mut buffer, 3);

        assert_eq!(third.as_ptr(), first_block, "the freed buffer is refilled");
        assert_eq!(&second[..], &[2; 16]);
        assert_eq!(&third[..], &[3; 16]);
    }

    #[test]
    fn unread_bytes_move_with_the_buffer() {
        let mut blocks = Blocks::default();
        let mut buffer = BytesMut::with_capacity(16);
        let _held = filled(&mut blocks, &mut buffer, 1);
        buffer.extend_from_slice(b"partial");

        blocks.make_room(&mut buffer, 32);

        assert_eq!(&buffer[..], b"partial");
        assert!(buffer.capacity() - buffer.len() >= 32);
    }

    #[test]
    fn released_buffers_leave_held_payloads_intact() {
        let mut blocks = Blocks::default();
        let mut buffer = BytesMut::new();
        let held: Vec<_> = (0..4)
            .map(|n| filled(&mut blocks, &mut buffer, n))
            .collect();
        assert!(!blocks.given_up.is_empty());

        blocks.release();
        let after = filled(&mut blocks, &mut buffer, 9);

        assert!(blocks.given_up.len() <= 1);
        for (n, payload) in held.iter().enumerate() {
            assert_eq!(payload[..], [n as u8; 16]);
        }
        assert_eq!(after[..], [9; 16]);
    }

    #[test]
    fn no_more_than_kept_buffers_are_kept_however_much_the_application_holds() {
        let mut blocks = Blocks::default();
        let mut buffer = BytesMut::new();

        let held: Vec<_> = (0..KEPT * 3)
            .map(|n| filled(&mut blocks, &mut buffer, n as u8))
            .collect();

        assert_eq!(blocks.given_up.len(), KEPT);
        for (n, payload) in held.iter().enumerate() {
            assert_eq!(payload[..], [n as u8; 16]);
        }
    }
}
