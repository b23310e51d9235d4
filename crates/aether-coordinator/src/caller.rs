//! Who a request acts for, passed explicitly to every domain operation that loads a session:
//! the principal, what its RPC needs on the sessions it names ([`crate::rpcs`]), whether the
//! process enforces session policy, the change's request id (promise 9), and what the request
//! did so far. The gRPC layer builds one per request ([`crate::grpc::caller`]); background work
//! (expiry) acts as [`Caller::system`].

use std::sync::{Arc, Mutex};

use aether_auth::access::{self, Decision};
use aether_auth::{Need, Principal};
use bytes::Bytes;

use crate::error::{Error, Result};
use crate::model::{PolicyRecord, SessionRecord};
use crate::requests::RequestKey;

/// The caller of one request.
#[derive(Clone, Debug)]
pub struct Caller {
    principal: Principal,
    need: Need,
    /// The RPC's method name (`Commit`); empty for background work.
    method: String,
    /// The change this request makes, when it is one and names itself with a request id.
    request: Option<RequestKey>,
    /// Whether session policy is checked (the process has an authentication source).
    enforce: bool,
    progress: Arc<Mutex<Progress>>,
}

/// What a request did so far, as the domain reports it.
#[derive(Debug, Default)]
struct Progress {
    /// A change of this request was committed.
    applied: bool,
    /// The recorded answer of an earlier attempt, to send instead of the handler's.
    replay: Option<Bytes>,
}

impl Caller {
    pub fn new(
        principal: Principal,
        need: Need,
        method: impl Into<String>,
        request: Option<RequestKey>,
        enforce: bool,
    ) -> Caller {
        Caller {
            principal,
            need,
            method: method.into(),
            request,
            enforce,
            progress: Arc::default(),
        }
    }

    /// The coordinator itself (expiry): checked against no policy, no request id.
    pub fn system() -> Caller {
        Caller::new(Principal::anonymous(), Need::Own, "", None, false)
    }

    /// The principal's name.
    pub fn name(&self) -> &str {
        &self.principal.name
    }

    pub fn principal(&self) -> &Principal {
        &self.principal
    }

    /// The RPC's method name (`Commit`); empty for background work.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The change this request makes and its request id, if it names one.
    pub fn request(&self) -> Option<&RequestKey> {
        self.request.as_ref()
    }

    /// Checks the caller against a session it loaded (promise 6). A caller with no role
    /// learns nothing of the session, not even that it exists.
    pub fn authorize(&self, record: &SessionRecord) -> Result<()> {
        if !self.enforce {
            return Ok(());
        }
        match self.decision(record, self.need) {
            Decision::Allowed => Ok(()),
            Decision::NoRole => {
                self.deny(record, "no role");
                Err(Error::SessionNotFound {
                    session: record.id.clone(),
                })
            }
            Decision::Insufficient => {
                self.deny(record, "insufficient role");
                Err(Error::PermissionDenied(format!(
                    "{} may not do this on session {}: it needs {} in the session's policy (ask the owner, {}, to bind \"user:{}\" or one of its groups)",
                    self.principal.name,
                    record.id,
                    self.need.describe(),
                    record.owner,
                    self.principal.name,
                )))
            }
        }
    }

    /// Whether the caller may see a session at all (ListSessions shows only these), from its
    /// owner and policy.
    pub fn can_see(&self, owner: &str, policy: &PolicyRecord) -> bool {
        !self.enforce || decide(&self.principal, owner, policy, Need::Read) == Decision::Allowed
    }

    fn decision(&self, record: &SessionRecord, need: Need) -> Decision {
        decide(&self.principal, &record.owner, &record.policy, need)
    }

    fn deny(&self, record: &SessionRecord, why: &str) {
        tracing::warn!(
            principal = %self.principal.name,
            session = %record.id,
            need = ?self.need,
            why,
            "request denied by session policy"
        );
    }

    /// Notes that the request committed a change: a failure after this point is no longer
    /// "not applied".
    pub fn note_applied(&self) {
        self.progress().applied = true;
    }

    /// Whether the request committed a change.
    pub fn applied(&self) -> bool {
        self.progress().applied
    }

    /// Answers the request with `reply`, the encoded response an earlier attempt recorded,
    /// in place of what its handler returns.
    pub fn replay(&self, reply: Bytes) {
        self.progress().replay = Some(reply);
    }

    /// The recorded answer to send instead of the handler's, once.
    pub fn take_replay(&self) -> Option<Bytes> {
        self.progress().replay.take()
    }

    fn progress(&self) -> std::sync::MutexGuard<'_, Progress> {
        self.progress.lock().expect("request progress")
    }
}

/// What `principal` may do on a session with `owner` and `policy` (also the bus's check).
pub fn decide(principal: &Principal, owner: &str, policy: &PolicyRecord, need: Need) -> Decision {
    let bindings = policy.bindings.iter().map(|b| (b.subject.as_str(), b.role));
    access::decide(principal, owner, bindings, need)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Binding;
    use aether_proto::Role;

    fn caller(name: &str, need: Need) -> Caller {
        Caller::new(Principal::user(name), need, "Test", None, true)
    }

    /// alice owns it, bob views it, carol has no role.
    fn record() -> SessionRecord {
        let mut record = crate::test_support::record("s1");
        record.policy.bindings = vec![Binding {
            subject: "user:bob".into(),
            role: Role::Viewer as i32,
        }];
        record
    }

    #[test]
    fn a_stranger_is_told_nothing_and_a_weak_role_is_told_what_it_lacks() {
        let record = record();
        assert!(caller("alice", Need::Own).authorize(&record).is_ok());
        assert!(caller("bob", Need::Read).authorize(&record).is_ok());
        match caller("bob", Need::Write).authorize(&record) {
            Err(Error::PermissionDenied(message)) => {
                assert!(message.contains("alice"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        for need in [Need::Read, Need::Write, Need::Own] {
            match caller("carol", need).authorize(&record) {
                Err(error @ Error::SessionNotFound { .. }) => {
                    let message = error.to_string();
                    assert!(!message.contains("alice"), "{message}")
                }
                other => panic!("{other:?}"),
            }
        }
        assert!(caller("bob", Need::Read).can_see(&record.owner, &record.policy));
        assert!(!caller("carol", Need::Read).can_see(&record.owner, &record.policy));
    }

    #[test]
    fn unenforced_and_system_callers_pass_and_progress_is_shared_by_clones() {
        let record = record();
        let open = Caller::new(Principal::user("carol"), Need::Own, "Test", None, false);
        assert!(open.authorize(&record).is_ok());
        assert!(open.can_see(&record.owner, &record.policy));
        assert!(Caller::system().authorize(&record).is_ok());

        let handed_to_the_domain = open.clone();
        assert!(!open.applied());
        handed_to_the_domain.note_applied();
        assert!(open.applied());
        handed_to_the_domain.replay(Bytes::from_static(b"answer"));
        assert_eq!(open.take_replay().as_deref(), Some(&b"answer"[..]));
        assert_eq!(open.take_replay(), None);
    }
}
