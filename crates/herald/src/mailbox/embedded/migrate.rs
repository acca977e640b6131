//! Moving a mailbox file written by redb 2 (herald before issue 14) to redb 4.
//!
//! redb 4 opens only its own file format (v3), and refuses the v2 format redb 2 writes with
//! `UpgradeRequired(2)`. redb's own path is three steps: `Database::upgrade()` in redb 2.6 (file format v3),
//! then redb 3.x to copy every variable-width tuple table through its `Legacy` wrapper (the tuple encoding
//! changed in 3.0; redb 4 refuses the old tables with a type mismatch), then redb 4. Two of herald's four
//! tables have `(&str, …)` keys, so herald does the equivalent in one step instead: it reads every table with
//! redb 2.6 (linked under the name `redb2` for this alone) and writes the rows into a new redb 4 file, which
//! then replaces the old one. The old file is kept beside it as `<name>.redb2-backup`, as redb 2 left it after
//! reading it (repaired first, like any open, if herald had stopped without closing it).
//!
//! The steps, each safe to interrupt:
//! 1. copy into `<name>.redb4-migration` (an unfinished copy left by a crash is discarded and redone);
//! 2. hard-link the old file to `<name>.redb2-backup` (or copy it, where links are not possible);
//! 3. rename the copy over `<name>`, atomically, and sync the directory.
//!
//! Until step 3 the file at `<name>` is still the redb 2 file, so a crash anywhere before it means the next
//! start migrates again from the beginning.
//!
//! A file that someone already ran redb 2.6's `Database::upgrade()` on is format v3 with the old tuple
//! encoding: redb 4 opens it but refuses the `entries` table (a type mismatch), and herald stops with that
//! error rather than misread it. Herald itself never upgrades the file in place.

use std::path::{Path, PathBuf};
use std::time::Instant;

use redb2::ReadableTable as _;

use super::{StoreError, DEVICES, ENTRIES, ROOM_USERS, USER_ROOMS};

/// An error of either redb version, as it reads: the migration runs once, before herald serves anyone.
fn embedded(e: impl std::fmt::Display) -> StoreError {
    StoreError::Embedded(e.to_string())
}

const OLD_ENTRIES: redb2::TableDefinition<(&str, u64), &[u8]> =
    redb2::TableDefinition::new("entries");
const OLD_DEVICES: redb2::TableDefinition<&str, &[u8]> = redb2::TableDefinition::new("devices");
const OLD_USER_ROOMS: redb2::TableDefinition<&str, &str> =
    redb2::TableDefinition::new("user_rooms");
const OLD_ROOM_USERS: redb2::TableDefinition<(&str, &str), ()> =
    redb2::TableDefinition::new("room_users");

/// Rows copied per table, for the log and the tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Migrated {
    pub(crate) entries: u64,
    pub(crate) devices: u64,
    pub(crate) user_rooms: u64,
    pub(crate) room_users: u64,
}

/// `<path>` with `suffix` appended to its file name.
fn beside(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Where the redb 2 file is kept after a migration.
pub(crate) fn backup_path(path: &Path) -> PathBuf {
    beside(path, ".redb2-backup")
}

fn io(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    StoreError::Embedded(format!("{what} {}: {e}", path.display()))
}

/// Replaces the redb 2 file at `path` with a redb 4 file holding the same rows; keeps the old file as
/// [`backup_path`].
pub(crate) fn from_redb2(path: &Path) -> Result<Migrated, StoreError> {
    let started = Instant::now();
    let copy = beside(path, ".redb4-migration");
    let backup = backup_path(path);
    match std::fs::remove_file(&copy) {
        Ok(()) => {
            tracing::warn!(path = %copy.display(), "discarding an unfinished mailbox migration")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove", &copy, e)),
    }
    let migrated = copy_tables(path, &copy)?;

    match std::fs::remove_file(&backup) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io("cannot remove the old backup", &backup, e)),
    }
    if std::fs::hard_link(path, &backup).is_err() {
        std::fs::copy(path, &backup)
            .map_err(|e| io("cannot back up the mailbox to", &backup, e))?;
    }
    std::fs::rename(&copy, path).map_err(|e| io("cannot move the migrated mailbox to", path, e))?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        // The rename is durable once the directory is; a failure here leaves it to the OS, not undone.
        if let Err(e) = std::fs::File::open(dir).and_then(|d| d.sync_all()) {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot sync the mailbox directory");
        }
    }
    tracing::warn!(
        path = %path.display(),
        backup = %backup.display(),
        entries = migrated.entries,
        devices = migrated.devices,
        took_ms = started.elapsed().as_millis() as u64,
        "migrated the mailbox file from redb 2 to redb 4; the old file is kept as the backup, delete it once \
         herald runs well"
    );
    Ok(migrated)
}

