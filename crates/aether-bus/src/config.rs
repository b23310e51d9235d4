//! How the bus buffers, flushes, retains and evicts: [`BusConfig`], and the flags that build it.

use std::time::Duration;

/// Tuning of the bus. Every field has a default fit for the single-node case.
#[derive(Clone, Debug)]
pub struct BusConfig {
    /// Persisted messages kept in memory per stream for replay without a store read (the
    /// tail). Also bounds the messages of a stream that may wait to be persisted (never below
    /// one full segment or one full batch): beyond it publishers are held back until the
    /// flusher catches up, then refused with `UNAVAILABLE`.
    pub max_buffered_messages: usize,
    /// Group commit window while a publisher waits for persistence: a stream writes at most one
    /// segment per window, unless a full segment is pending.
    pub flush_interval: Duration,
    /// Group commit window while nobody waits (only `DURABILITY_ACCEPTED` messages pending),
    /// never shorter than `flush_interval`. Longer windows mean fewer, fuller segments (fewer
    /// object writes and files); it bounds the accepted messages a bus crash may lose.
    pub accepted_flush_interval: Duration,
    /// Most messages in one segment; this many pending messages are written at once.
    pub max_segment_messages: usize,
    /// Live messages a subscriber may lag behind before it is told `Lagged` and dropped.
    pub subscriber_buffer: usize,
    /// How long streams keep messages.
    pub retention: Retention,
    /// How long a `DURABILITY_PERSISTED` publish waits for its segment (and any publish waits
    /// for room when the stream's unpersisted backlog is full) before it gets `UNAVAILABLE`.
    pub persist_timeout: Duration,
    /// A stream with nothing pending and no subscriber is dropped from memory after this long
    /// without activity; the next request reloads it from the object store.
    pub stream_idle_timeout: Duration,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            max_buffered_messages: 10_000,
            flush_interval: Duration::from_millis(2),
            accepted_flush_interval: Duration::from_millis(50),
            max_segment_messages: 4096,
            subscriber_buffer: 4096,
            retention: Retention::default(),
            persist_timeout: Duration::from_secs(10),
            stream_idle_timeout: Duration::from_secs(600),
        }
    }
}

impl BusConfig {
    /// The config with every size at least 1, so no setting can wedge a stream.
    pub(crate) fn sanitized(mut self) -> Self {
        self.max_buffered_messages = self.max_buffered_messages.max(1);
        self.max_segment_messages = self.max_segment_messages.max(1);
        self.subscriber_buffer = self.subscriber_buffer.max(1);
        self
    }

    /// The most unpersisted messages a stream holds before publishers must wait: at least a
    /// full segment, so a full batch can always be written.
    pub(crate) fn max_unpersisted(&self) -> u64 {
        self.max_buffered_messages
            .max(self.max_segment_messages)
            .max(crate::MAX_BATCH_MESSAGES) as u64
    }
}

/// How long a stream keeps messages. Old segments are deleted whole, oldest first; the newest
/// segment is always kept because it records where offsets continue after a restart.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    /// Keep at most this many messages (0 = unlimited): subscribers see at most the last
    /// `max_messages`, and a segment is deleted once all its messages are older than that.
    pub max_messages: u64,
    /// Keep messages at most this long (None = forever), judged per segment by when it was
    /// written.
    pub max_age: Option<Duration>,
}

/// Bus flags, for the server binary.
#[derive(Clone, Debug, clap::Args)]
pub struct BusArgs {
    /// Messages kept in memory per stream (and most unpersisted messages per stream).
    #[arg(long, env = "AETHER_BUS_BUFFERED_MESSAGES", default_value_t = 10_000)]
    pub bus_buffered_messages: usize,
    /// Group commit window in milliseconds while a publisher waits for persistence.
    #[arg(long, env = "AETHER_BUS_FLUSH_INTERVAL_MS", default_value_t = 2)]
    pub bus_flush_interval_ms: u64,
    /// Group commit window in milliseconds while only accepted (not awaited) messages are
    /// pending: what a crash may lose of them.
    #[arg(
        long,
        env = "AETHER_BUS_ACCEPTED_FLUSH_INTERVAL_MS",
        default_value_t = 50
    )]
    pub bus_accepted_flush_interval_ms: u64,
    /// Most messages per segment.
    #[arg(long, env = "AETHER_BUS_SEGMENT_MESSAGES", default_value_t = 4096)]
    pub bus_segment_messages: usize,
    /// Live messages a subscriber may lag before it is told to resubscribe.
    #[arg(long, env = "AETHER_BUS_SUBSCRIBER_BUFFER", default_value_t = 4096)]
    pub bus_subscriber_buffer: usize,
    /// Keep at most this many messages per stream (0 = unlimited).
    #[arg(long, env = "AETHER_BUS_RETENTION_MESSAGES", default_value_t = 0)]
    pub bus_retention_messages: u64,
    /// Keep messages at most this many seconds (0 = forever).
    #[arg(long, env = "AETHER_BUS_RETENTION_SECS", default_value_t = 0)]
    pub bus_retention_secs: u64,
    /// Seconds a persisted publish waits for the object store before UNAVAILABLE.
    #[arg(long, env = "AETHER_BUS_PERSIST_TIMEOUT_SECS", default_value_t = 10)]
    pub bus_persist_timeout_secs: u64,
    /// Seconds an idle stream stays in memory.
    #[arg(long, env = "AETHER_BUS_IDLE_SECS", default_value_t = 600)]
    pub bus_idle_secs: u64,
}

impl BusArgs {
    /// The configuration these flags describe.
    pub fn config(&self) -> BusConfig {
        BusConfig {
            max_buffered_messages: self.bus_buffered_messages,
            flush_interval: Duration::from_millis(self.bus_flush_interval_ms),
            accepted_flush_interval: Duration::from_millis(self.bus_accepted_flush_interval_ms),
            max_segment_messages: self.bus_segment_messages,
            subscriber_buffer: self.bus_subscriber_buffer,
            retention: Retention {
                max_messages: self.bus_retention_messages,
                max_age: (self.bus_retention_secs > 0)
                    .then(|| Duration::from_secs(self.bus_retention_secs)),
            },
            persist_timeout: Duration::from_secs(self.bus_persist_timeout_secs),
            stream_idle_timeout: Duration::from_secs(self.bus_idle_secs),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        bus: BusArgs,
    }

    #[test]
    fn flag_defaults_match_config_defaults() {
        let from_flags = Cli::parse_from(["bus"]).bus.config();
        let default = BusConfig::default();
        assert_eq!(
            from_flags.max_buffered_messages,
            default.max_buffered_messages
        );
        assert_eq!(from_flags.flush_interval, default.flush_interval);
        assert_eq!(
            from_flags.accepted_flush_interval,
            default.accepted_flush_interval
        );
        assert_eq!(
            from_flags.max_segment_messages,
            default.max_segment_messages
        );
        assert_eq!(from_flags.subscriber_buffer, default.subscriber_buffer);
        assert_eq!(from_flags.retention, default.retention);
        assert_eq!(from_flags.persist_timeout, default.persist_timeout);
        assert_eq!(from_flags.stream_idle_timeout, default.stream_idle_timeout);
    }
}
