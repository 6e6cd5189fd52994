//! The server's observer and run-time controls, over a real socket: what an observer is told,
//! dropping the client, refusing connections, delaying replies.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

mod common;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Harness, REGS};
use vfu::server::observe::{Event, Observer, Refusal};
use vfu::server::{Controls, ServerConfig};
use vfu::wire::cmd;
use vfu::Errno;

/// Every event, as a line of text, in order.
#[derive(Default)]
struct Log(Mutex<Vec<String>>);

impl Observer for Log {
    fn observe(&self, event: &Event<'_>) {
        let line = match event {
            Event::Connected(_) => "connected".to_string(),
            Event::Refused(_, why) => format!("refused {}", why.name()),
            Event::Disconnected(_, end) => format!("disconnected {end:?}"),
            Event::Request(r) => format!(
                "request {} region={:?} offset={:?} count={:?}",
                cmd::name(r.header.cmd),
                r.fields.region,
                r.fields.offset,
                r.fields.count
            ),
            Event::Reply(r) => format!(
                "reply {} errno={:?} sent={} size={}",
                cmd::name(r.request.cmd),
                r.errno,
                r.sent,
                r.size
            ),
        };
        self.0.lock().unwrap().push(line);
    }
}

impl Log {
    fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits for a line starting with `prefix` (events after a disconnect arrive on the server's
    /// thread a moment later).
    fn wait_for(&self, prefix: &str) -> Vec<String> {
        let until = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = self.lines();
            if lines.iter().any(|l| l.starts_with(prefix)) || Instant::now() > until {
                return lines;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn observed() -> (Harness, Arc<Log>, Controls) {
    let log = Arc::new(Log::default());
    let controls = Controls::new();
    let (l, c) = (log.clone(), controls.clone());
    let h = Harness::build(ServerConfig::default(), move |s| {
        s.with_observer(l).with_controls(c)
    });
    (h, log, controls)
}

#[test]
fn observer_sees_each_request_and_its_reply() {
    let (h, log, _) = observed();
    let mut c = h.client();
    c.region_read(REGS, 0x10, 4).unwrap();
    assert!(matches!(
        c.region_read(99, 0, 4),
        Err(vfu::Error::Remote {
            errno: Errno::EINVAL,
            ..
        })
    ));
    drop(c);
    let lines = log.wait_for("disconnected");
    assert_eq!(lines[0], "connected");
    assert_eq!(
        lines[1],
        "request VERSION region=None offset=None count=None"
    );
    assert!(
        lines[2].starts_with("reply VERSION errno=None sent=true"),
        "{lines:?}"
    );
    assert_eq!(
        lines[3],
        "request REGION_READ region=Some(0) offset=Some(16) count=Some(4)"
    );
    // Header 16 + access 16 + 4 bytes of data.
    assert_eq!(lines[4], "reply REGION_READ errno=None sent=true size=36");
    assert_eq!(
        lines[5],
        "request REGION_READ region=Some(99) offset=Some(0) count=Some(4)"
    );
    assert_eq!(
        lines[6],
        "reply REGION_READ errno=Some(EINVAL) sent=true size=16"
    );
    assert_eq!(lines[7], "disconnected Ok(Closed)");
}

#[test]
fn dropped_client_sees_end_of_stream_and_the_next_one_is_served() {
    let (h, log, controls) = observed();
    let mut c = h.client();
    c.region_read(REGS, 0, 4).unwrap();
    assert!(controls.client().is_some());
    assert!(controls.drop_client().is_some());
    assert!(c.region_read(REGS, 0, 4).is_err());
    let lines = log.wait_for("disconnected");
    assert!(
        lines.contains(&"disconnected Ok(Dropped)".to_string()),
        "{lines:?}"
    );
    let mut next = h.client();
    next.region_read(REGS, 0, 4).unwrap();
}

#[test]
fn refused_connection_is_closed_before_its_first_message() {
    let (h, log, controls) = observed();
    controls.refuse_next(1);
    let mut s = UnixStream::connect(h.path()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 16];
    assert_eq!(
        s.read(&mut buf).unwrap(),
        0,
        "the refused socket must be closed"
    );
    assert_eq!(controls.refusals_pending(), 0);
    assert!(log
        .lines()
        .contains(&format!("refused {}", Refusal::Control.name())));
    // Only one was asked for.
    h.client().region_read(REGS, 0, 4).unwrap();
}

#[test]
fn counted_reply_delay_slows_exactly_that_many_replies() {
    let (h, _log, controls) = observed();
    let mut c = h.client();
    controls.delay_replies(Duration::from_millis(300), Some(1));
    let t = Instant::now();
    c.region_read(REGS, 0, 4).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(300));
    let t = Instant::now();
    c.region_read(REGS, 0, 4).unwrap();
    assert!(t.elapsed() < Duration::from_millis(300));
    assert_eq!(controls.reply_delay(), None);
}

#[test]
fn dropping_the_client_cuts_a_reply_delay_short() {
    let (h, log, controls) = observed();
    let mut c = h.client();
    controls.delay_replies(Duration::from_secs(60), None);
    let waiter = std::thread::spawn(move || c.region_read(REGS, 0, 4));
    std::thread::sleep(Duration::from_millis(100));
    let t = Instant::now();
    controls.drop_client();
    assert!(waiter.join().unwrap().is_err());
    let lines = log.wait_for("disconnected");
    assert!(t.elapsed() < Duration::from_secs(5), "{lines:?}");
    assert!(
        lines.iter().any(|l| l == "disconnected Ok(Dropped)"),
        "{lines:?}"
    );
    controls.clear_delay();
}
