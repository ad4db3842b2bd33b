//! Grouping a stream's items into chunks by size or by time, for bulk writes downstream.

use std::num::NonZeroUsize;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::Stream;
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep, sleep_until};

use crate::driver::later;

pin_project! {
    /// A stream of chunks: up to `max_items` items each, handed out as soon as a chunk is
    /// full or `max_wait` after its first item arrived, whichever comes first.
    ///
    /// A slow trickle of results still reaches the bulk writer within `max_wait`, and a
    /// flood reaches it in full chunks. The last, partial chunk comes out when the inner
    /// stream ends. Made by [`ChunksExt::chunks_by`].
    #[must_use = "streams do nothing unless polled"]
    pub struct Chunks<S: Stream> {
        #[pin]
        stream: S,
        buffer: Vec<S::Item>,
        max_items: usize,
        max_wait: Duration,
        timer: Option<Pin<Box<Sleep>>>,
        armed: bool,
        done: bool,
    }
}

/// Adds [`chunks_by`](ChunksExt::chunks_by) to every stream, such as a
/// [`BatchRun`](crate::BatchRun).
pub trait ChunksExt: Stream + Sized {
    /// Groups items into chunks of at most `max_items`, each handed out no later than
    /// `max_wait` after its first item.
    ///
    /// The timer runs on Tokio time, so the stream must be polled inside a Tokio runtime.
    fn chunks_by(self, max_items: NonZeroUsize, max_wait: Duration) -> Chunks<Self> {
        Chunks {
            stream: self,
            buffer: Vec::with_capacity(first_capacity(max_items.get())),
            max_items: max_items.get(),
            max_wait,
            timer: None,
            armed: false,
            done: false,
        }
    }
}

impl<S: Stream> ChunksExt for S {}

impl<S: Stream> Chunks<S> {
    /// The inner stream, for items not taken yet.
    pub fn get_ref(&self) -> &S {
        &self.stream
    }

    /// The inner stream back, for example the [`BatchRun`](crate::BatchRun) whose
    /// [`finish`](crate::BatchRun::finish) gives the report once every chunk was read.
    ///
    /// Items held in a partial chunk not handed out yet are dropped; after the chunk
    /// stream has ended there are none.
    pub fn into_inner(self) -> S {
        self.stream
    }
}

impl<S: Stream> Stream for Chunks<S> {
    type Item = Vec<S::Item>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();

        while !*this.done {
            match this.stream.as_mut().poll_next(cx) {
                Poll::Ready(Some(item)) => {
                    if this.buffer.is_empty() {
                        let deadline = later(Instant::now(), *this.max_wait);
                        match this.timer {
                            Some(timer) => timer.as_mut().reset(deadline),
                            None => *this.timer = Some(Box::pin(sleep_until(deadline))),
                        }
                        *this.armed = true;
                    }
                    this.buffer.push(item);
                    if this.buffer.len() >= *this.max_items {
                        *this.armed = false;
                        return Poll::Ready(Some(take(this.buffer, *this.max_items)));
                    }
                }
                Poll::Ready(None) => *this.done = true,
                Poll::Pending => break,
            }
        }

        if *this.done {
            *this.armed = false;
            if this.buffer.is_empty() {
                return Poll::Ready(None);
            }
            return Poll::Ready(Some(std::mem::take(this.buffer)));
        }

        if let (true, Some(timer)) = (*this.armed, this.timer.as_mut()) {
            if timer.as_mut().poll(cx).is_ready() {
                *this.armed = false;
                return Poll::Ready(Some(take(this.buffer, *this.max_items)));
            }
        }
        Poll::Pending
    }
}

/// Takes the buffered chunk and leaves an empty buffer with room for the next one.
fn take<T>(buffer: &mut Vec<T>, max_items: usize) -> Vec<T> {
    std::mem::replace(buffer, Vec::with_capacity(first_capacity(max_items)))
}

/// Room reserved up front for a chunk: its full size, up to a bound, so that a huge
/// `max_items` (meaning "flush by time only") does not reserve memory it never uses.
fn first_capacity(max_items: usize) -> usize {
    max_items.min(MAX_PREALLOCATED)
}

/// Most items a chunk reserves room for before they arrive.
const MAX_PREALLOCATED: usize = 4096;

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;
    use futures_util::stream;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn full_chunks_come_out_at_once_and_the_rest_at_the_end() {
        let size = NonZeroUsize::new(3).expect("three");
        let chunks: Vec<Vec<u32>> = stream::iter(0..7)
            .chunks_by(size, Duration::from_secs(1))
            .collect()
            .await;

        assert_eq!(chunks, vec![vec![0, 1, 2], vec![3, 4, 5], vec![6]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_huge_chunk_size_does_not_reserve_room_for_it() {
        let chunks: Vec<Vec<u32>> = stream::iter(0..3)
            .chunks_by(NonZeroUsize::MAX, Duration::from_secs(1))
            .collect()
            .await;

        assert_eq!(chunks, vec![vec![0, 1, 2]]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_partial_chunk_comes_out_after_the_wait() {
        let (tx, rx) = tokio::sync::mpsc::channel(8);
        let input = stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) });
        let mut chunks = Box::pin(input.chunks_by(
            NonZeroUsize::new(10).expect("ten"),
            Duration::from_millis(50),
        ));
        let start = Instant::now();

        tx.send(1).await.expect("open");
        tx.send(2).await.expect("open");
        let first = chunks.next().await;

        assert_eq!(first, Some(vec![1, 2]));
        assert_eq!(start.elapsed(), Duration::from_millis(50));

        drop(tx);
        assert_eq!(chunks.next().await, None);
    }
}
