//! The audit outbox: records waiting to be sent to the sidecar, one worker's worth.
//!
//! Each worker keeps its own bounded queue and has at most one batch in flight (sent with
//! `dispatch_http_call` from the root context on its tick). A batch leaves the queue only
//! when the sidecar acknowledges it (HTTP 200, sent after its commit); any other answer,
//! or none, puts it back at the front and waits, doubling the wait up to
//! [`MAX_BACKOFF_MS`]. When the queue is full a new record is dropped and counted: it is
//! still in Envoy's log, like every record. Nothing here touches the request path.

use std::collections::VecDeque;

pub const FIRST_BACKOFF_MS: u64 = 100;
pub const MAX_BACKOFF_MS: u64 = 30_000;

/// What happened to records, for Envoy's stats.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Tally {
    pub sent: u64,
    pub acknowledged: u64,
    pub retried: u64,
    pub dropped: u64,
}

#[derive(Debug)]
pub struct Outbox {
    /// Serialized records (JSON objects), oldest first, each with when it was queued.
    queue: VecDeque<(u64, String)>,
    /// The batch sent and not yet answered: its call token and its records.
    in_flight: Option<(u32, Vec<(u64, String)>)>,
    max_buffered: usize,
    batch_records: usize,
    flush_ms: u64,
    backoff_ms: u64,
    /// No send before this time (after a failure).
    retry_at_ms: u64,
    pub tally: Tally,
}

impl Outbox {
    pub fn new(batch_records: usize, flush_ms: u64, max_buffered: usize) -> Outbox {
        Outbox {
            queue: VecDeque::new(),
            in_flight: None,
            max_buffered: max_buffered.max(1),
            batch_records: batch_records.max(1),
            flush_ms,
            backoff_ms: 0,
            retry_at_ms: 0,
            tally: Tally::default(),
        }
    }

    /// Records held, queued or in flight.
    pub fn held(&self) -> usize {
        self.queue.len() + self.in_flight.as_ref().map_or(0, |(_, b)| b.len())
    }

    /// Queues a record; false (and counted) when the outbox is full.
    pub fn push(&mut self, now_ms: u64, record: String) -> bool {
        if self.held() >= self.max_buffered {
            self.tally.dropped += 1;
            return false;
        }
        self.queue.push_back((now_ms, record));
        true
    }

    /// The body of the next batch, if one should go now: nothing in flight, not waiting
    /// after a failure, and a full batch queued or the oldest record queued `flush_ms` ago.
    /// The caller sends it and reports the call's token with [`Outbox::sent`] (or
    /// [`Outbox::failed`] when it could not be sent).
    pub fn next_batch(&mut self, now_ms: u64) -> Option<String> {
        if self.in_flight.is_some() || now_ms < self.retry_at_ms {
            return None;
        }
        let oldest = self.queue.front()?.0;
        if self.queue.len() < self.batch_records && now_ms.saturating_sub(oldest) < self.flush_ms {
            return None;
        }
        let n = self.queue.len().min(self.batch_records);
        let batch: Vec<(u64, String)> = self.queue.drain(..n).collect();
        let mut body = String::with_capacity(batch.iter().map(|(_, r)| r.len() + 1).sum::<usize>() + 2);
        body.push('[');
        for (i, (_, record)) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(record);
        }
        body.push(']');
        // Held as in flight under token 0 until `sent` names the real one.
        self.in_flight = Some((0, batch));
        Some(body)
    }

    /// The batch from [`Outbox::next_batch`] went out as call `token`.
    pub fn sent(&mut self, token: u32) {
        if let Some((t, batch)) = &mut self.in_flight {
            *t = token;
            self.tally.sent += batch.len() as u64;
        }
    }

    /// Whether `token` is the batch in flight.
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight.as_ref().is_some_and(|(t, _)| *t == token)
    }

    /// The sidecar answered the batch in flight: `ok` when it committed it.
    pub fn answered(&mut self, now_ms: u64, ok: bool) {
        if ok {
            if let Some((_, batch)) = self.in_flight.take() {
                self.tally.acknowledged += batch.len() as u64;
            }
            self.backoff_ms = 0;
            self.retry_at_ms = 0;
        } else {
            self.failed(now_ms);
        }
    }

    /// The batch in flight was not committed (refused, no answer, or not sent): back to
    /// the front of the queue, and wait before the next try.
    pub fn failed(&mut self, now_ms: u64) {
        if let Some((_, batch)) = self.in_flight.take() {
            self.tally.retried += batch.len() as u64;
            for record in batch.into_iter().rev() {
                self.queue.push_front(record);
            }
        }
        self.backoff_ms = (self.backoff_ms * 2).clamp(FIRST_BACKOFF_MS, MAX_BACKOFF_MS);
        self.retry_at_ms = now_ms + self.backoff_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn records(outbox: &mut Outbox, from: usize, n: usize, now: u64) {
        for i in from..from + n {
            assert!(outbox.push(now, format!("{{\"record_id\":\"r{i}\"}}")));
        }
    }

    #[test]
    fn sends_full_batches_at_once_and_partial_ones_after_flush_ms() {
        let mut o = Outbox::new(3, 1000, 100);
        records(&mut o, 0, 2, 0);
        assert_eq!(o.next_batch(999), None, "not full, not old enough");
        records(&mut o, 2, 2, 500);
        let body = o.next_batch(500).unwrap();
        assert_eq!(body, r#"[{"record_id":"r0"},{"record_id":"r1"},{"record_id":"r2"}]"#);
        o.sent(7);
        assert_eq!(o.next_batch(5000), None, "one batch in flight at a time");
        assert!(o.owns(7) && !o.owns(8));
        o.answered(600, true);
        assert_eq!(o.tally, Tally { sent: 3, acknowledged: 3, retried: 0, dropped: 0 });
        assert_eq!(o.next_batch(1000), None, "r3 was queued at 500");
        assert_eq!(o.next_batch(1500).unwrap(), r#"[{"record_id":"r3"}]"#);
    }

    #[test]
    fn a_failed_batch_goes_back_in_order_and_waits_longer_each_time() {
        let mut o = Outbox::new(2, 10, 100);
        records(&mut o, 0, 3, 0);
        let first = o.next_batch(100).unwrap();
        o.sent(1);
        o.answered(100, false);
        assert_eq!(o.next_batch(150), None, "backing off");
        assert_eq!(o.next_batch(200).unwrap(), first, "the same records, in order");
        o.sent(2);
        o.failed(200);
        assert_eq!(o.next_batch(399), None, "the wait doubled");
        assert_eq!(o.next_batch(400).unwrap(), first);
        o.sent(3);
        o.answered(400, true);
        assert_eq!(o.next_batch(401).unwrap(), r#"[{"record_id":"r2"}]"#, "no wait after a success");
        assert_eq!(o.tally.retried, 4);
        for _ in 0..20 {
            o.failed(0);
        }
        assert_eq!(o.backoff_ms, MAX_BACKOFF_MS);
    }

    #[test]
    fn a_full_outbox_drops_and_counts_new_records() {
        let mut o = Outbox::new(2, 10, 3);
        records(&mut o, 0, 3, 0);
        assert!(!o.push(0, "{}".into()));
        let _ = o.next_batch(100).unwrap();
        o.sent(1);
        assert!(!o.push(0, "{}".into()), "records in flight count against the bound");
        o.answered(100, true);
        assert!(o.push(0, "{}".into()));
        assert_eq!(o.tally.dropped, 2);
        assert_eq!(o.held(), 2);
    }
}
