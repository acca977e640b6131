//! The contract every `RetainedStore` passes: each backend's tests run these same checks against a real store.
//! Every check takes sites no other run used, so checks against a shared Redis never see each other's values,
//! and clears what it retained, so a run leaves little behind.

use std::sync::Arc;

use super::{RetainCaps, RetainRequest, RetainedError, RetainedStore};
use crate::mailbox::StoreError;

/// Caps that never refuse anything in these checks.
pub const ROOMY: RetainCaps = RetainCaps {
    max_entries: 1_000_000,
    max_bytes: 1 << 30,
};

/// A site name no other run used.
pub fn fresh_site(label: &str) -> String {
    format!("t{}-{label}", rand::random::<u64>())
}

/// A value to retain at `at`, replacing whatever is kept.
pub fn request<'a>(
    site: &'a str,
    room: &'a str,
    event: &'a str,
    args: &'a str,
    at: u64,
) -> RetainRequest<'a> {
    RetainRequest {
        site,
        room,
        event,
        args,
        at,
        if_changed: false,
    }
}

/// Retains under `caps`, expecting it to be accepted; answers the changed flag.
async fn keep(store: &dyn RetainedStore, request: RetainRequest<'_>, caps: RetainCaps) -> bool {
    store
        .retain(request, caps)
        .await
        .expect("the value is accepted")
}

/// Retains under `caps`, expecting the named cap to refuse it.
async fn refused(
    store: &dyn RetainedStore,
    request: RetainRequest<'_>,
    caps: RetainCaps,
    limit: &str,
) {
    match store.retain(request, caps).await {
        Err(RetainedError::Full { site, limit: got }) => {
            assert_eq!((site.as_str(), got.as_str()), (request.site, limit));
        }
        other => panic!("expected {limit} to refuse {request:?}, got {other:?}"),
    }
}

/// `(room, event, args, at)` of each value kept in `rooms`, in the order `rooms` answers.
pub async fn listed(
    store: &dyn RetainedStore,
    site: &str,
    rooms: &[&str],
) -> Vec<(String, String, String, u64)> {
    let rooms: Vec<String> = rooms.iter().map(|r| r.to_string()).collect();
    store
        .rooms(site, &rooms)
        .await
        .expect("rooms")
        .into_iter()
        .map(|r| (r.room, r.event, r.args, r.at))
        .collect()
}

/// `(room, event, args, at)` as `listed` gives it.
fn row(room: &str, event: &str, args: &str, at: u64) -> (String, String, String, u64) {
    (room.into(), event.into(), args.into(), at)
}

async fn clear(store: &dyn RetainedStore, site: &str, room: &str) -> usize {
    store.clear(site, room).await.expect("clear")
}

/// Runs every check.
pub async fn run_all(store: Arc<dyn RetainedStore>) {
    let store = store.as_ref();
    values_read_back_room_by_room_in_event_order(store).await;
    a_retain_replaces_the_kept_value(store).await;
    if_changed_leaves_equal_values_alone(store).await;
    without_if_changed_equal_values_are_rewritten_but_unchanged(store).await;
    clear_answers_the_count_and_forgets(store).await;
    new_values_past_the_count_cap_are_refused(store).await;
    new_values_past_the_byte_cap_are_refused(store).await;
    replacing_within_the_byte_cap_is_allowed(store).await;
    a_site_above_a_lowered_cap_can_still_shrink_its_values(store).await;
    sites_are_independent(store).await;
    names_a_store_cannot_hold_are_refused(store).await;
}

async fn values_read_back_room_by_room_in_event_order(store: &dyn RetainedStore) {
    let site = fresh_site("order");
    for (room, event, args) in [
        ("b", "zeta", "[1]"),
        ("a", "x", "[2]"),
        ("b", "alpha", "[3]"),
        ("b", "Mid", "[{\"k\":\"v\"}]"),
        ("bb", "alpha", "[4]"),
    ] {
        assert!(keep(store, request(&site, room, event, args, 10), ROOMY).await);
    }
    // Rooms in the order asked (a room with nothing adds nothing), events by byte order within each; "bb",
    // which "b" prefixes, shares none of its values.
    assert_eq!(
        listed(store, &site, &["b", "none", "a"]).await,
        vec![
            row("b", "Mid", "[{\"k\":\"v\"}]", 10),
            row("b", "alpha", "[3]", 10),
            row("b", "zeta", "[1]", 10),
            row("a", "x", "[2]", 10),
        ]
    );
    assert!(listed(store, &site, &[]).await.is_empty());
    assert_eq!(clear(store, &site, "b").await, 3);
    assert_eq!(clear(store, &site, "bb").await, 1);
    assert_eq!(clear(store, &site, "a").await, 1);
}

