//! A stream's own settings, `streams/<session_id>/stream.json`: the retention set for it with
//! `SetRetention` and, once archived, when and through which offset. Only the stream's holder
//! writes it, whole, so a plain overwrite is enough; a stream without the object uses the bus
//! defaults and is open.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::{Deserialize, Serialize};

use crate::{BusError, Retention};

/// The name of the settings object inside a stream's folder.
pub(crate) const FILE_NAME: &str = "stream.json";

pub(crate) fn settings_path(session_id: &str) -> Path {
    Path::from(format!("streams/{session_id}/{FILE_NAME}"))
}

/// What `stream.json` holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StreamSettings {
    /// The stream's own retention; None follows the bus default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<StoredRetention>,
    /// Set once the stream is archived.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub archived: Option<Archived>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct StoredRetention {
    pub max_messages: u64,
    /// Milliseconds; 0 keeps messages forever.
    pub max_age_ms: u64,
}

impl From<Retention> for StoredRetention {
    fn from(retention: Retention) -> Self {
        Self {
            max_messages: retention.max_messages,
            max_age_ms: retention
                .max_age
                .map_or(0, |age| age.as_millis().try_into().unwrap_or(u64::MAX)),
        }
    }
}

impl From<StoredRetention> for Retention {
    fn from(stored: StoredRetention) -> Self {
        Self {
            max_messages: stored.max_messages,
            max_age: (stored.max_age_ms > 0).then(|| Duration::from_millis(stored.max_age_ms)),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Archived {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    /// The last offset the stream has.
    pub last_offset: u64,
}

impl Archived {
    pub(crate) fn time(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_millis(self.at_ms)
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis().try_into().unwrap_or(u64::MAX))
}

/// Reads a stream's settings; the defaults when it has none.
pub(crate) async fn read(
    objects: &dyn ObjectStore,
    session_id: &str,
) -> Result<StreamSettings, BusError> {
    let path = settings_path(session_id);
    let data = match objects.get(&path).await {
        Ok(result) => result.bytes().await,
        Err(error) => Err(error),
    };
    match data {
        Ok(data) => serde_json::from_slice(&data).map_err(|e| BusError::Corrupt {
            object: path.to_string(),
            detail: e.to_string(),
        }),
        Err(object_store::Error::NotFound { .. }) => Ok(StreamSettings::default()),
        Err(error) => Err(BusError::from_object_store(error, path.as_ref())),
    }
}

/// Replaces a stream's settings.
pub(crate) async fn write(
    objects: &dyn ObjectStore,
    session_id: &str,
    settings: &StreamSettings,
) -> Result<(), BusError> {
    let path = settings_path(session_id);
    let data = serde_json::to_vec(settings).map_err(|e| BusError::Internal(e.to_string()))?;
    objects
        .put(&path, PutPayload::from(data))
        .await
        .map(|_| ())
        .map_err(|e| BusError::from_object_store(e, path.as_ref()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_round_trips() {
        for retention in [
            Retention::default(),
            Retention {
                max_messages: 7,
                max_age: Some(Duration::from_secs(90)),
            },
        ] {
            assert_eq!(Retention::from(StoredRetention::from(retention)), retention);
        }
    }

    #[test]
    fn empty_settings_read_as_defaults() {
        let settings: StreamSettings = serde_json::from_slice(b"{}").unwrap();
        assert_eq!(settings, StreamSettings::default());
    }
}
