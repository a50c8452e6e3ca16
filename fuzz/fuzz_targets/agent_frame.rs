//! The agent wire protocol: arbitrary byte streams through the frame reader and
//! the decoders both sides use. The first byte picks the side:
//! - 0: what the agent reads on a control connection (a `Hello`, then
//!   requests through `decode_request`);
//! - 1: what the host reads from the guest (a `HelloReply`, then
//!   `ResponseFrame`s), the direction that is hostile to the host;
//! - 2: stdio data frames.
//!
//! Every decoded message must encode and decode to itself, and every id the
//! agent's `validate_id` accepts must be safe as a directory name.
#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_agent::protocol::{
    decode_request, read_frame, validate_id, Hello, HelloReply, RequestFrame, ResponseFrame,
    MAX_CONTROL_FRAME, MAX_DATA_FRAME, MAX_ID_LEN,
};

/// Checks every string under an id-like key of `v` with `validate_id`.
fn check_ids(v: &serde_json::Value) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                if let (true, Some(s)) = (
                    matches!(k.as_str(), "id" | "container" | "exec"),
                    v.as_str(),
                ) {
                    if validate_id(k, s).is_ok() {
                        assert!(!s.is_empty() && s.len() <= MAX_ID_LEN, "id {s:?} accepted");
                        assert!(
                            s != "." && s != ".." && !s.contains('/') && !s.contains('\0'),
                            "id {s:?} accepted"
                        );
                    }
                }
                check_ids(v);
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(check_ids),
        _ => {}
    }
}

fn roundtrip<T>(msg: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = serde_json::to_vec(msg).expect("encode a decoded message");
    let again: T = serde_json::from_slice(&bytes).expect("decode an encoded message");
    assert_eq!(
        &again, msg,
        "message changed in an encode/decode round trip"
    );
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut r = rest;
    match mode % 3 {
        0 => {
            let Ok(Some(hello)) = read_frame(&mut r, MAX_CONTROL_FRAME) else {
                return;
            };
            if let Ok(h) = serde_json::from_slice::<Hello>(&hello) {
                roundtrip(&h);
            }
            while let Ok(Some(payload)) = read_frame(&mut r, MAX_CONTROL_FRAME) {
                if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&payload) {
                    check_ids(&v);
                }
                if let Ok(frame) = decode_request(&payload) {
                    let _ = frame.request.name();
                    roundtrip::<RequestFrame>(&frame);
                    let bytes = serde_json::to_vec(&frame).unwrap();
                    let again = decode_request(&bytes).expect("decode an encoded request");
                    assert_eq!(again, frame);
                }
            }
        }
        1 => {
            let Ok(Some(reply)) = read_frame(&mut r, MAX_CONTROL_FRAME) else {
                return;
            };
            if let Ok(h) = serde_json::from_slice::<HelloReply>(&reply) {
                roundtrip(&h);
            }
            while let Ok(Some(payload)) = read_frame(&mut r, MAX_CONTROL_FRAME) {
                if let Ok(frame) = serde_json::from_slice::<ResponseFrame>(&payload) {
                    roundtrip(&frame);
                }
            }
        }
        _ => {
            let mut total = 0usize;
            while let Ok(Some(frame)) = read_frame(&mut r, MAX_DATA_FRAME) {
                assert!(frame.len() <= MAX_DATA_FRAME);
                total += frame.len() + 4;
                assert!(total <= rest.len());
                if frame.is_empty() {
                    break;
                }
            }
        }
    }
});
