//! The session's bus stream: publish and watch.

use std::collections::HashMap;

use aether_client::proto as pb;
use serde_json::json;

use crate::cli::{PublishArgs, WatchArgs};
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
