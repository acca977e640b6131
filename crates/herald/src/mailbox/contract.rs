//! The contract every `MailboxStore` passes: each backend's tests run these same checks against a real store.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use super::store::{AckOutcome, Caps, DeviceKey, MailboxStore, NewEntry};

/// Caps that never drop anything in these checks.
pub const ROOMY: Caps = Caps {
    max_entries: 1_000_000,
    max_bytes: 1 << 30,
};

/// A site name no other run used, so checks against a shared Redis never see each other's data.
pub fn fresh_site(label: &str) -> String {
    format!("t{}-{label}", rand::random::<u64>())
}

fn entry<'a>(event: &'a str, payload: &'a str) -> NewEntry<'a> {
    NewEntry {
        event,
        payload: payload.as_bytes(),
        resync: false,
    }
}

fn users(names: &[&str]) -> Vec<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn offsets(store: &dyn MailboxStore, key: &DeviceKey) -> Vec<u64> {
    let page = store.read(key, 0, 10_000, usize::MAX).await.unwrap();
    page.entries.iter().map(|e| e.offset).collect()
}

/// Runs every check; `store` must be empty of the sites `fresh_site` makes (any store is).
pub async fn run_all(store: Arc<dyn MailboxStore>) {
    let store = store.as_ref();
    appends_read_back_in_order(store).await;
    unknown_users_get_nothing(store).await;
    acks_are_cumulative(store).await;
    skipped_head_asks_for_resync(store).await;
    caps_drop_the_oldest_and_mark_overflow(store).await;
    every_device_gets_its_own_copy(store).await;
    disconnected_devices_keep_receiving_until_they_expire(store).await;
    shared_rooms_are_case_insensitive_and_follow_reconnects(store).await;
    devices_report_pending_counts(store).await;
    offsets_only_grow(store).await;
    reads_are_bounded(store).await;
    concurrent_appends_all_land(store).await;
}

