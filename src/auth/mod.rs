//! Who may call, and on what. A caller is authenticated once per request — by a bearer
//! token whose hash is in the tokens file, or by a client certificate the TLS layer
//! verified — into a [`Caller`]: a subject, a [`Role`] and the namespaces it may use. Each
//! RPC then authorizes the namespace it names *before* anything is read, so a caller
//! never learns whether something exists in a namespace it cannot see (I12).
//!
//! [`grants`] is the tokens file (hashes only, reloaded on change); [`layer`] is the tower
//! layer that authenticates every request of the Coordinator service.

pub mod grants;
pub mod layer;

pub use grants::{Grant, Grants, GrantsFile, NamespacePattern, TokenStore};

use crate::domain::names::Namespace;

/// What a caller may do, each role including the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// GetLease, GetMachine, GetEntity, ListEntities, StreamEvents.
    Read,
    /// Read, and every mutation: leases, CreateEntity, Transition, AppendEvents.
    Write,
    /// Write, and DefineMachine and the operator calls (ListLeases, ForceReleaseLease,
    /// ListMachines, DeleteEntity).
    Admin,
}

impl Role {
    /// The lowercase name.
    pub fn name(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: use read, write or admin")),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// An authenticated caller, as the auth layer puts it in a request's extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// Who (the grant's subject).
    pub subject: String,
    /// What it may do.
    pub role: Role,
    /// Where.
    pub namespaces: Vec<NamespacePattern>,
}

/// Why a caller may not make a call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The namespace is not one the caller's grant names.
    #[error("{subject:?} may not use namespace {namespace:?}")]
    Namespace { subject: String, namespace: String },
    /// The call needs a higher role.
    #[error("{subject:?} has role {has}; this call needs {needs} in namespace {namespace:?}")]
    Role {
        subject: String,
        namespace: String,
        has: Role,
        needs: Role,
    },
}

impl Caller {
    /// May this caller make a call that needs `needs` in `ns`? Checked before the call
    /// reads anything, so a refusal says nothing about what the namespace holds.
    pub fn authorize(&self, ns: &Namespace, needs: Role) -> Result<(), Denied> {
        if !self.namespaces.iter().any(|p| p.matches(ns.as_str())) {
            return Err(Denied::Namespace {
                subject: self.subject.clone(),
                namespace: ns.to_string(),
            });
        }
        if self.role < needs {
            return Err(Denied::Role {
                subject: self.subject.clone(),
                namespace: ns.to_string(),
                has: self.role,
                needs,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(s: &str) -> Namespace {
        Namespace::parse("namespace", s.into()).unwrap()
    }

    #[test]
    fn a_caller_is_held_to_its_namespaces_and_role() {
        let caller = Caller {
            subject: "ci".into(),
            role: Role::Write,
            namespaces: vec!["prod".parse().unwrap(), "team-*".parse().unwrap()],
        };
        assert_eq!(caller.authorize(&ns("prod"), Role::Write), Ok(()));
        assert_eq!(caller.authorize(&ns("team-a"), Role::Read), Ok(()));
        assert!(matches!(
            caller.authorize(&ns("prod2"), Role::Read),
            Err(Denied::Namespace { .. })
        ));
        assert!(matches!(
            caller.authorize(&ns("team"), Role::Read),
            Err(Denied::Namespace { .. })
        ));
        assert!(matches!(
            caller.authorize(&ns("prod"), Role::Admin),
            Err(Denied::Role { .. })
        ));
    }
}
