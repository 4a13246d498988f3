//! Which caller opened each MCP session (and created each task), so a session id or
//! task id cannot be used by anyone else (MCP security best practices: session hijacking).
//!
//! The gateway learns `Mcp-Session-Id -> caller` from the reply to `initialize` and
//! refuses a request that presents a session id it did not see opened by the same caller,
//! with 404 as for an unknown session (clients then open a new one). Workers share the
//! table through Envoy shared data, split into [`BUCKETS`] small buckets so a lookup reads
//! a few kilobytes and the whole table stays bounded ([`BUCKETS`] x [`PER_BUCKET`]
//! sessions); entries expire after the configured idle time, and a full bucket forgets its
//! oldest entry.

use serde::{Deserialize, Serialize};

/// Number of shared-data buckets.
pub const BUCKETS: usize = 512;
/// Sessions remembered per bucket.
pub const PER_BUCKET: usize = 32;
/// Longest session id remembered; longer ones are never registered (so refused).
pub const MAX_ID_BYTES: usize = 256;

/// The two tables kept this way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    /// `Mcp-Session-Id` -> [`owner`].
    Sessions,
    /// Task id -> [`TaskRecord`] (JSON).
    Tasks,
}

impl Table {
    fn prefix(self) -> &'static str {
        match self {
            Table::Sessions => "mcp_gateway/sessions/",
            Table::Tasks => "mcp_gateway/tasks/",
        }
    }
}

/// Shared-data key of the bucket that holds `id`.
pub fn bucket_key(table: Table, id: &str) -> String {
    // FNV-1a: the server, not the client, chooses session and task ids.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    bucket_key_of(table, usize::try_from(hash % BUCKETS as u64).unwrap_or(0))
}

/// Shared-data key of bucket number `index`.
pub fn bucket_key_of(table: Table, index: usize) -> String {
    format!("{}{index}", table.prefix())
}

/// Largest task record kept; a call whose record is larger cannot be followed up.
pub const MAX_TASK_RECORD_BYTES: usize = 4096;

/// The tool call that created a task, so `tasks/get`, `tasks/result` and `tasks/cancel`
/// are decided like that call, for the caller who made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub owner: String,
    pub server: String,
    pub tool: String,
    pub arguments: Option<serde_json::Value>,
}

/// The caller a session belongs to: provider and user id.
pub fn owner(provider: &str, user_id: &str) -> String {
    serde_json::to_string(&[provider, user_id]).unwrap_or_default()
}

/// What a response changes in the session table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// `initialize` answered with a new `Mcp-Session-Id`.
    Open { id: String, owner: String },
    /// A task-augmented `tools/call` answered with a task id; `record` is a [`TaskRecord`].
    Task { id: String, record: String },
    /// A session in use, seen more than half its idle time ago.
    Refresh { id: String, owner: String },
    /// `DELETE` of the session succeeded.
    Close { id: String },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Bucket {
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    id: String,
    /// The owner (sessions) or the task record (tasks).
    value: String,
    /// When the entry was last refreshed (ms since the epoch).
    seen_ms: u64,
}

