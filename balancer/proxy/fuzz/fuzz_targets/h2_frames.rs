//! The HTTP/2 flood guard on a client's raw bytes: never panics, and sees the same frames (the
//! same abuse, or none) whether the bytes arrive at once or in pieces of any size, as reads
//! split them.
#![no_main]

use libfuzzer_sys::fuzz_target;
use pier_balancer::front::h2::guard::FrameCounter;

fn feed(data: &[u8], piece: usize) -> Option<&'static str> {
    // Low limits, so that floods are within reach of small inputs.
    let mut counter = FrameCounter::new(16, 4);
    data.chunks(piece)
        .find_map(|p| counter.feed(p))
        .map(|abuse| abuse.name())
}

fuzz_target!(|input: &[u8]| {
    let Some((&knobs, data)) = input.split_first() else {
        return;
    };
    let whole = feed(data, data.len().max(1));
    let pieces = feed(data, usize::from(knobs % 17) + 1);
    assert_eq!(whole, pieces);
});
