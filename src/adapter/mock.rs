//! A [`Host`] for native tests: Envoy's state as plain maps, every effect recorded.
//!
//! It keeps what proxy-wasm keeps per stream (headers, bodies) by context id, and what
//! is shared by every VM (shared data, queues) once, so several [`Root`](super::Root)s
//! on one mock are several workers of one Envoy. Host calls can be made to fail, and
//! another worker's write can be slipped in before a compare-and-swap.

use super::host::{Buffer, Host, HostError, Level, Map};
use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

/// An effect the adapter asked of Envoy, with the context it acted on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Reply { context: u32, status: u32, body: String },
    Resume { context: u32 },
    ResetRequest { context: u32 },
    ResetResponse { context: u32 },
    Dispatch { token: u32, cluster: String, path: String, timeout: Duration },
    Enqueue { queue: u32 },
    Log { level: Level, message: String },
}

/// A header map's entries, values as bytes.
type Entries = Vec<(String, Vec<u8>)>;

#[derive(Default)]
pub struct MockHost {
    now: Cell<Option<SystemTime>>,
    context: Cell<u32>,
    maps: RefCell<HashMap<(u32, Map), Entries>>,
    buffers: RefCell<HashMap<(u32, Buffer), Vec<u8>>>,
    properties: RefCell<HashMap<(u32, String), Vec<u8>>>,
    shared: RefCell<HashMap<String, (Vec<u8>, u32)>>,
    next_cas: Cell<u32>,
    /// How often each shared-data entry was read (copied into the VM).
    reads: RefCell<HashMap<String, usize>>,
    /// Writes "another worker" makes to a key just before this worker's next write of it.
    rivals: RefCell<Vec<(String, Vec<u8>)>>,
    queues: RefCell<HashMap<u32, VecDeque<Vec<u8>>>>,
    next_id: Cell<u32>,
    counters: RefCell<Vec<(String, u64)>>,
    histograms: RefCell<Vec<(String, Vec<u64>)>>,
    /// How many times each host call was made.
    host_calls: RefCell<HashMap<&'static str, usize>>,
    /// Names of host calls that fail (`"map"`, `"set_buffer"`, `"dispatch"`...).
    failing: RefCell<HashSet<&'static str>>,
    pub calls: RefCell<Vec<Call>>,
}

impl MockHost {
    pub fn new() -> MockHost {
        MockHost::default()
    }

    /// The clock: real time unless set (tokens are minted with the real clock).
    pub fn set_now(&self, t: SystemTime) {
        self.now.set(Some(t));
    }

    pub fn advance(&self, by: Duration) {
        self.set_now(self.now() + by);
    }

    pub fn fail(&self, call: &'static str) {
        self.failing.borrow_mut().insert(call);
    }

    fn check(&self, call: &'static str) -> Result<(), HostError> {
        self.count(call);
        if self.failing.borrow().contains(call) {
            Err(HostError(format!("{call} failed (mock)")))
        } else {
            Ok(())
        }
    }

    fn count(&self, call: &'static str) {
        *self.host_calls.borrow_mut().entry(call).or_default() += 1;
    }

    /// Host calls made since the last look, by name, and forgets them.
    pub fn take_host_calls(&self) -> Vec<(&'static str, usize)> {
        let mut calls: Vec<_> = std::mem::take(&mut *self.host_calls.borrow_mut()).into_iter().collect();
        calls.sort();
        calls
    }

    fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    /// Forgets the recorded calls, returning them.
    pub fn take_calls(&self) -> Vec<Call> {
        std::mem::take(&mut self.calls.borrow_mut())
    }

    pub fn set_map_of(&self, context: u32, map: Map, entries: &[(&str, &str)]) {
        let entries = entries.iter().map(|(n, v)| ((*n).to_owned(), v.as_bytes().to_vec())).collect();
        self.maps.borrow_mut().insert((context, map), entries);
    }

