//! The client against plain tokio-tungstenite, on the same bytes.
//!
//! The client reads whole, final, unmasked data frames of up to 16 KiB itself and hands
//! every other frame to tungstenite; it frames every outgoing data message and ping itself.
//! These tests check that none of that shows: a seeded RNG writes server byte streams
//! (frames of boundary lengths, fragments with control frames between them, malformed
//! frames, a close or a cut at the end), a loopback server delivers each stream in random
//! pieces to a plain tungstenite client and to this one, and both must see the same data
//! messages in the same order and the same end. On the write side, a plain tungstenite
//! server must receive exactly what the client sent, in order.
//!
//! Both clients end with their first connection: tungstenite's stream simply ends, and this
//! client is allowed a single attempt, so every end is final and can be compared.
//!
//! Time runs for real: the sockets are real and nothing waits on a timer but the bound on
//! each case. The generated tests run on two worker threads, so that server, client task
//! and reader interleave as they would under load. A failing case names its index; its
//! stream comes from `case_rng(seed, index)`.

mod support;

use std::fmt::{self, Write as _};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use steadfast_ws_resilient::{
    Backoff, BufferConfig, CancellationToken, Client, CloseReason, Config, Error, Jitter, Message,
    Overflow,
};
use support::{Accepted, Server, upgrade_answer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc};
use tokio_tungstenite::tungstenite::error::ProtocolError;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{self, Message as Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn well_formed_streams_read_the_same_as_plain_tungstenite() {
    let failures = run_read_cases(0x5eed_0001, READ_CASES, Mix::WellFormed).await;

    assert!(failures.is_empty(), "{}", summary(&failures, READ_CASES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_streams_end_the_same_as_plain_tungstenite() {
    let failures = run_read_cases(0x5eed_0002, READ_CASES, Mix::Malformed).await;

    assert!(failures.is_empty(), "{}", summary(&failures, READ_CASES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_sent_reach_a_tungstenite_server_exactly_and_in_order() {
    let failures = run_write_cases(0x5eed_0003, WRITE_CASES, Closing::AfterDelivery).await;

    assert!(failures.is_empty(), "{}", summary(&failures, WRITE_CASES));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_close_right_after_opening_delivers_a_prefix_and_returns_the_rest() {
    let failures = run_write_cases(0x5eed_0004, WRITE_CASES, Closing::AtOnce).await;

    assert!(failures.is_empty(), "{}", summary(&failures, WRITE_CASES));
}

#[tokio::test]
async fn what_the_hook_sent_goes_out_when_the_client_closes_as_the_hook_ends() {
    let (heard, mut hearing) = mpsc::unbounded_channel();
    let server = Server::start(move |accepted: Accepted| {
        record_messages(accepted, heard.clone(), Pinging::Steady(0))
    })
    .await;
    let token = CancellationToken::new();
    let cancel = token.clone();
    let (client, _incoming) = Client::builder(server.url())
        .config(ending_config(None))
        .cancel_token(token)
        .on_connect(move |sender| {
            let cancel = cancel.clone();
            async move {
                sender.send("subscribe")?;
                // The application closes the client just as the connection opens.
                cancel.cancel();
                Ok(())
            }
        })
        .build()
        .expect("a valid configuration");

    let reason = client.closed().await;
    let (received, end) = hear_to_the_end(&mut hearing, Vec::new()).await;

    assert!(matches!(reason, CloseReason::Requested), "{reason:?}");
    assert_eq!(end, "close 1000");
    assert_eq!(
        received,
        [Message::text("subscribe")],
        "neither sent nor reported: {:?}",
        client.metrics()
    );
}

#[tokio::test]
async fn what_the_hook_sent_goes_out_before_buffered_messages_under_a_flood_of_pings() {
    let (heard, mut hearing) = mpsc::unbounded_channel();
    let flooded = Arc::new(Notify::new());
    let flood = Arc::clone(&flooded);
    let server = Server::start(move |accepted: Accepted| {
        let flooding = Pinging::Flood(20_000, Arc::clone(&flood));
        record_messages(accepted, heard.clone(), flooding)
    })
    .await;
    let (client, _incoming) = Client::builder(server.url())
        .config(ending_config(None))
        .on_connect(move |sender| {
            let flooded = Arc::clone(&flooded);
            async move {
                // The hook ends once the pings are on their way, so the client is still
                // reading and answering them as it starts on the buffered message.
                flooded.notified().await;
                sender.send("from the hook")?;
                Ok(())
            }
        })
        .build()
        .expect("a valid configuration");
    client.send("buffered").await.expect("queued");

    let received = hear(&mut hearing, 2).await;
    client.close().await;

    assert_eq!(
        received,
        Ok(vec![
            Message::text("from the hook"),
            Message::text("buffered")
        ])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn megabytes_of_16_kib_messages_stay_intact_while_the_application_holds_them() {
    let mut failures = Vec::new();
    for index in 0..6 {
        let rng = &mut case_rng(0x5eed_0005, index);
        // 160 messages at the client's own limit fill far more read buffers than it keeps.
        let mut stream = Vec::new();
        for _ in 0..160 {
            let length = [16383, 16384][rng.random_range(0..2)];
            let text = rng.random_bool(0.5);
            let (opcode, payload) = if text {
                (TEXT, utf8(rng, length))
            } else {
                (BINARY, binary(rng, length))
            };
            stream.extend(frame(FIN | opcode, &payload, None, Width::Shortest));
        }
        stream.extend(frame(
            FIN | CLOSE,
            &1000u16.to_be_bytes(),
            None,
            Width::Shortest,
        ));

        let case = ReadCase {
            index,
            limits: LIMITS[0],
            outline: vec!["160 messages of 16 KiB, close(1000)".to_owned()],
            line_end: "\r\n",
            answer_split: None,
            with_answer: 0,
            chunks: chunk_sizes(rng, stream.len()),
            stream,
            inbound_capacity: 1024,
            inbound_max_bytes: 1 << 20,
            hold_percent: [100, 50, 90][index % 3],
            slow_reader: index % 2 == 1,
            ping_interval: None,
        };
        failures.extend(run_read_case(case).await);
    }

    assert!(failures.is_empty(), "{}", summary(&failures, 6));
}

/// Streams per read test; each takes a few milliseconds.
const READ_CASES: usize = 300;

/// Message sequences per write test.
const WRITE_CASES: usize = 150;

/// The most one case may take, both clients together.
const CASE_TIMEOUT: Duration = Duration::from_secs(10);

/// Payload lengths around every boundary: the length encodings (125/126/127, 65535/65536),
/// the client's own 16 KiB limit, and one past a 64 KiB read.
const LENGTHS: [usize; 11] = [
    0, 1, 125, 126, 127, 16383, 16384, 16385, 65535, 65536, 70000,
];

/// A stream stops growing large frames past this many bytes.
const STREAM_BUDGET: usize = 400_000;

const FIN: u8 = 0x80;
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

fn case_rng(seed: u64, index: usize) -> StdRng {
    StdRng::seed_from_u64(seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// The first few failures, with how many cases failed.
fn summary(failures: &[String], cases: usize) -> String {
    let mut text = format!("{} of {cases} cases differ", failures.len());
    for failure in failures.iter().take(6) {
        let _ = write!(text, "\n\n{failure}");
    }
    text
}

// ---------------------------------------------------------------------------------------
// Read side
// ---------------------------------------------------------------------------------------

/// Which frames a generated stream holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mix {
    /// Only what a correct server sends, and an end that is a close, an EOF or a cut.
    WellFormed,
    /// Mostly that, with protocol violations thrown in.
    Malformed,
}

/// Size limits, configured alike on both clients.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_message: usize,
    max_frame: usize,
}

/// Roomy limits in two cases of seven; the others sit at the client's 16 KiB boundary
/// (on one side or the other) or far below it.
const LIMITS: [Limits; 7] = [
    Limits {
        max_message: 1 << 20,
        max_frame: 1 << 18,
    },
    Limits {
        max_message: 1 << 20,
        max_frame: 1 << 18,
    },
    Limits {
        max_message: 16 << 10,
        max_frame: 16 << 10,
    },
    Limits {
        max_message: (16 << 10) - 1,
        max_frame: 1 << 20,
    },
    Limits {
        max_message: 1 << 20,
        max_frame: (16 << 10) - 1,
    },
    Limits {
        max_message: 70_000,
        max_frame: 65_536,
    },
    Limits {
        max_message: 200,
        max_frame: 100,
    },
];

/// One read case: what the server writes after its upgrade answer, and in which pieces.
#[derive(Debug)]
struct ReadCase {
    index: usize,
    limits: Limits,
    /// Every byte after the upgrade answer.
    stream: Vec<u8>,
    /// What each frame of `stream` is, for the failure message.
    outline: Vec<String>,
    /// Line end of the answer's head.
    line_end: &'static str,
    /// Where the answer itself is split across two writes, if it is.
    answer_split: Option<usize>,
    /// Bytes of `stream` written in one write with the answer.
    with_answer: usize,
    /// Sizes of the writes after that, in order.
    chunks: Vec<usize>,
    inbound_capacity: usize,
    inbound_max_bytes: usize,
    /// The share of messages, in percent, that the application holds on to until the end.
    hold_percent: u32,
    /// Whether the application lets other tasks run after every message it reads, so the
    /// client's queue fills up.
    slow_reader: bool,
    /// The client's own pings, which the server leaves unanswered.
    ping_interval: Option<Duration>,
}

/// What a client saw: the data messages, in order, and how the connection ended.
#[derive(Debug)]
struct Seen {
    messages: Vec<Digest>,
    end: End,
    /// Messages the application held to the end whose payload changed meanwhile.
    changed: Vec<usize>,
}

/// A message in a few bytes: its kind, its length, how it starts, and a hash of it all.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Digest {
    text: bool,
    length: usize,
    head: Vec<u8>,
    hash: u64,
}

impl Digest {
    fn of(message: &Message) -> Self {
        let bytes = message.as_bytes();
        let mut hasher = DefaultHasher::new();
        bytes.hash(&mut hasher);
        Self {
            text: message.as_text().is_some(),
            length: bytes.len(),
            head: bytes.iter().take(8).copied().collect(),
            hash: hasher.finish(),
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.text { "text" } else { "binary" };
        write!(
            formatter,
            "{kind}({}) starting {:02x?}, hash {:016x}",
            self.length, self.head, self.hash
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// The server sent a close frame with this code (1005 for none) and reason.
    Closed { code: u16, reason: String },
    /// The connection ended without a close frame.
    Dropped,
    /// The server broke the protocol: the code the client answers with (per the README:
    /// 1007 text that is not UTF-8, 1009 over a size limit, 1002 anything else), and
    /// tungstenite's error.
    Violation { code: u16, error: String },
    /// Anything else; neither client should end this way.
    Other(String),
}

async fn run_read_cases(seed: u64, cases: usize, mix: Mix) -> Vec<String> {
    let mut failures = Vec::new();
    for index in 0..cases {
        let case = read_case(&mut case_rng(seed, index), index, mix);
        if let Some(failure) = run_read_case(case).await {
            failures.push(failure);
        }
    }
    failures
}

/// Plays `case` to both clients; where they part ways, says how.
async fn run_read_case(case: ReadCase) -> Option<String> {
    let case = Arc::new(case);
    let truth_server = serve(Arc::clone(&case)).await;
    let mut our_server = serve(Arc::clone(&case)).await;

    let both = async {
        let (truth, ours) = tokio::join!(
            read_with_tungstenite(&truth_server, case.limits),
            read_with_client(&our_server, &case),
        );
        let answered = our_server.take(1).await.remove(0);
        (truth, ours, answered)
    };
    let Ok((truth, ours, answered)) = tokio::time::timeout(CASE_TIMEOUT, both).await else {
        return Some(format!(
            "{}\n  did not end within {CASE_TIMEOUT:?}",
            describe(&case)
        ));
    };

    let mut difference = compare(&truth, &ours).unwrap_or_default();
    let answer = close_answer(&truth.end);
    if answered != answer {
        let _ = write!(
            difference,
            "the client answered with {answered}, where {answer} was due. "
        );
    }
    (!difference.is_empty()).then(|| format!("{}\n  {difference}", describe(&case)))
}

fn read_case(rng: &mut StdRng, index: usize, mix: Mix) -> ReadCase {
    let limits = LIMITS[rng.random_range(0..LIMITS.len())];
    let mut script = Script {
        rng,
        mix,
        limits,
        bytes: Vec::new(),
        outline: Vec::new(),
    };
    let frames = script.rng.random_range(1..=12);
    for _ in 0..frames {
        script.next_piece();
    }
    script.ending();
    let Script {
        rng,
        bytes,
        outline,
        ..
    } = script;

    let line_end = if rng.random_bool(0.2) { "\n" } else { "\r\n" };
    // The answer is about 130 bytes; a split may fall anywhere in it, its end included.
    let answer_split = rng.random_bool(0.2).then(|| rng.random_range(1..=140));
    let with_answer = match rng.random_range(0..4) {
        0 => 0,
        1 => bytes.len(),
        _ => rng.random_range(0..=bytes.len()),
    };
    let chunks = chunk_sizes(rng, bytes.len() - with_answer);
    let inbound_capacity = [1, 2, 3, 1024][rng.random_range(0..4)];
    let inbound_max_bytes = [100, 20_000, 1 << 20][rng.random_range(0..3)];
    let hold_percent = [0, 30, 100][rng.random_range(0..3)];
    let slow_reader = rng.random_bool(0.3);
    let ping_interval = rng
        .random_bool(0.3)
        .then(|| Duration::from_millis(rng.random_range(1..=3)));
    ReadCase {
        index,
        limits,
        stream: bytes,
        outline,
        line_end,
        answer_split,
        with_answer,
        chunks,
        inbound_capacity,
        inbound_max_bytes,
        hold_percent,
        slow_reader,
        ping_interval,
    }
}

/// Write sizes from one byte to 100 KB: single bytes for a short stream, otherwise spread
/// evenly over the orders of magnitude, or over the whole range.
fn chunk_sizes(rng: &mut StdRng, mut remaining: usize) -> Vec<usize> {
    let style = rng.random_range(0..3);
    let mut sizes = Vec::new();
    while remaining > 0 {
        let size = match style {
            0 if remaining <= 20_000 => rng.random_range(1..=3),
            0 | 1 => 2f64.powf(rng.random_range(0.0..=16.7)) as usize,
            _ => rng.random_range(1..=100_000),
        };
        let size = size.clamp(1, remaining);
        sizes.push(size);
        remaining -= size;
    }
    sizes
}

/// A server stream under construction.
struct Script<'a> {
    rng: &'a mut StdRng,
    mix: Mix,
    limits: Limits,
    bytes: Vec<u8>,
    outline: Vec<String>,
}

impl Script<'_> {
    fn push(&mut self, what: String, frame: Vec<u8>) {
        self.outline.push(what);
        self.bytes.extend(frame);
    }

    fn next_piece(&mut self) {
        let roll = self.rng.random_range(0..100);
        match roll {
            0..52 => self.data(),
            52..55 => self.burst(),
            55..70 => self.fragmented(false),
            70..85 => self.control(),
            _ if self.mix == Mix::WellFormed => self.data(),
            _ => self.malformed(),
        }
    }

    /// Whether a size limit may be broken here: never in a well-formed stream, now and
    /// then in the others.
    fn oversize(&mut self) -> bool {
        self.mix == Mix::Malformed && self.rng.random_bool(0.15)
    }

    /// A payload length of at most `cap`, unless [`Script::oversize`] says otherwise.
    fn length_within(&mut self, cap: usize) -> usize {
        let length = self.length();
        if length <= cap || self.oversize() {
            return length;
        }
        if self.rng.random_bool(0.5) {
            cap.saturating_sub(self.rng.random_range(0..3))
        } else {
            self.rng.random_range(0..=cap.min(300))
        }
    }

    /// A control frame's payload length: at most 125, and within the frame limit unless
    /// [`Script::oversize`] says otherwise.
    fn control_length(&mut self) -> usize {
        let cap = if self.oversize() {
            125
        } else {
            self.limits.max_frame.min(125)
        };
        self.rng.random_range(0..=cap)
    }

    /// The largest single-frame message both limits allow.
    fn frame_cap(&self) -> usize {
        self.limits.max_frame.min(self.limits.max_message)
    }

    /// A payload length: mostly a boundary (or one off it, or a limit of this case), else
    /// a small one. Large ones stop once the stream is large.
    fn length(&mut self) -> usize {
        let Limits {
            max_message,
            max_frame,
        } = self.limits;
        let limits = [max_frame, max_frame + 1, max_message, max_message + 1];
        let length = if self.rng.random_bool(0.6) {
            let boundary = if self.rng.random_bool(0.25) {
                limits[self.rng.random_range(0..limits.len())]
            } else {
                LENGTHS[self.rng.random_range(0..LENGTHS.len())]
            };
            match self.rng.random_range(0..6) {
                0 => boundary.saturating_sub(1),
                1 => boundary + 1,
                _ => boundary,
            }
        } else {
            self.rng.random_range(0..=300)
        };
        if length > 70_001 || self.bytes.len() + length > STREAM_BUDGET {
            self.rng.random_range(0..=300)
        } else {
            length
        }
    }

    /// The length field's form: mostly the shortest, sometimes a longer one, which
    /// tungstenite accepts too.
    fn width(&mut self) -> Width {
        match self.rng.random_range(0..20) {
            0 => Width::Sixteen,
            1 => Width::SixtyFour,
            _ => Width::Shortest,
        }
    }

    fn payload(&mut self, text: bool, length: usize) -> Vec<u8> {
        if text {
            utf8(self.rng, length)
        } else {
            binary(self.rng, length)
        }
    }

    /// A whole text or binary message in one frame.
    fn data(&mut self) {
        let text = self.rng.random_bool(0.5);
        let cap = self.frame_cap();
        let length = self.length_within(cap);
        let payload = self.payload(text, length);
        let width = self.width();
        let opcode = if text { TEXT } else { BINARY };
        let name = if text { "text" } else { "binary" };
        self.push(
            format!("{name}({length})"),
            frame(FIN | opcode, &payload, None, width),
        );
    }

    /// Hundreds of tiny messages in a row, more than the client reads in one go.
    fn burst(&mut self) {
        let count = self.rng.random_range(100..=700);
        let cap = self.frame_cap().min(20);
        let mut bytes = Vec::new();
        for _ in 0..count {
            let text = self.rng.random_bool(0.5);
            let length = self.rng.random_range(0..=cap);
            let payload = self.payload(text, length);
            let opcode = if text { TEXT } else { BINARY };
            bytes.extend(frame(FIN | opcode, &payload, None, Width::Shortest));
        }
        self.push(format!("{count} tiny messages"), bytes);
    }

    /// A message in two to five fragments (more where the frame limit asks for it), with
    /// pings or pongs between some of them. `corrupt` makes it text that is not UTF-8.
    fn fragmented(&mut self, corrupt: bool) {
        let text = corrupt || self.rng.random_bool(0.5);
        let length = self
            .length_within(self.limits.max_message)
            .max(usize::from(corrupt));
        let payload = if corrupt {
            not_utf8(self.rng, length)
        } else {
            self.payload(text, length)
        };
        let mut cuts: Vec<usize> = (1..self.rng.random_range(2..=5))
            .map(|_| self.rng.random_range(0..=length))
            .collect();
        cuts.sort_unstable();
        cuts.insert(0, 0);
        cuts.push(length);
        if !self.oversize() {
            cuts = split_to(&cuts, self.limits.max_frame);
        }
        let parts = cuts.len() - 1;

        for (part, window) in cuts.windows(2).enumerate() {
            if part > 0 && self.rng.random_bool(0.35) {
                self.control();
            }
            let last = part == parts - 1;
            let opcode = match (part, text) {
                (0, true) => TEXT,
                (0, false) => BINARY,
                _ => CONTINUATION,
            };
            let first = if last { FIN | opcode } else { opcode };
            let piece = &payload[window[0]..window[1]];
            let width = self.width();
            let kind = if text { "text" } else { "binary" };
            let corrupt = if corrupt { ", not UTF-8" } else { "" };
            self.push(
                format!(
                    "{kind} fragment {}/{parts}({}{corrupt})",
                    part + 1,
                    piece.len()
                ),
                frame(first, piece, None, width),
            );
        }
    }

    /// A ping or an unsolicited pong.
    fn control(&mut self) {
        let length = self.control_length();
        let payload = self.payload(false, length);
        let (opcode, name) = if self.rng.random_bool(0.7) {
            (PING, "ping")
        } else {
            (PONG, "pong")
        };
        let width = self.width();
        self.push(
            format!("{name}({length})"),
            frame(FIN | opcode, &payload, None, width),
        );
    }

    /// One protocol violation.
    fn malformed(&mut self) {
        match self.rng.random_range(0..11) {
            0 => {
                let cap = self.frame_cap();
                let length = self.length_within(cap).max(1);
                let payload = not_utf8(self.rng, length);
                self.push(
                    format!("text({length}, not UTF-8)"),
                    frame(FIN | TEXT, &payload, None, Width::Shortest),
                );
            }
            1 => self.fragmented(true),
            2 => {
                let length = self.rng.random_range(0..=300);
                let payload = self.payload(true, length);
                let mask = self.rng.random();
                self.push(
                    format!("masked text({length})"),
                    frame(FIN | TEXT, &payload, Some(mask), Width::Shortest),
                );
            }
            3 => {
                let rsv = [0x40, 0x20, 0x10][self.rng.random_range(0..3)];
                let opcode = [TEXT, BINARY, PING][self.rng.random_range(0..3)];
                let length = self.rng.random_range(0..=125);
                let payload = self.payload(opcode == TEXT, length);
                self.push(
                    format!("opcode {opcode:#x} with rsv {rsv:#x}({length})"),
                    frame(FIN | rsv | opcode, &payload, None, Width::Shortest),
                );
            }
            4 => {
                let opcode = [3, 4, 5, 6, 7, 0xB, 0xC, 0xD, 0xE, 0xF][self.rng.random_range(0..10)];
                let length = self.rng.random_range(0..=20);
                let payload = self.payload(false, length);
                self.push(
                    format!("unknown opcode {opcode:#x}({length})"),
                    frame(FIN | opcode, &payload, None, Width::Shortest),
                );
            }
            5 => {
                // Larger than the frame limit, by a little or by a lot; only part of the
                // payload follows, as tungstenite gives up at the header.
                let claimed = if self.rng.random_bool(0.8) {
                    (self.limits.max_frame + 1 + self.rng.random_range(0..100)) as u64
                } else {
                    u64::MAX >> self.rng.random_range(1..8)
                };
                let opcode = [TEXT, BINARY][self.rng.random_range(0..2)];
                let sent = claimed.min(3000) as usize;
                let payload = self.payload(false, sent);
                let mut bytes = header(FIN | opcode, None, Width::Shortest, claimed);
                bytes.extend(payload);
                self.push(
                    format!("frame claiming {claimed} bytes, {sent} sent"),
                    bytes,
                );
            }
            6 => {
                let length = self.rng.random_range(0..=125);
                let payload = self.payload(false, length);
                self.push(
                    format!("non-final ping({length})"),
                    frame(PING, &payload, None, Width::Shortest),
                );
            }
            7 => {
                let length = self.rng.random_range(126..=300);
                let payload = self.payload(false, length);
                self.push(
                    format!("ping too large({length})"),
                    frame(FIN | PING, &payload, None, Width::Shortest),
                );
            }
            8 => {
                let is_final = self.rng.random_bool(0.5);
                let length = self.rng.random_range(0..=300);
                let payload = self.payload(false, length);
                let first = if is_final { FIN } else { 0 };
                self.push(
                    format!("continuation without a start(final={is_final}, {length})"),
                    frame(first | CONTINUATION, &payload, None, Width::Shortest),
                );
            }
            9 => {
                let length = self.rng.random_range(0..=300);
                let payload = self.payload(true, length);
                self.push(
                    format!("text fragment 1/?({length})"),
                    frame(TEXT, &payload, None, Width::Shortest),
                );
                if self.rng.random_bool(0.5) {
                    self.control();
                }
                self.data();
                self.outline
                    .last_mut()
                    .expect("just pushed")
                    .push_str(" inside the fragmented message");
            }
            _ => {
                let length = self.rng.random_range(0..=125);
                let payload = self.payload(false, length);
                let mask = self.rng.random();
                self.push(
                    format!("masked ping({length})"),
                    frame(FIN | PING, &payload, Some(mask), Width::Shortest),
                );
            }
        }
    }

    /// How the stream ends: a close frame, the end of the stream, or a frame cut short.
    fn ending(&mut self) {
        let endings = if self.mix == Mix::WellFormed { 7 } else { 11 };
        match self.rng.random_range(0..endings) {
            0 => self.outline.push("end of stream".to_owned()),
            1 => {
                let codes = [
                    1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000,
                    3999, 4000, 4999,
                ];
                let code = codes[self.rng.random_range(0..codes.len())];
                self.close(code);
            }
            2 => self.push(
                "close()".to_owned(),
                frame(FIN | CLOSE, &[], None, Width::Shortest),
            ),
            3 => self.cut(),
            4 => {
                self.close(1000);
                for _ in 0..self.rng.random_range(1..=3) {
                    self.next_piece();
                }
            }
            // The end comes in the middle of a fragmented message.
            5 | 6 => {
                let length = self.rng.random_range(0..=self.frame_cap().min(300));
                let payload = self.payload(true, length);
                self.push(
                    format!("text fragment 1/?({length})"),
                    frame(TEXT, &payload, None, Width::Shortest),
                );
                if self.rng.random_bool(0.5) {
                    self.control();
                }
                if self.rng.random_bool(0.5) {
                    self.close(1001);
                } else {
                    self.cut();
                }
            }
            7 => {
                let codes = [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535];
                let code = codes[self.rng.random_range(0..codes.len())];
                self.close(code);
            }
            8 => self.push(
                "close with a one-byte payload".to_owned(),
                frame(FIN | CLOSE, &[3], None, Width::Shortest),
            ),
            9 => {
                let mut payload = 1000u16.to_be_bytes().to_vec();
                let length = self.rng.random_range(1..=20);
                payload.extend(not_utf8(self.rng, length));
                self.push(
                    "close(1000, reason not UTF-8)".to_owned(),
                    frame(FIN | CLOSE, &payload, None, Width::Shortest),
                );
            }
            _ => {
                let mut payload = 1000u16.to_be_bytes().to_vec();
                payload.extend(utf8(self.rng, 124));
                self.push(
                    "close too large(126)".to_owned(),
                    frame(FIN | CLOSE, &payload, None, Width::Shortest),
                );
            }
        }
    }

    fn close(&mut self, code: u16) {
        let reason_length = self.control_length().saturating_sub(2);
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend(utf8(self.rng, reason_length));
        self.push(
            format!("close({code}, reason of {reason_length} bytes)"),
            frame(FIN | CLOSE, &payload, None, Width::Shortest),
        );
    }

    /// A data, ping or close frame cut short, then the end of the stream.
    fn cut(&mut self) {
        let (first, length) = match self.rng.random_range(0..3) {
            0 => (FIN | PING, self.control_length()),
            1 => (FIN | CLOSE, 2),
            _ => (FIN | BINARY, self.length_within(self.frame_cap())),
        };
        let payload = self.payload(false, length);
        let width = self.width();
        let mut bytes = frame(first, &payload, None, width);
        let kept = self.rng.random_range(1..bytes.len());
        bytes.truncate(kept);
        self.push(
            format!(
                "opcode {:#x}({length}) cut after {kept} bytes",
                first & 0x0F
            ),
            bytes,
        );
    }
}

/// `cuts` (ascending offsets into a message, first and last included) with more cuts
/// where two lie more than `max` apart.
fn split_to(cuts: &[usize], max: usize) -> Vec<usize> {
    let mut finer = vec![cuts[0]];
    for window in cuts.windows(2) {
        let mut at = window[0];
        while window[1] - at > max {
            at += max;
            finer.push(at);
        }
        finer.push(window[1]);
    }
    finer
}

/// How a frame's length field is written.
#[derive(Debug, Clone, Copy)]
enum Width {
    /// The shortest form, as RFC 6455 asks.
    Shortest,
    /// Two extra bytes, even for a short payload.
    Sixteen,
    /// Eight extra bytes, even for a short payload.
    SixtyFour,
}

/// A server frame: `first` carries FIN, RSV and the opcode; the payload is masked with
/// `mask` if one is given (which a server must not do).
fn frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>, width: Width) -> Vec<u8> {
    let mut bytes = header(first, mask, width, payload.len() as u64);
    let start = bytes.len();
    bytes.extend(payload);
    if let Some(mask) = mask {
        for (index, byte) in bytes[start..].iter_mut().enumerate() {
            *byte ^= mask[index % 4];
        }
    }
    bytes
}

fn header(first: u8, mask: Option<[u8; 4]>, width: Width, length: u64) -> Vec<u8> {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let width = match width {
        Width::Shortest if length <= 125 => None,
        Width::Shortest | Width::Sixteen if length <= 0xFFFF => Some(Width::Sixteen),
        _ => Some(Width::SixtyFour),
    };
    let mut bytes = vec![first];
    match width {
        None => bytes.push(mask_bit | length as u8),
        Some(Width::Sixteen) => {
            bytes.push(mask_bit | 126);
            bytes.extend((length as u16).to_be_bytes());
        }
        Some(_) => {
            bytes.push(mask_bit | 127);
            bytes.extend(length.to_be_bytes());
        }
    }
    if let Some(mask) = mask {
        bytes.extend(mask);
    }
    bytes
}

/// Long payloads repeat one random stretch of this many bytes: the RNG is slow in a debug
/// build, and an odd length still puts every byte (and every wide character) across every
/// boundary.
const STRETCH: usize = 509;

/// `length` random bytes.
fn binary(rng: &mut StdRng, length: usize) -> Vec<u8> {
    let mut stretch = vec![0; length.min(STRETCH)];
    rng.fill(&mut stretch[..]);
    let mut bytes = stretch.repeat(length / stretch.len().max(1));
    bytes.extend_from_slice(&stretch[..length - bytes.len()]);
    bytes
}

/// Valid UTF-8 of exactly `length` bytes, with characters of every width.
fn utf8(rng: &mut StdRng, length: usize) -> Vec<u8> {
    if length > 2 * STRETCH {
        let stretch = utf8(rng, STRETCH);
        let mut text = stretch.repeat(length / STRETCH);
        text.extend(utf8(rng, length % STRETCH));
        return text;
    }

    let mut text = String::with_capacity(length);
    while text.len() < length {
        let room = length - text.len();
        let character = match rng.random_range(1..=room.min(4)) {
            1 => char::from(rng.random_range(0x20u8..0x7F)),
            2 => char::from_u32(rng.random_range(0x80..0x800)).expect("two-byte scalar"),
            // Surrogates are not characters; try again.
            3 => match char::from_u32(rng.random_range(0x800..0x10000)) {
                Some(character) => character,
                None => continue,
            },
            _ => char::from_u32(rng.random_range(0x10000..0x110000)).expect("four-byte scalar"),
        };
        text.push(character);
    }
    text.into_bytes()
}

/// `length` (at least 1) bytes that are not UTF-8: a byte that never occurs in UTF-8, or
/// a sequence cut short at the end.
fn not_utf8(rng: &mut StdRng, length: usize) -> Vec<u8> {
    let mut bytes = utf8(rng, length);
    if rng.random_bool(0.5) {
        let at = rng.random_range(0..length);
        bytes[at] = [0xC0, 0xC1, 0xF5, 0xFE, 0xFF][rng.random_range(0..5)];
    } else {
        bytes[length - 1] = 0xE2;
    }
    bytes
}

/// A server that answers one upgrade and then writes the case's bytes as the case says.
async fn serve(case: Arc<ReadCase>) -> Server {
    Server::start(move |accepted: Accepted| play(Arc::clone(&case), accepted)).await
}

async fn play(case: Arc<ReadCase>, accepted: Accepted) {
    let mut tcp = accepted.tcp;
    let _ = tcp.set_nodelay(true);
    let Some(mut first) = upgrade_answer(&mut tcp, case.line_end).await else {
        return;
    };

    let mut open = true;
    if let Some(split) = case.answer_split {
        let split = split.min(first.len());
        open = tcp.write_all(&first[..split]).await.is_ok();
        first.drain(..split);
        tokio::task::yield_now().await;
    }
    let (with_answer, mut rest) = case.stream.split_at(case.with_answer);
    first.extend_from_slice(with_answer);
    open = open && tcp.write_all(&first).await.is_ok();
    for &size in &case.chunks {
        if !open {
            break;
        }
        let (piece, tail) = rest.split_at(size);
        open = tcp.write_all(piece).await.is_ok() && tcp.flush().await.is_ok();
        rest = tail;
        // Let the client read this piece on its own before the next arrives.
        tokio::task::yield_now().await;
    }
    let _ = tcp.shutdown().await;

    // Read whatever the client sends until it goes, so that closing never resets the
    // connection while the client still reads.
    let answered = tokio::time::timeout(CASE_TIMEOUT, client_close(&mut tcp))
        .await
        .unwrap_or_else(|_| "a connection left open".to_owned());
    let _ = accepted.record.send(answered);
}

/// The close frame a client sends after a stream that ends with `end`: the server's own
/// close echoed, or the code of the violation; none after a connection that just dropped.
fn close_answer(end: &End) -> String {
    match end {
        End::Closed { code, .. } | End::Violation { code, .. } => format!("close {code}"),
        End::Dropped | End::Other(_) => "no close".to_owned(),
    }
}

/// Reads the client's frames until it goes, and says which close frame it sent first:
/// `close 1002`, `close 1005` for one without a code, or `no close`.
async fn client_close(tcp: &mut TcpStream) -> String {
    let mut close = None;
    let mut unparsed = Vec::new();
    let mut chunk = vec![0; 16 << 10];
    loop {
        let read = match tcp.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(read) => read,
        };
        if close.is_some() {
            continue;
        }
        unparsed.extend_from_slice(&chunk[..read]);
        while let Some((opcode, payload, length)) = client_frame(&unparsed) {
            unparsed.drain(..length);
            if opcode == CLOSE {
                close = Some(match payload.get(..2) {
                    Some(code) => u16::from_be_bytes([code[0], code[1]]),
                    None => 1005,
                });
                break;
            }
        }
    }
    close.map_or_else(|| "no close".to_owned(), |code| format!("close {code}"))
}

/// The client frame at the start of `bytes`, if it is all there: its opcode, its
/// unmasked payload and its length on the wire.
fn client_frame(bytes: &[u8]) -> Option<(u8, Vec<u8>, usize)> {
    let [first, second, ..] = *bytes else {
        return None;
    };
    let (length, mut at) = match second & 0x7F {
        126 => (
            u64::from(u16::from_be_bytes(bytes.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (u64::from_be_bytes(bytes.get(2..10)?.try_into().ok()?), 10),
        short => (u64::from(short), 2),
    };
    let mask: [u8; 4] = if second & 0x80 != 0 {
        at += 4;
        bytes.get(at - 4..at)?.try_into().ok()?
    } else {
        [0; 4]
    };
    let end = at + usize::try_from(length).ok()?;
    let mut payload = bytes.get(at..end)?.to_vec();
    for (index, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[index % 4];
    }
    Some((first & 0x0F, payload, end))
}

/// The ground truth: a plain tokio-tungstenite client, read until its stream ends.
async fn read_with_tungstenite(server: &Server, limits: Limits) -> Seen {
    let tcp = TcpStream::connect(server.addr).await.expect("connect");
    let _ = tcp.set_nodelay(true);
    let config = WebSocketConfig::default()
        .max_message_size(Some(limits.max_message))
        .max_frame_size(Some(limits.max_frame));
    let (mut ws, _) = tokio_tungstenite::client_async_with_config(server.url(), tcp, Some(config))
        .await
        .expect("the upgrade succeeds");

    let mut messages = Vec::new();
    let mut close = None;
    let mut error = None;
    while let Some(frame) = ws.next().await {
        match frame {
            Ok(Frame::Text(text)) => messages.push(Digest::of(&Message::Text(text))),
            Ok(Frame::Binary(data)) => messages.push(Digest::of(&Message::Binary(data))),
            Ok(Frame::Close(frame)) => {
                close = Some(match frame {
                    Some(frame) => (u16::from(frame.code), frame.reason.to_string()),
                    None => (1005, String::new()),
                });
            }
            Ok(_) => {}
            Err(failure) => {
                error = Some(failure);
                break;
            }
        }
    }

    // A close frame decides the end, whatever follows it: tungstenite refuses any frame
    // after it, and this client waits for the end of the connection. Without one, the
    // error decides.
    let end = match (close, error) {
        (Some((code, reason)), _) => End::Closed { code, reason },
        (None, Some(error)) => end_of_tungstenite_error(&error),
        (None, None) => End::Dropped,
    };
    Seen {
        messages,
        end,
        changed: Vec::new(),
    }
}

fn end_of_tungstenite_error(error: &tungstenite::Error) -> End {
    use std::io::ErrorKind;

    let code = match error {
        tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
        | tungstenite::Error::ConnectionClosed => return End::Dropped,
        tungstenite::Error::Io(io)
            if matches!(
                io.kind(),
                ErrorKind::ConnectionReset
                    | ErrorKind::ConnectionAborted
                    | ErrorKind::BrokenPipe
                    | ErrorKind::UnexpectedEof
            ) =>
        {
            return End::Dropped;
        }
        tungstenite::Error::Utf8(_) => 1007,
        tungstenite::Error::Capacity(_) => 1009,
        tungstenite::Error::Protocol(_) => 1002,
        other => return End::Other(format!("{other:?}")),
    };
    End::Violation {
        code,
        error: format!("{error:?}"),
    }
}

/// Settings under which the client ends with its first connection, whatever ends it, and
/// pings every `ping_interval` without ever giving up on the pong within a case.
fn ending_config(ping_interval: Option<Duration>) -> Config {
    Config {
        backoff: Backoff::exponential(Duration::from_millis(10))
            .jitter(Jitter::None)
            .max_attempts(1),
        ping_interval,
        pong_timeout: CASE_TIMEOUT * 2,
        ..Config::default()
    }
}

/// This client, reading until it ends.
async fn read_with_client(server: &Server, case: &ReadCase) -> Seen {
    let config = Config {
        inbound_capacity: case.inbound_capacity,
        inbound_max_bytes: case.inbound_max_bytes,
        max_message_size: case.limits.max_message,
        max_frame_size: case.limits.max_frame,
        ..ending_config(case.ping_interval)
    };
    let (client, mut incoming) = support::client_for(server, config);

    // Payloads share the client's read buffers: holding some and dropping others is what
    // decides which buffers may be refilled.
    let mut holds = StdRng::seed_from_u64(case.index as u64);
    let mut messages = Vec::new();
    let mut held = Vec::new();
    while let Some(message) = incoming.recv().await {
        messages.push(Digest::of(&message));
        if holds.random_range(0..100) < case.hold_percent {
            held.push((messages.len() - 1, message));
        }
        if case.slow_reader {
            tokio::task::yield_now().await;
        }
    }
    let reason = client.closed().await;

    let changed = held
        .iter()
        .filter(|(index, message)| Digest::of(message) != messages[*index])
        .map(|(index, _)| *index)
        .collect();
    Seen {
        messages,
        end: end_of_client(&reason),
        changed,
    }
}

fn end_of_client(reason: &CloseReason) -> End {
    let Some(mut error) = reason.error() else {
        return End::Other(format!("{reason:?}"));
    };
    if let Error::GaveUp { last, .. } = error {
        error = last;
    }
    match error {
        Error::Closed { code, reason } => End::Closed {
            code: *code,
            reason: reason.clone(),
        },
        Error::Dropped => End::Dropped,
        Error::WebSocket(source) => match error.violation_code() {
            Some(code) => End::Violation {
                code,
                error: format!("{source:?}"),
            },
            None => End::Other(format!("{error:?}")),
        },
        other => End::Other(format!("{other:?}")),
    }
}

/// Where the two clients part ways, if they do.
fn compare(truth: &Seen, ours: &Seen) -> Option<String> {
    let mut difference = String::new();
    if truth.messages != ours.messages {
        let first = truth
            .messages
            .iter()
            .zip(&ours.messages)
            .position(|(a, b)| a != b)
            .unwrap_or(truth.messages.len().min(ours.messages.len()));
        let _ = write!(
            difference,
            "messages: tungstenite saw {}, the client {}; first difference at {first}: \
             tungstenite {}, the client {}. ",
            truth.messages.len(),
            ours.messages.len(),
            describe_digest(truth.messages.get(first)),
            describe_digest(ours.messages.get(first)),
        );
    }
    if !ours.changed.is_empty() {
        let _ = write!(
            difference,
            "the payloads of messages {:?} changed while the application held them. ",
            ours.changed
        );
    }
    if truth.end != ours.end {
        let _ = write!(
            difference,
            "end: tungstenite {:?}, the client {:?}",
            truth.end, ours.end
        );
    }
    (!difference.is_empty()).then_some(difference)
}

fn describe_digest(digest: Option<&Digest>) -> String {
    digest.map_or_else(|| "nothing".to_owned(), Digest::to_string)
}

fn brief(message: Option<&Message>) -> String {
    let Some(message) = message else {
        return "nothing".to_owned();
    };
    let kind = if message.as_text().is_some() {
        "text"
    } else {
        "binary"
    };
    let head: Vec<u8> = message.as_bytes().iter().take(8).copied().collect();
    format!("{kind}({}) starting {head:02x?}", message.len())
}

fn describe(case: &ReadCase) -> String {
    let mut text = format!(
        "case {}: limits {:?}, inbound capacity {} and {} bytes, {}% held, slow reader {}, \
         pings {:?}, line end {:?}, answer split at {:?}, {} bytes ({} with the answer, then {} \
         writes)\n  frames: {}",
        case.index,
        case.limits,
        case.inbound_capacity,
        case.inbound_max_bytes,
        case.hold_percent,
        case.slow_reader,
        case.ping_interval,
        case.line_end,
        case.answer_split,
        case.stream.len(),
        case.with_answer,
        case.chunks.len(),
        case.outline.join(", "),
    );
    if case.stream.len() <= 256 {
        let _ = write!(text, "\n  bytes: {:02x?}", case.stream);
    }
    text
}

// ---------------------------------------------------------------------------------------
// Write side
// ---------------------------------------------------------------------------------------

/// When a write case closes the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Closing {
    /// Once the server has received every message.
    AfterDelivery,
    /// As soon as the connection is open, while buffered messages are still going out.
    AtOnce,
}

/// One write case: what the client sends, and the conditions it sends under.
#[derive(Debug)]
struct WriteCase {
    /// Sent by the on-connect hook.
    hook: Vec<Message>,
    /// Sent through `Client::send` from the start, so most wait for the connection.
    messages: Vec<Message>,
    ping_interval: Duration,
    write_buffer_size: usize,
    /// After which messages the application pauses for a ping interval.
    pauses: Vec<usize>,
    /// Pings the server sends while it reads, so the client's answers go out among its
    /// messages.
    server_pings: usize,
}

/// What the server heard, in order.
#[derive(Debug)]
enum Heard {
    Message(Message),
    /// How the server's stream ended.
    End(String),
}

async fn run_write_cases(seed: u64, cases: usize, closing: Closing) -> Vec<String> {
    let mut failures = Vec::new();
    for index in 0..cases {
        let case = write_case(&mut case_rng(seed, index), closing);
        let outcome = tokio::time::timeout(CASE_TIMEOUT, run_write_case(&case, closing)).await;
        let failure = match outcome {
            Ok(Ok(())) => continue,
            Ok(Err(failure)) => failure,
            Err(_) => format!("did not end within {CASE_TIMEOUT:?}"),
        };
        let bytes: usize = case.messages.iter().map(Message::len).sum();
        failures.push(format!(
            "case {index}: {} hook messages, {} messages of {bytes} bytes, ping every {:?}, \
             write buffer {}, {} server pings\n  {failure}",
            case.hook.len(),
            case.messages.len(),
            case.ping_interval,
            case.write_buffer_size,
            case.server_pings,
        ));
    }
    failures
}

fn write_case(rng: &mut StdRng, closing: Closing) -> WriteCase {
    let message = |rng: &mut StdRng| {
        let length = if rng.random_bool(0.6) {
            LENGTHS[rng.random_range(0..LENGTHS.len())]
        } else {
            rng.random_range(0..=300)
        };
        if rng.random_bool(0.5) {
            let text = String::from_utf8(utf8(rng, length)).expect("generated as UTF-8");
            Message::text(text)
        } else {
            Message::binary(binary(rng, length))
        }
    };
    // The hook's messages meet a close at once in their own test, which does not depend
    // on winning a race.
    let hooked = if closing == Closing::AfterDelivery && rng.random_bool(0.5) {
        rng.random_range(1..=3)
    } else {
        0
    };
    let hook = (0..hooked).map(|_| message(rng)).collect();
    let count = match closing {
        Closing::AfterDelivery => rng.random_range(1..=40),
        // Enough that some are usually still buffered when the close comes.
        Closing::AtOnce => rng.random_range(20..=200),
    };
    let messages = (0..count).map(|_| message(rng)).collect();
    let pauses = match closing {
        Closing::AfterDelivery => (0..count).filter(|_| rng.random_bool(0.1)).collect(),
        Closing::AtOnce => Vec::new(),
    };
    WriteCase {
        hook,
        messages,
        pauses,
        ping_interval: Duration::from_millis(rng.random_range(1..=3)),
        write_buffer_size: [0, 1, 200, 4096, 128 << 10][rng.random_range(0..5)],
        server_pings: if rng.random_bool(0.5) {
            rng.random_range(50..=500)
        } else {
            0
        },
    }
}

async fn run_write_case(case: &WriteCase, closing: Closing) -> Result<(), String> {
    let (heard, mut hearing) = mpsc::unbounded_channel();
    let pings = case.server_pings;
    let server = Server::start(move |accepted: Accepted| {
        record_messages(accepted, heard.clone(), Pinging::Steady(pings))
    })
    .await;

    let config = Config {
        write_buffer_size: case.write_buffer_size,
        buffer: match closing {
            // Sends wait for room, so the buffer drains while it fills.
            Closing::AfterDelivery => BufferConfig {
                overflow: Overflow::Wait,
                ..BufferConfig::default()
            },
            // Everything is buffered before the connection opens.
            Closing::AtOnce => BufferConfig {
                max_messages: 4096,
                max_bytes: 64 << 20,
                ..BufferConfig::default()
            },
        },
        ..ending_config(Some(case.ping_interval))
    };
    let hook = Arc::new(case.hook.clone());
    let (client, _incoming) = Client::builder(server.url())
        .config(config)
        .on_connect(move |sender| {
            let hook = Arc::clone(&hook);
            async move {
                for message in hook.iter() {
                    sender.send(message.clone())?;
                }
                Ok(())
            }
        })
        .build()
        .expect("a valid configuration");

    for (index, message) in case.messages.iter().enumerate() {
        client
            .send(message.clone())
            .await
            .map_err(|error| format!("send failed: {error:?}"))?;
        if case.pauses.contains(&index) {
            // Long enough for a ping to fall due between two messages.
            tokio::time::sleep(case.ping_interval).await;
        }
    }
    let expected: Vec<Message> = case.hook.iter().chain(&case.messages).cloned().collect();

    let (received, unsent) = match closing {
        Closing::AfterDelivery => {
            let received = hear(&mut hearing, expected.len())
                .await
                .map_err(|early| format!("{early}; the client: {:?}", client.current_state()))?;
            (received, client.close().await)
        }
        Closing::AtOnce => {
            support::wait_open(&client).await;
            (Vec::new(), client.close().await)
        }
    };

    let (received, end) = hear_to_the_end(&mut hearing, received).await;
    let lost = client.metrics().lost_in_flight;
    judge(&expected, &received, &unsent, &end, closing, lost)
}

/// Whether what the server `received`, followed by what the client returned `unsent`, is
/// exactly what was `expected`, with a normal close and nothing lost; if not, how not.
fn judge(
    expected: &[Message],
    received: &[Message],
    unsent: &[Message],
    end: &str,
    closing: Closing,
    lost: u64,
) -> Result<(), String> {
    let mut failure = String::new();
    let delivered: Vec<Message> = received.iter().chain(unsent).cloned().collect();
    if delivered != expected {
        let first = delivered
            .iter()
            .zip(expected)
            .position(|(a, b)| a != b)
            .unwrap_or(delivered.len().min(expected.len()));
        let _ = write!(
            failure,
            "{} received and {} returned unsent of {} expected; first difference at {first}: \
             expected {}, got {}. ",
            received.len(),
            unsent.len(),
            expected.len(),
            brief(expected.get(first)),
            brief(delivered.get(first)),
        );
        let order: Vec<String> = received
            .iter()
            .map(
                |message| match expected.iter().position(|sent| sent == message) {
                    Some(index) => index.to_string(),
                    None => "?".to_owned(),
                },
            )
            .collect();
        let _ = write!(failure, "received, by index sent: [{}]. ", order.join(", "));
    }
    if closing == Closing::AfterDelivery && !unsent.is_empty() {
        let _ = write!(failure, "{} messages came back unsent. ", unsent.len());
    }
    if end != "close 1000" {
        let _ = write!(failure, "the server's stream ended with {end}. ");
    }
    if lost > 0 {
        let _ = write!(failure, "{lost} messages reported lost in flight. ");
    }
    if failure.is_empty() {
        Ok(())
    } else {
        Err(failure)
    }
}

/// The next `count` messages the server hears, or why its stream ended first.
async fn hear(
    hearing: &mut mpsc::UnboundedReceiver<Heard>,
    count: usize,
) -> Result<Vec<Message>, String> {
    let mut received = Vec::new();
    while received.len() < count {
        match hearing.recv().await {
            Some(Heard::Message(message)) => received.push(message),
            Some(Heard::End(end)) => {
                return Err(format!(
                    "the server's stream ended ({end}) after {} of {count} messages",
                    received.len()
                ));
            }
            None => unreachable!("the server keeps its sender"),
        }
    }
    Ok(received)
}

/// Adds whatever else the server hears to `received`, up to the end of its stream, and
/// returns that end too.
async fn hear_to_the_end(
    hearing: &mut mpsc::UnboundedReceiver<Heard>,
    mut received: Vec<Message>,
) -> (Vec<Message>, String) {
    loop {
        match hearing.recv().await {
            Some(Heard::Message(message)) => received.push(message),
            Some(Heard::End(end)) => return (received, end),
            None => unreachable!("the server keeps its sender"),
        }
    }
}

/// How a recording server pings the client while it reads.
#[derive(Debug)]
enum Pinging {
    /// This many pings, one at a time, letting the client answer each.
    Steady(usize),
    /// This many pings written at once; then `Notify` is told.
    Flood(usize, Arc<Notify>),
}

/// Upgrades with plain tungstenite and reports every data message and the end of the
/// stream, pinging the client meanwhile as `pinging` says.
async fn record_messages(
    accepted: Accepted,
    heard: mpsc::UnboundedSender<Heard>,
    pinging: Pinging,
) {
    let ws = match tokio_tungstenite::accept_async(accepted.tcp).await {
        Ok(ws) => ws,
        Err(error) => {
            let _ = heard.send(Heard::End(format!("the upgrade failed: {error:?}")));
            return;
        }
    };
    let (mut sink, mut stream) = ws.split();

    let pinger = async move {
        match pinging {
            Pinging::Steady(pings) => {
                for nonce in 0..pings {
                    let payload = (nonce as u64).to_be_bytes().to_vec();
                    if sink.send(Frame::Ping(payload.into())).await.is_err() {
                        break;
                    }
                    tokio::task::yield_now().await;
                }
            }
            Pinging::Flood(pings, flooded) => {
                for _ in 0..pings {
                    if sink.feed(Frame::Ping(Bytes::new())).await.is_err() {
                        break;
                    }
                }
                let _ = sink.flush().await;
                flooded.notify_one();
            }
        }
        // Kept until the reader is done, so the stream is not closed under it.
        sink
    };
    let reader = async {
        let mut end = None;
        while let Some(frame) = stream.next().await {
            match frame {
                Ok(Frame::Text(text)) => {
                    let _ = heard.send(Heard::Message(Message::Text(text)));
                }
                Ok(Frame::Binary(data)) => {
                    let _ = heard.send(Heard::Message(Message::Binary(data)));
                }
                // Read on, so that tungstenite answers the close.
                Ok(Frame::Close(Some(frame))) => {
                    end = Some(format!("close {}", u16::from(frame.code)));
                }
                Ok(Frame::Close(None)) => end = Some("close without a code".to_owned()),
                Ok(_) => {}
                Err(error) => {
                    end.get_or_insert(format!("error {error:?}"));
                    break;
                }
            }
        }
        let end = end.unwrap_or_else(|| "the end of the stream".to_owned());
        let _ = heard.send(Heard::End(end));
    };
    let (_sink, ()) = tokio::join!(pinger, reader);
}
