//! Checkpoint-heavy work, over real gRPC on real etcd and S3: many checkpoints of files and
//! knowledge together, then restores in any order bring both back exactly; and the knowledge
//! API's limits.

use crate::lifecycle_support;

use std::collections::BTreeMap;

use aether_proto as pb;
use lifecycle_support::*;
use tonic::Code;

/// The knowledge a session should hold: key → (value, tags).
type Model = BTreeMap<String, (Vec<u8>, Vec<String>)>;

async fn assert_knowledge(t: &Trusting, id: &str, model: &Model, context: &str) {
    let entries = all_entries(t, id, "", "", 7).await.unwrap();
    let got: Model = entries
        .into_iter()
        .map(|e| (e.key, (e.value.to_vec(), e.tags)))
        .collect();
    assert_eq!(&got, model, "{context}");
}

fn tag_of(i: usize) -> &'static str {
    match i % 2 {
        0 => "even",
        _ => "odd",
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_knowledge_restores_with_the_files_after_many_checkpoints() {
    const STEPS: usize = 40;
    let t = Trusting::start().await.unwrap();
    let id = create_session(&t, "agent", None).await.unwrap().id;

    // Each step changes a file and the knowledge, then checkpoints both.
    let mut model = Model::new();
    let mut snapshots: Vec<(Vec<u8>, Model)> = Vec::new();
    for i in 1..=STEPS {
        let state = format!("state {i}\n").into_bytes();
        write(&t, &id, "state.txt", &state).await.unwrap();
        let step = i.to_string().into_bytes();
        put_entry(&t, &id, "step", &step, &[]).await.unwrap();
        model.insert("step".into(), (step, vec![]));
        let key = format!("k/{i:03}");
        put_entry(&t, &id, &key, key.as_bytes(), &[tag_of(i)])
            .await
            .unwrap();
        model.insert(key.clone(), (key.into_bytes(), vec![tag_of(i).into()]));
        if i % 5 == 4 {
            let old = format!("k/{:03}", i - 2);
            t.knowledge()
                .delete_entry(pb::DeleteEntryRequest {
                    session_id: id.clone(),
                    key: old.clone(),
                })
                .await
                .unwrap();
            model.remove(&old);
        }
        checkpoint(&t, &id, &format!("c-{i}")).await.unwrap();
        snapshots.push((state, model.clone()));
    }
    assert_knowledge(&t, &id, &model, "head").await;

    // Restore in an order that jumps back and forth; files and knowledge match each time.
    for i in [17usize, 40, 3, 1, 25, 40, 10] {
        restore(&t, &id, &format!("c-{i}")).await.unwrap();
        let (state, knowledge) = &snapshots[i - 1];
        assert_eq!(&read(&t, &id, "state.txt").await.unwrap(), state, "c-{i}");
        assert_knowledge(&t, &id, knowledge, &format!("after restoring c-{i}")).await;
        let step = get_entry(&t, &id, "step").await.unwrap();
        assert_eq!(step.value, i.to_string().as_bytes(), "c-{i}");
    }

    // Changes after a restore are new history; the checkpoints are untouched.
    put_entry(&t, &id, "after", b"restore", &[]).await.unwrap();
    restore(&t, &id, "c-10").await.unwrap();
    assert_knowledge(&t, &id, &snapshots[9].1, "c-10 again").await;

    // Prefix and tag filters, paged, in key order.
    let odd: Vec<String> = all_entries(&t, &id, "k/", "odd", 2)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    let expected: Vec<String> = snapshots[9]
        .1
        .iter()
        .filter(|(k, (_, tags))| k.starts_with("k/") && tags.iter().any(|t| t == "odd"))
        .map(|(k, _)| k.clone())
        .collect();
    assert_eq!(odd, expected);
    assert!(all_entries(&t, &id, "k/9", "", 5).await.unwrap().is_empty());

    // A session created from a checkpoint starts from its files and knowledge.
    let from = t
        .sessions()
        .create_session(pb::CreateSessionRequest {
            source: Some(pb::Source {
                kind: Some(pb::source::Kind::Checkpoint(pb::CheckpointSource {
                    session_id: id.clone(),
                    name: "c-25".into(),
                })),
            }),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .session
        .unwrap();
    assert_eq!(
        read(&t, &from.id, "state.txt").await.unwrap(),
        snapshots[24].0
    );
    assert_knowledge(&t, &from.id, &snapshots[24].1, "created from c-25").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_knowledge_limits_and_errors() {
    let t = Trusting::start().await.unwrap();
    let id = create_session(&t, "agent", None).await.unwrap().id;
    let mut knowledge = t.knowledge();

    // Keys, values and tags at their limits are accepted; one past, refused.
    let key = "k".repeat(512);
    let tags: Vec<String> = (0..32).map(|i| format!("{i:064}")).collect();
    let tag_refs: Vec<&str> = tags.iter().map(String::as_str).collect();
    let value = vec![7u8; 1024 * 1024];
    let stored = put_entry(&t, &id, &key, &value, &tag_refs).await.unwrap();
    assert_eq!(stored.author, "anonymous");
    assert!(stored.updated_at.is_some());
    assert_eq!(
        get_entry(&t, &id, &key).await.unwrap().value.len(),
        value.len()
    );
    let as_alice = knowledge
        .put_entry(as_user(
            "alice",
            pb::PutEntryRequest {
                session_id: id.clone(),
                entry: Some(pb::KnowledgeEntry {
                    key: "by/alice".into(),
                    value: "v".into(),
                    tags: vec!["a".into(), "a".into()],
                    ..Default::default()
                }),
            },
        ))
        .await
        .unwrap()
        .into_inner()
        .entry
        .unwrap();
    assert_eq!(as_alice.author, "alice");
    assert_eq!(as_alice.tags, ["a"], "repeated tags are kept once");

    let too_many_tags: Vec<String> = (0..33).map(|i| i.to_string()).collect();
    let too_many_refs: Vec<&str> = too_many_tags.iter().map(String::as_str).collect();
    let long_tag = "t".repeat(65);
    let long_key = "k".repeat(513);
    let invalid: [(&str, &[&str]); 6] = [
        ("", &[]),
        ("nul\0key", &[]),
        ("ctl\u{7}", &[]),
        (&long_key, &[]),
        ("ok", &too_many_refs),
        ("ok", &[&long_tag]),
    ];
    for (key, tags) in invalid {
        let refused = put_entry(&t, &id, key, b"v", tags).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Code::InvalidArgument,
            "{key:?} {} tags",
            tags.len()
        );
    }
    let refused = put_entry(&t, &id, "ok", b"v", &[""]).await.unwrap_err();
    assert_eq!(refused.code(), Code::InvalidArgument);
    let refused = put_entry(&t, &id, "big", &vec![0u8; 1024 * 1024 + 1], &[])
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::ResourceExhausted);
    let no_entry = knowledge
        .put_entry(pb::PutEntryRequest {
            session_id: id.clone(),
            entry: None,
        })
        .await;
    assert_eq!(code_of(no_entry), Code::InvalidArgument);
    let keys: Vec<String> = all_entries(&t, &id, "", "", 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.key)
        .collect();
    assert_eq!(
        keys,
        ["by/alice".to_string(), key.clone()],
        "refused puts changed nothing"
    );

    // Missing entries and sessions.
    assert_eq!(
        get_entry(&t, &id, "absent").await.unwrap_err().code(),
        Code::NotFound
    );
    let delete_absent = knowledge
        .delete_entry(pb::DeleteEntryRequest {
            session_id: id.clone(),
            key: "absent".into(),
        })
        .await;
    assert_eq!(code_of(delete_absent), Code::NotFound);
    assert_eq!(
        get_entry(&t, "nosuchsession", "k")
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
    let bad_token = knowledge
        .list_entries(pb::ListEntriesRequest {
            session_id: id.clone(),
            page: Some(pb::PageRequest {
                page_size: 1,
                page_token: "\0".into(),
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(code_of(bad_token), Code::InvalidArgument);

    // Delete, then a finalized session is read-only: reads work, writes are refused.
    knowledge
        .delete_entry(pb::DeleteEntryRequest {
            session_id: id.clone(),
            key: "by/alice".into(),
        })
        .await
        .unwrap();
    assert_eq!(
        get_entry(&t, &id, "by/alice").await.unwrap_err().code(),
        Code::NotFound
    );
    t.sessions()
        .finalize_session(pb::FinalizeSessionRequest {
            session_id: id.clone(),
        })
        .await
        .unwrap();
    let refused = put_entry(&t, &id, "late", b"v", &[]).await.unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let refused = knowledge
        .delete_entry(pb::DeleteEntryRequest {
            session_id: id.clone(),
            key: key.clone(),
        })
        .await;
    assert_eq!(code_of(refused), Code::FailedPrecondition);
    assert_eq!(
        get_entry(&t, &id, &key).await.unwrap().value.len(),
        value.len()
    );
}
