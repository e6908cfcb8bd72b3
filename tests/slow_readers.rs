//! Read-while-fill under the load that used to break coalescing: a
//! thousand slow readers of one cold, cacheable 4 MiB object. The origin
//! must be asked once, the gateway's memory must stay near one copy of the
//! object, and fall back once the readers are gone (the scenario is in
//! `common/slow_readers.rs`; `cargo bench --bench slow_readers` reports it
//! for the release build).

mod common;

use std::time::Duration;

const OBJECT: usize = 4 << 20;

#[test]
fn a_thousand_slow_readers_of_a_cold_object_make_one_origin_fetch_in_bounded_memory() {
    // Three coalescing timeouts of slowness: a waiter that gave up on the
    // first fetch would have fetched on its own.
    let r = common::slow_readers::run(1000, OBJECT, 2, Duration::from_secs(3));
    eprintln!("{r:?}");
    assert_eq!(
        r.origin_fetches, 1,
        "{} slow readers of one cold object make one origin fetch",
        r.clients
    );
    assert_eq!(
        r.answered, r.clients,
        "every reader got its head while the others were slow"
    );
    let object_kib = (OBJECT / 1024) as u64;
    assert!(
        r.peak_kib < 100 * 1024 + object_kib,
        "peak RSS {} KiB is over 100 MiB plus the object",
        r.peak_kib
    );
    assert!(
        r.after_kib <= r.start_kib + object_kib + 12 * 1024,
        "RSS after the readers left: {} KiB, not back to {} KiB plus the object (within 12 MiB)",
        r.after_kib,
        r.start_kib
    );
    assert!(r.hit_after, "the object stayed stored");
}