    pub fn map_of(&self, context: u32, map: Map) -> Vec<(String, String)> {
        self.maps
            .borrow()
            .get(&(context, map))
            .map(|m| m.iter().map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned())).collect())
            .unwrap_or_default()
    }

    pub fn set_buffer_of(&self, context: u32, buffer: Buffer, data: &[u8]) {
        self.buffers.borrow_mut().insert((context, buffer), data.to_vec());
    }

    pub fn buffer_of(&self, context: u32, buffer: Buffer) -> Vec<u8> {
        self.buffers.borrow().get(&(context, buffer)).cloned().unwrap_or_default()
    }

    pub fn set_property_of(&self, context: u32, path: &[&str], value: &[u8]) {
        self.properties.borrow_mut().insert((context, path.join(".")), value.to_vec());
    }

    pub fn shared_value(&self, key: &str) -> Option<Vec<u8>> {
        self.shared.borrow().get(key).map(|(v, _)| v.clone())
    }

    pub fn reads_of(&self, key: &str) -> usize {
        self.reads.borrow().get(key).copied().unwrap_or(0)
    }

    /// Another worker writes `value` to `key` right before this worker's next write of it.
    pub fn rival_write(&self, key: &str, value: &[u8]) {
        self.rivals.borrow_mut().push((key.to_owned(), value.to_vec()));
    }

    fn store(&self, key: &str, value: &[u8]) {
        let cas = self.next_cas.get() + 1;
        self.next_cas.set(cas);
        self.shared.borrow_mut().insert(key.to_owned(), (value.to_vec(), cas));
    }

    /// Names of the counters defined so far (each once, however often it was defined).
    pub fn counter_names(&self) -> Vec<String> {
        self.counters.borrow().iter().map(|(n, _)| n.clone()).collect()
    }

    /// The values recorded in a histogram.
    pub fn histogram(&self, name: &str) -> Vec<u64> {
        self.histograms.borrow().iter().find(|(n, _)| n == name).map(|(_, v)| v.clone()).unwrap_or_default()
    }

    pub fn counter(&self, name: &str) -> u64 {
        self.counters.borrow().iter().find(|(n, _)| n == name).map_or(0, |(_, v)| *v)
    }

    pub fn logs(&self, level: Level) -> Vec<String> {
        self.calls
            .borrow()
            .iter()
            .filter_map(|c| match c {
                Call::Log { level: l, message } if *l == level => Some(message.clone()),
                _ => None,
            })
            .collect()
    }

    fn id(&self) -> u32 {
        let id = self.next_id.get() + 1;
        self.next_id.set(id);
        id
    }

    fn current(&self) -> u32 {
        self.context.get()
    }
}

impl Host for MockHost {
    fn log(&self, level: Level, message: &str) {
        self.count("log");
        self.record(Call::Log { level, message: message.to_owned() });
    }

    fn now(&self) -> SystemTime {
        self.count("now");
        self.now.get().unwrap_or_else(SystemTime::now)
    }

