//! The session's bus stream: publish and watch.

use std::collections::HashMap;

use aether_client::proto as pb;
use serde_json::json;

use crate::cli::{PublishArgs, StreamArgs, WatchArgs};
use crate::output;
use crate::{Context, Failure};

pub async fn publish(context: &Context, args: PublishArgs) -> Result<(), Failure> {
    let payload = if args.message == "-" {
        super::read_stdin().await?
    } else {
        args.message.into_bytes()
    };
    let headers: HashMap<String, String> = args.headers.into_iter().collect();
    let offset = context
        .client
        .session(&args.session)
        .publish_one(&args.subject, payload.into(), headers)
        .await?;
    if context.json() {
        output::json(&json!({ "offset": offset }))
    } else {
        output::line(offset.to_string())
    }
}

fn start_position(from: &str) -> Result<pb::StartPosition, Failure> {
    use pb::start_position::Position;
    let position = match from {
        "earliest" => Position::Earliest(true),
        "latest" => Position::Latest(true),
        offset => Position::Offset(offset.parse::<u64>().map_err(|_| {
            Failure::Usage(format!(
                "invalid value {offset:?} for '--from': expected an offset, earliest or latest"
            ))
        })?),
    };
    Ok(pb::StartPosition {
        position: Some(position),
    })
}

pub async fn watch(context: &Context, args: WatchArgs) -> Result<(), Failure> {
    let start = start_position(&args.from)?;
    let mut subscription = context
        .client
        .session(&args.session)
        .subscribe(start, &args.subject);
    let mut seen = 0u64;
    while args.count.is_none_or(|count| seen < count) {
        let Some(message) = subscription.next().await? else {
            break;
        };
        seen += 1;
        if context.json() {
            // One document per line, so a reader can act on each as it arrives.
            let text =
                serde_json::to_string(&output::bus_json(&message)).expect("JSON values serialize");
            output::line(text)?;
        } else {
            output::line(output::bus_text(&message))?;
        }
    }
    Ok(())
}

pub async fn stream(context: &Context, args: StreamArgs) -> Result<(), Failure> {
    let session = context.client.session(&args.session);
    if args.max_messages.is_some() || args.max_age.is_some() {
        // An axis not given keeps its current value.
        let current = session.stream_info().await?.retention.unwrap_or_default();
        let max_messages = args.max_messages.unwrap_or(current.max_messages);
        let max_age = match args.max_age {
            Some(age) => Some(age).filter(|age| !age.is_zero()),
            None => current
                .max_age
                .and_then(|age| std::time::Duration::try_from(age).ok())
                .filter(|age| !age.is_zero()),
        };
        session.set_retention(max_messages, max_age).await?;
    }
    let info = session.stream_info().await?;
    let retention = info.retention.unwrap_or_default();
    let max_age_secs = retention.max_age.map_or(0, |age| age.seconds);
    let archived = output::time(&info.archive_time);
    if context.json() {
        return output::json(&json!({
            "first_offset": info.first_offset,
            "last_offset": info.last_offset,
            "retention": {
                "max_messages": retention.max_messages,
                "max_age_seconds": max_age_secs,
                "own": info.own_retention,
            },
            "archived_at": archived,
        }));
    }
    let limit = |value: String, zero: bool| if zero { "none".to_string() } else { value };
    output::line(format!(
        "offsets      {}..{}\nmax messages {}\nmax age      {}\nretention    {}\narchived     {}",
        info.first_offset,
        info.last_offset,
        limit(
            retention.max_messages.to_string(),
            retention.max_messages == 0
        ),
        limit(format!("{max_age_secs}s"), max_age_secs == 0),
        if info.own_retention {
            "the stream's own"
        } else {
            "bus default"
        },
        archived.as_deref().unwrap_or("no"),
    ))
}