/// Reads every table of the redb 2 file at `from` and writes them, in one transaction, to a new redb 4 file at
/// `to`. A table missing from the old file stays empty.
fn copy_tables(from: &Path, to: &Path) -> Result<Migrated, StoreError> {
    let old = redb2::Database::open(from).map_err(|e| {
        StoreError::Embedded(format!(
            "cannot open {} with redb 2 to migrate it: {e}",
            from.display()
        ))
    })?;
    let read = old.begin_read().map_err(embedded)?;
    let new = redb::Database::create(to)
        .map_err(|e| StoreError::Embedded(format!("cannot create {}: {e}", to.display())))?;
    let write = new.begin_write().map_err(embedded)?;
    let mut migrated = Migrated::default();
    {
        let mut entries = write.open_table(ENTRIES).map_err(embedded)?;
        if let Some(old) = open_old(&read, OLD_ENTRIES)? {
            for row in old.iter().map_err(embedded)? {
                let (key, value) = row.map_err(embedded)?;
                entries
                    .insert(key.value(), value.value())
                    .map_err(embedded)?;
                migrated.entries += 1;
            }
        }
        let mut devices = write.open_table(DEVICES).map_err(embedded)?;
        if let Some(old) = open_old(&read, OLD_DEVICES)? {
            for row in old.iter().map_err(embedded)? {
                let (key, value) = row.map_err(embedded)?;
                devices
                    .insert(key.value(), value.value())
                    .map_err(embedded)?;
                migrated.devices += 1;
            }
        }
        let mut user_rooms = write.open_table(USER_ROOMS).map_err(embedded)?;
        if let Some(old) = open_old(&read, OLD_USER_ROOMS)? {
            for row in old.iter().map_err(embedded)? {
                let (key, value) = row.map_err(embedded)?;
                user_rooms
                    .insert(key.value(), value.value())
                    .map_err(embedded)?;
                migrated.user_rooms += 1;
            }
        }
        let mut room_users = write.open_table(ROOM_USERS).map_err(embedded)?;
        if let Some(old) = open_old(&read, OLD_ROOM_USERS)? {
            for row in old.iter().map_err(embedded)? {
                let (key, _) = row.map_err(embedded)?;
                room_users.insert(key.value(), ()).map_err(embedded)?;
                migrated.room_users += 1;
            }
        }
    }
    write.commit().map_err(embedded)?;
    Ok(migrated)
}