async fn appends_read_back_in_order(store: &dyn MailboxStore) {
    let site = fresh_site("order");
    let key = DeviceKey::new(&site, "user_1", "phone");
    store.connect(&key, &[]).await.unwrap();
    for i in 0..3 {
        let payload = format!(r#"["ev",{i}]"#);
        let queued = store
            .append(&site, &users(&["user_1"]), entry("ev", &payload), ROOMY)
            .await
            .unwrap();
        assert_eq!(queued.len(), 1);
        assert_eq!((queued[0].user, queued[0].device.as_str()), (0, "phone"));
    }
    let page = store.read(&key, 0, 100, usize::MAX).await.unwrap();
    let payloads: Vec<&[u8]> = page.entries.iter().map(|e| &e.payload[..]).collect();
    assert_eq!(
        payloads,
        vec![&br#"["ev",0]"#[..], br#"["ev",1]"#, br#"["ev",2]"#]
    );
    assert!(page.entries.windows(2).all(|w| w[0].offset < w[1].offset));
    assert!(!page.overflowed);
    let after_first = store
        .read(&key, page.entries[0].offset, 100, usize::MAX)
        .await
        .unwrap();
    assert_eq!(after_first.entries, page.entries[1..].to_vec());
}

async fn unknown_users_get_nothing(store: &dyn MailboxStore) {
    let site = fresh_site("unknown");
    let queued = store
        .append(
            &site,
            &users(&["user_nobody"]),
            entry("ev", "[\"ev\"]"),
            ROOMY,
        )
        .await
        .unwrap();
    assert!(queued.is_empty());
    assert!(store
        .devices(&site, "user_nobody")
        .await
        .unwrap()
        .is_empty());
}

async fn acks_are_cumulative(store: &dyn MailboxStore) {
    let site = fresh_site("ack");
    let key = DeviceKey::new(&site, "user_1", "");
    store.connect(&key, &[]).await.unwrap();
    let mut all = Vec::new();
    for _ in 0..3 {
        let q = store
            .append(&site, &users(&["user_1"]), entry("ev", "[\"ev\"]"), ROOMY)
            .await
            .unwrap();
        all.push(q[0].offset);
    }
    assert_eq!(
        store.ack(&key, all[1], None).await.unwrap(),
        AckOutcome::Acked
    );
    assert_eq!(offsets(store, &key).await, vec![all[2]]);
    // A stale ack changes nothing.
    assert_eq!(
        store.ack(&key, all[0], None).await.unwrap(),
        AckOutcome::Acked
    );
    assert_eq!(offsets(store, &key).await, vec![all[2]]);
}

async fn skipped_head_asks_for_resync(store: &dyn MailboxStore) {
    let site = fresh_site("resync");
    let key = DeviceKey::new(&site, "user_1", "d");
    store.connect(&key, &[]).await.unwrap();
    let append = |event: &'static str| {
        let site = site.clone();
        async move {
            let e = NewEntry {
                event,
                payload: b"[\"x\"]",
                resync: true,
            };
            store
                .append(&site, &users(&["user_1"]), e, ROOMY)
                .await
                .unwrap()[0]
                .offset
        }
    };
    let a1 = append("a").await;
    let a2 = append("a").await;
    let b1 = append("b").await;
    let a3 = append("a").await;
    // The head of `a` is acked in order: no resync.
    assert_eq!(
        store.ack(&key, a1, Some("a")).await.unwrap(),
        AckOutcome::Acked
    );
    assert_eq!(offsets(store, &key).await, vec![a2, b1, a3]);
    // Acking a3 while a2 is pending: `a` is cleared, and everything through a3 is acked.
    assert_eq!(
        store.ack(&key, a3, Some("a")).await.unwrap(),
        AckOutcome::Resync
    );
    assert!(offsets(store, &key).await.is_empty());
    let a4 = append("a").await;
    let b2 = append("b").await;
    let a5 = append("a").await;
    assert_eq!(
        store.ack(&key, a5, Some("a")).await.unwrap(),
        AckOutcome::Resync
    );
    let _ = (a4, b2);
    let a6 = append("a").await;
    let b3 = append("b").await;
    // A skipped entry of another event asks for no resync of this one; it is acked cumulatively.
    assert_eq!(
        store.ack(&key, b3, Some("b")).await.unwrap(),
        AckOutcome::Acked
    );
    let _ = a6;
    assert!(offsets(store, &key).await.is_empty());
}

async fn caps_drop_the_oldest_and_mark_overflow(store: &dyn MailboxStore) {
    let site = fresh_site("caps");
    let key = DeviceKey::new(&site, "user_1", "d");
    store.connect(&key, &[]).await.unwrap();
    let by_count = Caps {
        max_entries: 3,
        max_bytes: 1 << 20,
    };
    let mut last = Vec::new();
    for i in 0..5 {
        let payload = format!("[\"ev\",{i}]");
        let q = store
            .append(&site, &users(&["user_1"]), entry("ev", &payload), by_count)
            .await
            .unwrap();
        last.push(q[0].offset);
    }
    let page = store.read(&key, 0, 100, usize::MAX).await.unwrap();
    assert!(page.overflowed);
    assert_eq!(
        page.entries.iter().map(|e| e.offset).collect::<Vec<_>>(),
        last[2..].to_vec()
    );
    store.reset(&key).await.unwrap();
    let page = store.read(&key, 0, 100, usize::MAX).await.unwrap();
    assert!(!page.overflowed && page.entries.is_empty());

    let by_bytes = Caps {
        max_entries: 100,
        max_bytes: 25,
    };
    for _ in 0..4 {
        store
            .append(
                &site,
                &users(&["user_1"]),
                entry("ev", "[\"0123456789\"]"),
                by_bytes,
            )
            .await
            .unwrap();
    }
    let page = store.read(&key, 0, 100, usize::MAX).await.unwrap();
    assert!(page.overflowed);
    assert_eq!(page.entries.len(), 1, "14-byte entries, 25 bytes allowed");
}

async fn every_device_gets_its_own_copy(store: &dyn MailboxStore) {
    let site = fresh_site("devices");
    let phone = DeviceKey::new(&site, "user_1", "phone");
    let laptop = DeviceKey::new(&site, "user_1", "laptop");
    let other = DeviceKey::new(&site, "user_2", "phone");
    for key in [&phone, &laptop, &other] {
        store.connect(key, &[]).await.unwrap();
    }
    let queued = store
        .append(
            &site,
            &users(&["user_1", "user_2"]),
            entry("ev", "[\"ev\"]"),
            ROOMY,
        )
        .await
        .unwrap();
    let got: BTreeSet<(usize, String)> =
        queued.iter().map(|q| (q.user, q.device.clone())).collect();
    let want: BTreeSet<(usize, String)> = [(0, "laptop"), (0, "phone"), (1, "phone")]
        .into_iter()
        .map(|(u, d)| (u, d.to_string()))
        .collect();
    assert_eq!(got, want);
    let phone_offset = queued
        .iter()
        .find(|q| q.user == 0 && q.device == "phone")
        .unwrap()
        .offset;
    store.ack(&phone, phone_offset, None).await.unwrap();
    assert!(offsets(store, &phone).await.is_empty());
    assert_eq!(offsets(store, &laptop).await.len(), 1);
    assert_eq!(offsets(store, &other).await.len(), 1);
}

async fn disconnected_devices_keep_receiving_until_they_expire(store: &dyn MailboxStore) {
    let site = fresh_site("ttl");
    let keep = DeviceKey::new(&site, "user_1", "keep");
    let lapse = DeviceKey::new(&site, "user_1", "lapse");
    store.connect(&keep, &[]).await.unwrap();
    store.connect(&lapse, &[]).await.unwrap();
    store
        .disconnect(&keep, Duration::from_secs(60))
        .await
        .unwrap();
    store
        .disconnect(&lapse, Duration::from_millis(300))
        .await
        .unwrap();
    let queued = store
        .append(&site, &users(&["user_1"]), entry("ev", "[1]"), ROOMY)
        .await
        .unwrap();
    assert_eq!(queued.len(), 2, "both are within their TTL");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let queued = store
        .append(&site, &users(&["user_1"]), entry("ev", "[2]"), ROOMY)
        .await
        .unwrap();
    let devices: Vec<&str> = queued.iter().map(|q| q.device.as_str()).collect();
    assert_eq!(devices, vec!["keep"]);
    store.sweep().await.unwrap();
    let listed: Vec<String> = store
        .devices(&site, "user_1")
        .await
        .unwrap()
        .into_iter()
        .map(|d| d.device)
        .collect();
    assert_eq!(listed, vec!["keep".to_string()]);
    assert!(
        offsets(store, &lapse).await.is_empty(),
        "expired mailbox is gone"
    );
    // Reconnecting within the TTL finds everything, and the mailbox no longer expires.
    store.connect(&keep, &[]).await.unwrap();
    assert_eq!(offsets(store, &keep).await.len(), 2);
    let status = store.devices(&site, "user_1").await.unwrap();
    assert!(status[0].connected && status[0].expires_at_ms.is_none());
}

async fn shared_rooms_are_case_insensitive_and_follow_reconnects(store: &dyn MailboxStore) {
    let site = fresh_site("rooms");
    let a = DeviceKey::new(&site, "user_a", "d");
    let b = DeviceKey::new(&site, "user_b", "d");
    store.connect(&a, &users(&["Team"])).await.unwrap();
    store.connect(&b, &users(&["team", "x"])).await.unwrap();
    let mut found = store.users_in_room(&site, "TEAM").await.unwrap();
    found.sort();
    assert_eq!(found, users(&["user_a", "user_b"]));
    store.connect(&a, &[]).await.unwrap();
    assert_eq!(
        store.users_in_room(&site, "team").await.unwrap(),
        users(&["user_b"])
    );
    assert!(store.users_in_room(&site, "nope").await.unwrap().is_empty());
}

async fn devices_report_pending_counts(store: &dyn MailboxStore) {
    let site = fresh_site("pending");
    let key = DeviceKey::new(&site, "user_1", "d");
    store.connect(&key, &[]).await.unwrap();
    for _ in 0..2 {
        store
            .append(&site, &users(&["user_1"]), entry("ev", "[\"abc\"]"), ROOMY)
            .await
            .unwrap();
    }
    let status = store.devices(&site, "user_1").await.unwrap();
    assert_eq!(status.len(), 1);
    assert_eq!(
        (
            status[0].device.as_str(),
            status[0].pending,
            status[0].bytes
        ),
        ("d", 2, 14)
    );
    assert!(status[0].connected && !status[0].overflowed);
    store
        .disconnect(&key, Duration::from_secs(30))
        .await
        .unwrap();
    let status = store.devices(&site, "user_1").await.unwrap();
    assert!(!status[0].connected && status[0].expires_at_ms.is_some());
}

async fn offsets_only_grow(store: &dyn MailboxStore) {
    let site = fresh_site("grow");
    let key = DeviceKey::new(&site, "user_1", "d");
    store.connect(&key, &[]).await.unwrap();
    let first = store
        .append(&site, &users(&["user_1"]), entry("ev", "[1]"), ROOMY)
        .await
        .unwrap()[0]
        .offset;
    store.ack(&key, first, None).await.unwrap();
    store.reset(&key).await.unwrap();
    let second = store
        .append(&site, &users(&["user_1"]), entry("ev", "[2]"), ROOMY)
        .await
        .unwrap()[0]
        .offset;
    assert!(second > first);
}

async fn reads_are_bounded(store: &dyn MailboxStore) {
    let site = fresh_site("bounded");
    let key = DeviceKey::new(&site, "user_1", "d");
    store.connect(&key, &[]).await.unwrap();
    for _ in 0..10 {
        store
            .append(
                &site,
                &users(&["user_1"]),
                entry("ev", "[\"0123456789\"]"),
                ROOMY,
            )
            .await
            .unwrap();
    }
    assert_eq!(
        store
            .read(&key, 0, 4, usize::MAX)
            .await
            .unwrap()
            .entries
            .len(),
        4
    );
    assert_eq!(store.read(&key, 0, 100, 30).await.unwrap().entries.len(), 2);
    assert_eq!(store.read(&key, 0, 100, 1).await.unwrap().entries.len(), 1);
}

async fn concurrent_appends_all_land(store: &dyn MailboxStore) {
    let site = fresh_site("concurrent");
    let key = DeviceKey::new(&site, "user_1", "d");
    store.connect(&key, &[]).await.unwrap();
    let appends = (0..200).map(|i| {
        let site = site.clone();
        async move {
            let payload = format!("[{i}]");
            store
                .append(&site, &users(&["user_1"]), entry("ev", &payload), ROOMY)
                .await
                .unwrap()[0]
                .offset
        }
    });
    let offsets_given: BTreeSet<u64> = futures_util::future::join_all(appends)
        .await
        .into_iter()
        .collect();
    assert_eq!(offsets_given.len(), 200, "every append got its own offset");
    let stored: BTreeSet<u64> = offsets(store, &key).await.into_iter().collect();
    assert_eq!(stored, offsets_given);
}
