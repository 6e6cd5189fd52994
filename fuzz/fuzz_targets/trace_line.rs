//! Arbitrary text through the trace-line reader that `vgrace trace` uses on files it did not
//! write itself (a hand-edited or truncated trace): it answers a record or `None`, and a record
//! it accepts serialises back to a line it accepts again.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfu::trace::line::{self, Record};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Some(Record::Line(l)) = line::parse(text) {
        if let Ok(again) = serde_json::to_string(&*l) {
            assert!(line::parse(&again).is_some(), "{again}");
        }
    }
});