fn open_old<K: redb2::Key + 'static, V: redb2::Value + 'static>(
    read: &redb2::ReadTransaction,
    table: redb2::TableDefinition<K, V>,
) -> Result<Option<redb2::ReadOnlyTable<K, V>>, StoreError> {
    match read.open_table(table) {
        Ok(table) => Ok(Some(table)),
        Err(redb2::TableError::TableDoesNotExist(_)) => Ok(None),
        Err(e) => Err(embedded(e)),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::super::{encode_entry, EmbeddedStore, Meta};
    use super::*;
    use crate::mailbox::store::{DeviceKey, MailboxStore, NewEntry};

    const SEP: char = '\u{1f}';

    /// A mailbox file as herald wrote it with redb 2.6: the same tables and records, through redb 2's own
    /// `Database::create`, which writes file format v2.
    fn write_redb2_file(path: &Path) {
        let db = redb2::Database::create(path).expect("redb 2 creates");
        let txn = db.begin_write().expect("write");
        {
            let phone = format!("app{SEP}user_alice{SEP}phone");
            let laptop = format!("app{SEP}user_alice{SEP}laptop");
            let mut entries = txn.open_table(OLD_ENTRIES).expect("entries");
            for offset in 3..=5u64 {
                let payload = format!("[\"n\",{offset}]");
                let entry = NewEntry {
                    event: "n",
                    payload: payload.as_bytes(),
                    resync: offset == 4,
                };
                entries
                    .insert((phone.as_str(), offset), encode_entry(&entry).as_slice())
                    .expect("entry");
            }
            let mut devices = txn.open_table(OLD_DEVICES).expect("devices");
            let phone_meta = Meta {
                last_offset: 5,
                count: 3,
                bytes: 21,
                expires_at: 0,
                overflowed: true,
            };
            devices
                .insert(phone.as_str(), &phone_meta.encode()[..])
                .expect("phone");
            let laptop_meta = Meta {
                last_offset: 9,
                expires_at: u64::MAX,
                ..Meta::default()
            };
            devices
                .insert(laptop.as_str(), &laptop_meta.encode()[..])
                .expect("laptop");
            let user = format!("app{SEP}user_alice{SEP}");
            let rooms = format!("lobby{SEP}news");
            txn.open_table(OLD_USER_ROOMS)
                .expect("user_rooms")
                .insert(user.as_str(), rooms.as_str())
                .expect("rooms");
            let mut room_users = txn.open_table(OLD_ROOM_USERS).expect("room_users");
            for room in ["lobby", "news"] {
                let room = format!("app{SEP}{room}");
                room_users
                    .insert((room.as_str(), "user_alice"), ())
                    .expect("index");
            }
        }
        txn.commit().expect("commit");
    }

    #[tokio::test]
    async fn a_redb2_file_is_migrated_on_open() {
        let dir = std::env::temp_dir().join(format!("herald-mbx-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("mailbox.redb");
        write_redb2_file(&path);
        let before = std::fs::read(&path).expect("read the redb 2 file");
        assert!(
            matches!(
                redb::Database::create(&path),
                Err(redb::DatabaseError::UpgradeRequired(2))
            ),
            "redb 4 refuses the redb 2 file by itself"
        );

        let store = EmbeddedStore::open(&path).expect("opens, migrating");
        let phone = DeviceKey::new("app", "user_alice", "phone");
        let page = store.read(&phone, 0, 10, usize::MAX).await.expect("read");
        let offsets: Vec<u64> = page.entries.iter().map(|e| e.offset).collect();
        assert_eq!(offsets, [3, 4, 5]);
        assert_eq!(&page.entries[1].payload[..], b"[\"n\",4]");
        assert_eq!(page.entries[1].event, "n");
        assert!(page.entries[1].resync && !page.entries[0].resync);
        assert!(page.overflowed);
        let devices = store.devices("app", "user_alice").await.expect("devices");
        assert_eq!(devices.len(), 2);
        assert_eq!(
            (devices[1].device.as_str(), devices[1].pending),
            ("phone", 3)
        );
        assert_eq!(
            (devices[0].device.as_str(), devices[0].connected),
            ("laptop", false)
        );
        assert_eq!(
            store.users_in_room("app", "News").await.expect("room"),
            ["user_alice"]
        );
        assert_eq!(super::super::entry_count(&store).expect("count"), 3);
        // Offsets go on from where the old file left them.
        let store: Arc<dyn MailboxStore> = Arc::new(store);
        let queued = store
            .append(
                "app",
                &["user_alice".to_string()],
                NewEntry {
                    event: "n",
                    payload: b"[\"n\",6]",
                    resync: false,
                },
                crate::mailbox::contract::ROOMY,
            )
            .await
            .expect("append");
        assert!(queued.iter().any(|q| q.device == "phone" && q.offset == 6));
        assert!(queued
            .iter()
            .any(|q| q.device == "laptop" && q.offset == 10));

        let backup = std::fs::read(backup_path(&path)).expect("the backup is kept");
        assert_eq!(backup, before, "the backup is the redb 2 file, untouched");
        assert!(!beside(&path, ".redb4-migration").exists());
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_unfinished_migration_is_redone() {
        let dir = std::env::temp_dir().join(format!("herald-mbx-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("mailbox.redb");
        write_redb2_file(&path);
        // A crash after the copy began: a partial copy and a stale backup lie beside the old file.
        std::fs::write(beside(&path, ".redb4-migration"), b"partial").expect("partial copy");
        std::fs::write(backup_path(&path), b"stale").expect("stale backup");
        let migrated = from_redb2(&path).expect("migrates");
        assert_eq!(
            migrated,
            Migrated {
                entries: 3,
                devices: 2,
                user_rooms: 1,
                room_users: 2
            }
        );
        let db = redb::Database::open(&path).expect("a redb 4 file now");
        drop(db);
        assert!(redb2::Database::open(backup_path(&path)).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
