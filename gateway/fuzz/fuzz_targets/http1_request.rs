//! Any bytes as a client's request to the lean HTTP/1 engine: what it
//! admits and writes upstream must be one request, read by `httparse`
//! exactly as judged (`gatehouse::proxy::http1::oracle`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(why) = gatehouse::proxy::http1::oracle::forwarded_as_judged(data) {
        panic!("{why}");
    }
});