async fn a_retain_replaces_the_kept_value(store: &dyn RetainedStore) {
    let site = fresh_site("replace");
    assert!(keep(store, request(&site, "r", "ev", "[1]", 1), ROOMY).await);
    assert!(keep(store, request(&site, "r", "ev", "[2,\"two\"]", 2), ROOMY).await);
    assert_eq!(
        listed(store, &site, &["r"]).await,
        vec![row("r", "ev", "[2,\"two\"]", 2)]
    );
    assert_eq!(clear(store, &site, "r").await, 1);
}

async fn if_changed_leaves_equal_values_alone(store: &dyn RetainedStore) {
    let site = fresh_site("ifchanged");
    let first = RetainRequest {
        if_changed: true,
        ..request(&site, "r", "ev", "[1]", 1)
    };
    assert!(keep(store, first, ROOMY).await, "nothing was kept before");
    let equal = RetainRequest { at: 2, ..first };
    assert!(!keep(store, equal, ROOMY).await);
    assert_eq!(
        listed(store, &site, &["r"]).await,
        vec![row("r", "ev", "[1]", 1)],
        "neither the value nor its time was written"
    );
    let unequal = RetainRequest {
        args: "[2]",
        at: 3,
        ..first
    };
    assert!(keep(store, unequal, ROOMY).await);
    assert_eq!(
        listed(store, &site, &["r"]).await,
        vec![row("r", "ev", "[2]", 3)]
    );
    assert_eq!(clear(store, &site, "r").await, 1);
}

async fn without_if_changed_equal_values_are_rewritten_but_unchanged(store: &dyn RetainedStore) {
    let site = fresh_site("rewrite");
    assert!(keep(store, request(&site, "r", "ev", "[1]", 1), ROOMY).await);
    assert!(!keep(store, request(&site, "r", "ev", "[1]", 2), ROOMY).await);
    assert_eq!(
        listed(store, &site, &["r"]).await,
        vec![row("r", "ev", "[1]", 2)],
        "the time is the new one"
    );
    assert!(keep(store, request(&site, "r", "ev", "[1.0]", 3), ROOMY).await);
    assert_eq!(clear(store, &site, "r").await, 1);
}

async fn clear_answers_the_count_and_forgets(store: &dyn RetainedStore) {
    let site = fresh_site("clear");
    assert_eq!(clear(store, &site, "r").await, 0, "nothing kept yet");
    for event in ["a", "b", "c"] {
        keep(store, request(&site, "r", event, "[]", 1), ROOMY).await;
    }
    keep(store, request(&site, "other", "a", "[]", 1), ROOMY).await;
    assert_eq!(clear(store, &site, "r").await, 3);
    assert!(listed(store, &site, &["r"]).await.is_empty());
    assert_eq!(clear(store, &site, "r").await, 0, "already forgotten");
    assert_eq!(
        listed(store, &site, &["other"]).await,
        vec![row("other", "a", "[]", 1)],
        "other rooms keep theirs"
    );
    assert_eq!(clear(store, &site, "other").await, 1);
}

async fn new_values_past_the_count_cap_are_refused(store: &dyn RetainedStore) {
    let site = fresh_site("count");
    let caps = RetainCaps {
        max_entries: 2,
        max_bytes: ROOMY.max_bytes,
    };
    keep(store, request(&site, "r1", "ev", "[1]", 1), caps).await;
    keep(store, request(&site, "r2", "ev", "[1]", 1), caps).await;
    // The cap is the site's, across rooms.
    let third = request(&site, "r3", "ev", "[1]", 1);
    refused(store, third, caps, "max_retained 2").await;
    assert!(listed(store, &site, &["r3"]).await.is_empty());
    // Replacing a kept value adds no pair.
    assert!(keep(store, request(&site, "r1", "ev", "[2]", 2), caps).await);
    // Clearing frees its pairs: the full site accepts again.
    assert_eq!(clear(store, &site, "r1").await, 1);
    keep(store, third, caps).await;
    refused(
        store,
        request(&site, "r1", "ev", "[1]", 3),
        caps,
        "max_retained 2",
    )
    .await;
    assert_eq!(clear(store, &site, "r2").await, 1);
    assert_eq!(clear(store, &site, "r3").await, 1);
}