    fn define_counter(&self, name: &str) -> Option<u32> {
        self.count("define_metric");
        let mut counters = self.counters.borrow_mut();
        let index = match counters.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                counters.push((name.to_owned(), 0));
                counters.len() - 1
            }
        };
        u32::try_from(index).ok()
    }

    fn increment(&self, counter: u32) {
        self.count("increment");
        let index = usize::try_from(counter).unwrap_or(usize::MAX);
        if let Some((_, value)) = self.counters.borrow_mut().get_mut(index) {
            *value += 1;
        }
    }

    fn add(&self, counter: u32, delta: u64) {
        self.count("add");
        let index = usize::try_from(counter).unwrap_or(usize::MAX);
        if let Some((_, value)) = self.counters.borrow_mut().get_mut(index) {
            *value += delta;
        }
    }

    fn define_histogram(&self, name: &str) -> Option<u32> {
        self.count("define_metric");
        let mut histograms = self.histograms.borrow_mut();
        let index = match histograms.iter().position(|(n, _)| n == name) {
            Some(i) => i,
            None => {
                histograms.push((name.to_owned(), Vec::new()));
                histograms.len() - 1
            }
        };
        u32::try_from(index).ok()
    }

    fn record_value(&self, histogram: u32, value: u64) {
        self.count("record_value");
        let index = usize::try_from(histogram).unwrap_or(usize::MAX);
        if let Some((_, values)) = self.histograms.borrow_mut().get_mut(index) {
            values.push(value);
        }
    }

    fn map(&self, map: Map) -> Result<Entries, HostError> {
        self.check("map")?;
        Ok(self.maps.borrow().get(&(self.current(), map)).cloned().unwrap_or_default())
    }

    fn map_value(&self, map: Map, name: &str) -> Result<Option<Vec<u8>>, HostError> {
        self.check("map_value")?;
        let maps = self.maps.borrow();
        let entries = maps.get(&(self.current(), map));
        Ok(entries.and_then(|m| m.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.clone())))
    }

    fn set_map_value(&self, map: Map, name: &str, value: &str) -> Result<(), HostError> {
        self.check("set_map_value")?;
        let mut maps = self.maps.borrow_mut();
        let entries = maps.entry((self.current(), map)).or_default();
        entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        entries.push((name.to_owned(), value.as_bytes().to_vec()));
        Ok(())
    }

    fn remove_map_value(&self, map: Map, name: &str) -> Result<(), HostError> {
        self.check("remove_map_value")?;
        if let Some(entries) = self.maps.borrow_mut().get_mut(&(self.current(), map)) {
            entries.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        }
        Ok(())
    }

    fn buffer(&self, buffer: Buffer, start: usize, size: usize) -> Result<Option<Vec<u8>>, HostError> {
        self.check("buffer")?;
        let buffers = self.buffers.borrow();
        let Some(data) = buffers.get(&(self.current(), buffer)) else { return Ok(None) };
        let end = start.saturating_add(size).min(data.len());
        Ok(data.get(start.min(end)..end).map(<[u8]>::to_vec))
    }

    fn set_buffer(&self, buffer: Buffer, start: usize, size: usize, data: &[u8]) -> Result<(), HostError> {
        self.check("set_buffer")?;
        let mut buffers = self.buffers.borrow_mut();
        let current = buffers.entry((self.current(), buffer)).or_default();
        let start = start.min(current.len());
        let end = start.saturating_add(size).min(current.len());
        current.splice(start..end, data.iter().copied());
        Ok(())
    }

    fn send_reply(&self, status: u32, _headers: &[(&str, &str)], body: &[u8]) -> Result<(), HostError> {
        self.check("send_reply")?;
        let body = String::from_utf8_lossy(body).into_owned();
        self.record(Call::Reply { context: self.current(), status, body });
        Ok(())
    }

    fn resume_request(&self) -> Result<(), HostError> {
        self.check("resume_request")?;
        self.record(Call::Resume { context: self.current() });
        Ok(())
    }

    fn reset_request(&self) {
        self.count("reset_request");
        self.record(Call::ResetRequest { context: self.current() });
    }

    fn reset_response(&self) {
        self.count("reset_response");
        self.record(Call::ResetResponse { context: self.current() });
    }

    fn shared(&self, key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), HostError> {
        self.check("shared")?;
        *self.reads.borrow_mut().entry(key.to_owned()).or_default() += 1;
        Ok(match self.shared.borrow().get(key) {
            Some((value, cas)) => (Some(value.clone()), Some(*cas)),
            None => (None, None),
        })
    }

    fn set_shared(&self, key: &str, value: &[u8], cas: Option<u32>) -> Result<(), HostError> {
        self.check("set_shared")?;
        let rival = {
            let mut rivals = self.rivals.borrow_mut();
            rivals.iter().position(|(k, _)| k == key).map(|i| rivals.remove(i))
        };
        if let Some((key, value)) = rival {
            self.store(&key, &value);
        }
        let current = self.shared.borrow().get(key).map(|(_, c)| *c);
        if cas.is_some_and(|cas| cas != 0 && Some(cas) != current) {
            return Err(HostError("CasMismatch".into()));
        }
        self.store(key, value);
        Ok(())
    }

    fn register_queue(&self, _name: &str) -> Option<u32> {
        if self.check("register_queue").is_err() {
            return None;
        }
        let id = self.id();
        self.queues.borrow_mut().insert(id, VecDeque::new());
        Some(id)
    }

    fn enqueue(&self, queue: u32, message: &[u8]) -> Result<(), HostError> {
        self.check("enqueue")?;
        let mut queues = self.queues.borrow_mut();
        let q = queues.get_mut(&queue).ok_or_else(|| HostError("NotFound".into()))?;
        q.push_back(message.to_vec());
        self.record(Call::Enqueue { queue });
        Ok(())
    }

    fn dequeue(&self, queue: u32) -> Result<Option<Vec<u8>>, HostError> {
        self.check("dequeue")?;
        Ok(self.queues.borrow_mut().get_mut(&queue).and_then(VecDeque::pop_front))
    }

    fn dispatch(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        _body: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<u32, HostError> {
        self.check("dispatch")?;
        let token = self.id();
        let path = headers.iter().find(|(n, _)| *n == ":path").map(|(_, v)| (*v).to_owned()).unwrap_or_default();
        self.record(Call::Dispatch { token, cluster: cluster.to_owned(), path, timeout });
        Ok(token)
    }

    fn set_tick(&self, _period: Duration) -> Result<(), HostError> {
        self.check("set_tick")
    }

    fn enter(&self, context_id: u32) -> Result<(), HostError> {
        self.check("enter")?;
        self.context.set(context_id);
        Ok(())
    }

    fn property(&self, path: &[&str]) -> Result<Option<Vec<u8>>, HostError> {
        self.check("property")?;
        Ok(self.properties.borrow().get(&(self.current(), path.join("."))).cloned())
    }
}
