//! The policy's vocabulary: what a party may do with Writ (its roles). The registry of
//! parties and scopes, and the checks a grant must pass against it, live here too.

use std::fmt;

/// What a party may do with Writ. Roles come from the registry (or, for bearer
/// credentials, from the configuration), never from the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// Starts transactions (Mint).
    Minter,
    /// Holds tokens and derives children for the next hop (Downscope).
    Agent,
    /// Holds tokens and checks them (Validate) before it serves a request.
    ResourceServer,
    /// Reads call chains and the audit trail, revokes, disables parties.
    Operator,
    /// Decides consent requests for users (back-channel).
    Approver,
}

impl Role {
    /// Every role, in order.
    pub const ALL: [Role; 5] = [
        Role::Minter,
        Role::Agent,
        Role::ResourceServer,
        Role::Operator,
        Role::Approver,
    ];

    /// Stable lower-case name, as the policy file spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Minter => "minter",
            Role::Agent => "agent",
            Role::ResourceServer => "resource_server",
            Role::Operator => "operator",
            Role::Approver => "approver",
        }
    }

    fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`Role`]s.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Roles(u8);

impl Roles {
    /// No role.
    pub const NONE: Roles = Roles(0);

    /// The set holding `roles`.
    pub fn of(roles: &[Role]) -> Roles {
        Roles(roles.iter().fold(0, |acc, r| acc | r.bit()))
    }

    /// Does the set hold `role`?
    pub fn contains(self, role: Role) -> bool {
        self.0 & role.bit() != 0
    }

    /// Does the set hold any of `roles`?
    pub fn any(self, roles: &[Role]) -> bool {
        roles.iter().any(|r| self.contains(*r))
    }

    /// The roles held, in order.
    pub fn iter(self) -> impl Iterator<Item = Role> {
        Role::ALL.into_iter().filter(move |r| self.contains(*r))
    }
}

impl fmt::Debug for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(self.iter().map(Role::as_str))
            .finish()
    }
}

impl fmt::Display for Roles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.iter().map(Role::as_str).collect();
        f.write_str(&names.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_sets_hold_exactly_their_roles() {
        let r = Roles::of(&[Role::Agent, Role::Operator]);
        assert!(r.contains(Role::Agent) && r.contains(Role::Operator));
        assert!(!r.contains(Role::Minter) && !r.contains(Role::Approver));
        assert!(r.any(&[Role::Minter, Role::Operator]));
        assert!(!Roles::NONE.any(&Role::ALL));
        assert_eq!(r.to_string(), "agent, operator");
    }
}