async fn new_values_past_the_byte_cap_are_refused(store: &dyn RetainedStore) {
    let site = fresh_site("bytes");
    // Each value takes room (1) + event (2) + args (3) = 6 bytes.
    let caps = RetainCaps {
        max_entries: 100,
        max_bytes: 12,
    };
    keep(store, request(&site, "r", "e1", "[1]", 1), caps).await;
    keep(store, request(&site, "r", "e2", "[2]", 1), caps).await;
    refused(
        store,
        request(&site, "r", "e3", "[3]", 1),
        caps,
        "max_retained_bytes 12",
    )
    .await;
    // A replacement that would take the site past the cap is refused too; one of equal size is not.
    refused(
        store,
        request(&site, "r", "e1", "[10]", 2),
        caps,
        "max_retained_bytes 12",
    )
    .await;
    assert!(keep(store, request(&site, "r", "e1", "[9]", 2), caps).await);
    assert_eq!(
        listed(store, &site, &["r"]).await,
        vec![row("r", "e1", "[9]", 2), row("r", "e2", "[2]", 1)]
    );
    // Clearing frees the bytes.
    assert_eq!(clear(store, &site, "r").await, 2);
    keep(store, request(&site, "r", "e3", "[3]", 3), caps).await;
    keep(store, request(&site, "r", "e4", "[4]", 3), caps).await;
    assert_eq!(clear(store, &site, "r").await, 2);
}

async fn replacing_within_the_byte_cap_is_allowed(store: &dyn RetainedStore) {
    let site = fresh_site("within");
    let caps = RetainCaps {
        max_entries: 100,
        max_bytes: 20,
    };
    keep(store, request(&site, "r", "e1", "[1]", 1), caps).await;
    // 6 bytes become 12: the site's total stays within 20.
    assert!(keep(store, request(&site, "r", "e1", "[1234567]", 2), caps).await);
    keep(store, request(&site, "r", "e2", "[1]", 3), caps).await;
    // 12 + 6 = 18; growing e2 by one byte makes 19, by three 21.
    assert!(keep(store, request(&site, "r", "e2", "[12]", 4), caps).await);
    refused(
        store,
        request(&site, "r", "e2", "[1234]", 5),
        caps,
        "max_retained_bytes 20",
    )
    .await;
    // Shrinking frees bytes a new value may then take.
    assert!(keep(store, request(&site, "r", "e1", "[1]", 6), caps).await);
    keep(store, request(&site, "r", "e3", "[1]", 7), caps).await;
    assert_eq!(clear(store, &site, "r").await, 3);
}

async fn a_site_above_a_lowered_cap_can_still_shrink_its_values(store: &dyn RetainedStore) {
    let site = fresh_site("lowered");
    keep(store, request(&site, "r", "ev", "[12345]", 1), ROOMY).await;
    let lowered = RetainCaps {
        max_entries: 100,
        max_bytes: 4,
    };
    assert!(keep(store, request(&site, "r", "ev", "[1]", 2), lowered).await);
    assert!(!keep(store, request(&site, "r", "ev", "[1]", 3), lowered).await);
    refused(
        store,
        request(&site, "r", "ev", "[12]", 4),
        lowered,
        "max_retained_bytes 4",
    )
    .await;
    assert_eq!(clear(store, &site, "r").await, 1);
}

async fn sites_are_independent(store: &dyn RetainedStore) {
    let a = fresh_site("a");
    let b = fresh_site("b");
    let one = RetainCaps {
        max_entries: 1,
        max_bytes: ROOMY.max_bytes,
    };
    keep(store, request(&a, "r", "ev", "[\"a\"]", 1), one).await;
    // `a` is full; `b` has its own count.
    keep(store, request(&b, "r", "ev", "[\"b\"]", 2), one).await;
    refused(
        store,
        request(&a, "s", "ev", "[]", 3),
        one,
        "max_retained 1",
    )
    .await;
    assert_eq!(
        listed(store, &a, &["r"]).await,
        vec![row("r", "ev", "[\"a\"]", 1)]
    );
    assert_eq!(
        listed(store, &b, &["r"]).await,
        vec![row("r", "ev", "[\"b\"]", 2)]
    );
    assert_eq!(clear(store, &a, "r").await, 1);
    assert_eq!(
        listed(store, &b, &["r"]).await.len(),
        1,
        "clearing one site's room leaves the other's"
    );
    assert_eq!(clear(store, &b, "r").await, 1);
}

async fn names_a_store_cannot_hold_are_refused(store: &dyn RetainedStore) {
    let site = fresh_site("names");
    let bad_room = "a\u{1f}b";
    let answer = store
        .retain(request(&site, bad_room, "ev", "[]", 1), ROOMY)
        .await;
    assert!(
        matches!(answer, Err(RetainedError::Store(StoreError::BadName(_)))),
        "{answer:?}"
    );
    let long_site = "s".repeat(300);
    let answer = store
        .retain(request(&long_site, "r", "ev", "[]", 1), ROOMY)
        .await;
    assert!(
        matches!(answer, Err(RetainedError::Store(StoreError::BadName(_)))),
        "{answer:?}"
    );
    // Reads and clears answer that such names hold nothing, rather than fail the names beside them.
    keep(store, request(&site, "r", "ev", "[]", 1), ROOMY).await;
    assert_eq!(listed(store, &site, &[bad_room, "r"]).await.len(), 1);
    assert_eq!(clear(store, &site, bad_room).await, 0);
    assert_eq!(clear(store, &site, "r").await, 1);
}
