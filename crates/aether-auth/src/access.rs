//! Session roles and what each allows (proto `Role`, design promise 6): viewer reads; editor
//! reads and changes files, knowledge, annotations, checkpoints and commits; reviewer reads,
//! annotates and decides approvals; owner does everything, including transfer, finalize,
//! close and policy changes. A principal's roles on a session come from being its owner and
//! from the policy's bindings of `user:NAME` and `group:NAME`.

use crate::Principal;

/// A role, numbered as in the proto `Role` enum.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer = 1,
    Editor = 2,
    Reviewer = 3,
    Owner = 4,
}

impl Role {
    pub fn from_i32(value: i32) -> Option<Role> {
        match value {
            1 => Some(Role::Viewer),
            2 => Some(Role::Editor),
            3 => Some(Role::Reviewer),
            4 => Some(Role::Owner),
            _ => None,
        }
    }
}

/// What an RPC needs on a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Any role: read files, history, annotations, knowledge, audit; subscribe.
    Read,
    /// Editor or owner: change files, knowledge, checkpoints, commits; publish.
    Write,
    /// Editor, reviewer or owner: add and resolve annotations.
    Annotate,
    /// Reviewer or owner: decide approvals.
    Review,
    /// Owner: transfer, finalize, close, change policy.
    Own,
}

impl Need {
    pub fn describe(self) -> &'static str {
        match self {
            Need::Read => "a role (viewer, editor, reviewer or owner)",
            Need::Write => "the editor or owner role",
            Need::Annotate => "the editor, reviewer or owner role",
            Need::Review => "the reviewer or owner role",
            Need::Own => "the owner role",
        }
    }
}

/// The roles `principal` holds on a session owned by `owner` with role `bindings`
/// (`(subject, proto role number)` pairs).
pub fn roles<'a>(
    principal: &Principal,
    owner: &str,
    bindings: impl IntoIterator<Item = (&'a str, i32)>,
) -> Vec<Role> {
    let mut roles = Vec::new();
    if principal.name == owner {
        roles.push(Role::Owner);
    }
    for (subject, role) in bindings {
        let matches = match subject.split_once(':') {
            Some(("user", name)) => name == principal.name,
            Some(("group", group)) => principal.in_group(group),
            _ => false,
        };
        if let (true, Some(role)) = (matches, Role::from_i32(role)) {
            roles.push(role);
        }
    }
    roles
}

/// Whether any of `roles` allows `need`.
pub fn allows(roles: &[Role], need: Need) -> bool {
    roles.iter().any(|role| match need {
        Need::Read => true,
        Need::Write => matches!(role, Role::Editor | Role::Owner),
        Need::Annotate => matches!(role, Role::Editor | Role::Reviewer | Role::Owner),
        Need::Review => matches!(role, Role::Reviewer | Role::Owner),
        Need::Own => *role == Role::Owner,
    })
}

/// The outcome of a check: allowed, no role at all (callers may hide the session), or a role
/// that does not suffice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allowed,
    NoRole,
    Insufficient,
}

/// Decides whether `principal` may do what `need` asks on a session. Services (see
/// [`crate::SERVICE_GROUP`]) are always allowed.
pub fn decide<'a>(
    principal: &Principal,
    owner: &str,
    bindings: impl IntoIterator<Item = (&'a str, i32)>,
    need: Need,
) -> Decision {
    if principal.is_service() {
        return Decision::Allowed;
    }
    let roles = roles(principal, owner, bindings);
    if roles.is_empty() {
        Decision::NoRole
    } else if allows(&roles, need) {
        Decision::Allowed
    } else {
        Decision::Insufficient
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str, groups: &[&str]) -> Principal {
        Principal {
            name: name.into(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }

    #[test]
    fn owner_bindings_and_groups() {
        let bindings = [
            ("user:ann", 1),
            ("group:dev", 2),
            ("user:rev", 3),
            ("bogus", 4),
        ];
        let d = |who: &Principal, need| decide(who, "olly", bindings, need);
        assert_eq!(d(&p("olly", &[]), Need::Own), Decision::Allowed);
        assert_eq!(d(&p("ann", &[]), Need::Read), Decision::Allowed);
        assert_eq!(d(&p("ann", &[]), Need::Write), Decision::Insufficient);
        assert_eq!(d(&p("zed", &["dev"]), Need::Write), Decision::Allowed);
        assert_eq!(d(&p("zed", &["dev"]), Need::Review), Decision::Insufficient);
        assert_eq!(d(&p("rev", &[]), Need::Review), Decision::Allowed);
        assert_eq!(d(&p("rev", &[]), Need::Annotate), Decision::Allowed);
        assert_eq!(d(&p("rev", &[]), Need::Write), Decision::Insufficient);
        assert_eq!(d(&p("eve", &[]), Need::Read), Decision::NoRole);
        assert_eq!(d(&p("bogus", &[]), Need::Read), Decision::NoRole);
        assert_eq!(
            d(&p("svc", &[crate::SERVICE_GROUP]), Need::Own),
            Decision::Allowed
        );
    }
}