impl Bucket {
    pub fn from_bytes(bytes: &[u8]) -> Bucket {
        serde_json::from_slice(bytes).unwrap_or_default()
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The value of a live entry, and whether the entry should be refreshed (more than
    /// half its idle time has passed).
    pub fn get(&self, id: &str, now_ms: u64, idle_ms: u64) -> Option<(&str, bool)> {
        let e = self.entries.iter().find(|e| e.id == id)?;
        let age = now_ms.saturating_sub(e.seen_ms);
        (age < idle_ms).then_some((e.value.as_str(), age > idle_ms / 2))
    }

    /// Records (or refreshes) an entry. Expired entries go first; when the bucket is
    /// still full, the least recently seen one.
    pub fn insert(&mut self, id: &str, value: &str, now_ms: u64, idle_ms: u64) {
        if id.len() > MAX_ID_BYTES {
            return;
        }
        self.entries.retain(|e| e.id != id && now_ms.saturating_sub(e.seen_ms) < idle_ms);
        if self.entries.len() >= PER_BUCKET {
            if let Some(oldest) = self.entries.iter().enumerate().min_by_key(|(_, e)| e.seen_ms).map(|(i, _)| i) {
                self.entries.remove(oldest);
            }
        }
        self.entries.push(Entry { id: id.to_owned(), value: value.to_owned(), seen_ms: now_ms });
    }

    /// Forgets a session (after `DELETE`).
    pub fn remove(&mut self, id: &str) -> bool {
        let before = self.entries.len();
        self.entries.retain(|e| e.id != id);
        self.entries.len() != before
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IDLE: u64 = 1000;

    #[test]
    fn remembers_owners_until_idle() {
        let mut b = Bucket::default();
        b.insert("s1", "alice", 0, IDLE);
        assert_eq!(b.get("s1", 100, IDLE), Some(("alice", false)));
        assert_eq!(b.get("s1", 600, IDLE), Some(("alice", true)), "refresh after half the idle time");
        assert_eq!(b.get("s1", 1000, IDLE), None, "expired");
        assert_eq!(b.get("s2", 0, IDLE), None);
        b.insert("s1", "alice", 900, IDLE);
        assert_eq!(b.get("s1", 1500, IDLE), Some(("alice", true)));
    }

    #[test]
    fn a_full_bucket_forgets_the_oldest_and_expired_entries_first() {
        let mut b = Bucket::default();
        for i in 0..PER_BUCKET {
            b.insert(&format!("s{i}"), "u", 10 + i as u64, IDLE);
        }
        b.insert("new", "u", 100, IDLE);
        assert_eq!(b.len(), PER_BUCKET);
        assert_eq!(b.get("s0", 100, IDLE), None, "the oldest went");
        assert!(b.get("s1", 100, IDLE).is_some());
        b.insert("later", "u", 5000, IDLE);
        assert_eq!(b.len(), 1, "expired entries are purged on insert");
    }

    #[test]
    fn round_trips_and_ignores_garbage() {
        let mut b = Bucket::default();
        b.insert("s", &owner("p", "alice"), 1, IDLE);
        assert_eq!(Bucket::from_bytes(&b.to_bytes()), b);
        assert_eq!(Bucket::from_bytes(b"not json"), Bucket::default());
        assert!(b.remove("s") && b.is_empty());
        b.insert(&"x".repeat(MAX_ID_BYTES + 1), "u", 1, IDLE);
        assert!(b.is_empty(), "overlong ids are not remembered");
    }

    #[test]
    fn owners_do_not_collide_across_providers() {
        assert_ne!(owner("a", "b\u{1f}c"), owner("a\u{1f}b", "c"));
        assert_ne!(owner("p", "alice"), owner("q", "alice"));
    }

    #[test]
    fn tables_do_not_share_buckets() {
        assert_ne!(bucket_key(Table::Sessions, "x"), bucket_key(Table::Tasks, "x"));
    }

    #[test]
    fn buckets_spread_ids() {
        let keys: std::collections::HashSet<String> =
            (0..2000).map(|i| bucket_key(Table::Sessions, &format!("session-{i}"))).collect();
        assert!(keys.len() > BUCKETS / 2, "{}", keys.len());
    }
}

/// Session ids that carry their owner: the gateway hands the client `<id>.<tag>`, where
/// the tag is an HMAC of the caller and the upstream's id under a key every gateway
/// replica shares, and forwards only `<id>` once the tag checks out for the caller making
/// the request. Any replica can check a session it never saw opened (no shared table);
/// a tag made for someone else, or for another id, does not check out.
#[derive(Clone)]
pub struct Binding {
    key: Vec<u8>,
}

impl std::fmt::Debug for Binding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Binding([REDACTED])")
    }
}

/// Bytes of the tag's HMAC-SHA256 kept (128 bits, 22 base64url characters).
const TAG_BYTES: usize = 16;

impl Binding {
    /// A binding under `key` (at least 32 bytes).
    pub fn new(key: &[u8]) -> Option<Binding> {
        (key.len() >= 32).then(|| Binding { key: key.to_vec() })
    }

    fn tag(&self, owner: &str, id: &str) -> String {
        use base64::Engine as _;
        use hmac::Mac as _;
        // `new_from_slice` takes keys of any length.
        let Ok(mut mac) = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key) else { return String::new() };
        mac.update(owner.as_bytes());
        mac.update(&[0]);
        mac.update(id.as_bytes());
        let full = mac.finalize().into_bytes();
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(full.get(..TAG_BYTES).unwrap_or_default())
    }

    /// The session id the client gets for the upstream's `id`, opened by `owner`.
    pub fn bind(&self, owner: &str, id: &str) -> String {
        format!("{id}.{}", self.tag(owner, id))
    }

    /// The upstream's id inside `presented`, if its tag is `owner`'s.
    pub fn check<'a>(&self, owner: &str, presented: &'a str) -> Option<&'a str> {
        let (id, tag) = presented.rsplit_once('.')?;
        if id.is_empty() || id.len() > MAX_ID_BYTES {
            return None;
        }
        let expected = self.tag(owner, id);
        // Compared in constant time: the tag is the secret part.
        let same = expected.len() == tag.len()
            && expected.bytes().zip(tag.bytes()).fold(0_u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        same.then_some(id)
    }
}

#[cfg(test)]
mod binding_tests {
    use super::*;

    #[test]
    fn a_bound_id_checks_out_for_its_owner_only() {
        let b = Binding::new(&[7; 32]).unwrap();
        let alice = owner("p", "alice");
        let bound = b.bind(&alice, "abc.def-1");
        assert_eq!(b.check(&alice, &bound), Some("abc.def-1"));
        assert_eq!(b.check(&owner("p", "bob"), &bound), None, "another caller");
        assert_eq!(b.check(&owner("q", "alice"), &bound), None, "same name, another provider");
        let (_, tag) = bound.rsplit_once('.').unwrap();
        assert_eq!(b.check(&alice, &format!("abc.def-2.{tag}")), None, "the tag of another id");
        assert_eq!(b.check(&alice, "abc.def-1"), None, "no tag");
        assert_eq!(b.check(&alice, &format!("{bound}x")), None);
        let other = Binding::new(&[8; 32]).unwrap();
        assert_eq!(other.check(&alice, &bound), None, "another key");
        assert!(Binding::new(&[1; 31]).is_none());
        assert!(!format!("{b:?}").contains('7'));
    }
}
