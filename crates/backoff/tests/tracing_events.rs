//! Each retry is reported as a `tracing` debug event; nothing is printed.

use std::fmt;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use steadfast_backoff::{Backoff, retry};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Metadata, Subscriber};

/// Records the message and level of every event.
#[derive(Clone, Default)]
struct Recorder {
    events: Arc<Mutex<Vec<(Level, String)>>>,
}

struct Message(String);

impl Visit for Message {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        if field.name() == "message" {
            self.0 = format!("{value:?}");
        }
    }
}

impl Subscriber for Recorder {
    fn enabled(&self, _: &Metadata<'_>) -> bool {
        true
    }

    fn new_span(&self, _: &Attributes<'_>) -> Id {
        Id::from_u64(1)
    }

    fn record(&self, _: &Id, _: &Record<'_>) {}

    fn record_follows_from(&self, _: &Id, _: &Id) {}

    fn event(&self, event: &Event<'_>) {
        let mut message = Message(String::new());
        event.record(&mut message);
        let level = *event.metadata().level();
        self.events.lock().unwrap().push((level, message.0));
    }

    fn enter(&self, _: &Id) {}

    fn exit(&self, _: &Id) {}
}

#[tokio::test(start_paused = true)]
async fn every_retry_and_the_give_up_are_debug_events() {
    let recorder = Recorder::default();
    let _guard = tracing::subscriber::set_default(recorder.clone());
    let policy = Backoff::exponential(Duration::from_millis(10)).max_attempts(3);

    let _ = retry(&policy, || async {
        Err::<(), _>(io::Error::from(io::ErrorKind::ConnectionReset))
    })
    .await;

    let events = recorder.events.lock().unwrap().clone();
    let retries = events
        .iter()
        .filter(|(level, message)| *level == Level::DEBUG && message == "retrying after failure")
        .count();
    assert_eq!(retries, 2);
    assert!(events.iter().any(|(_, message)| message == "giving up"));
    assert!(
        events.iter().all(|(level, _)| *level >= Level::DEBUG),
        "nothing above debug"
    );
}
