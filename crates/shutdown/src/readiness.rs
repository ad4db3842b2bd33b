//! The readiness flag a health endpoint reads.

use tokio::sync::watch;

/// Whether the service should receive new traffic; a cheap, cloneable view for health
/// endpoints.
///
/// It turns false the moment a shutdown is triggered, before anything stops, so that a
/// load balancer polling it stops routing here while in-flight work drains. Get one from
/// [`Handle::readiness`](crate::Handle::readiness).
#[derive(Debug, Clone)]
pub struct Readiness {
    receiver: watch::Receiver<bool>,
}

impl Readiness {
    pub(crate) fn new(receiver: watch::Receiver<bool>) -> Self {
        Self { receiver }
    }

    /// Whether the service is ready for traffic right now.
    pub fn is_ready(&self) -> bool {
        *self.receiver.borrow()
    }

    /// Waits until the service is not ready, which is immediately if it is not ready now.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: it holds no state between polls beyond its own clone of the flag.
    pub async fn not_ready(&self) {
        let mut receiver = self.receiver.clone();

        // An error means the coordinator is gone, which is as not-ready as it gets.
        let _ = receiver.wait_for(|ready| !ready).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn flips_and_wakes_waiters() {
        let (sender, receiver) = watch::channel(true);
        let readiness = Readiness::new(receiver);
        assert!(readiness.is_ready());

        let waiter = tokio::spawn({
            let readiness = readiness.clone();
            async move { readiness.not_ready().await }
        });
        sender.send_replace(false);

        waiter.await.expect("waiter ends");
        assert!(!readiness.is_ready());
    }

    #[tokio::test]
    async fn a_dropped_coordinator_counts_as_not_ready() {
        let (sender, receiver) = watch::channel(true);
        drop(sender);

        Readiness::new(receiver).not_ready().await;
    }
}
