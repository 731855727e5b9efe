//! Newtypes for every name a request carries. A value that exists has been validated:
//! parse at the boundary, never again inside.

use super::DomainError;
use super::error::quote;
use std::fmt;

/// Characters that may appear in free-form names (keys, holders, dedup keys, request ids).
fn free_form(field: &str, s: &str, max: usize) -> Result<(), DomainError> {
    if s.is_empty() {
        return Err(DomainError::invalid(field, "must not be empty"));
    }
    if s.len() > max {
        return Err(DomainError::invalid(
            field,
            format!("must be at most {max} bytes, got {}", s.len()),
        ));
    }
    if s.chars().any(char::is_control) {
        return Err(DomainError::invalid(field, "must not contain control characters"));
    }
    Ok(())
}

/// `[a-z][a-z0-9_]{0,62}`: kinds, states, fields, transition names.
fn identifier(field: &str, s: &str) -> Result<(), DomainError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.as_bytes()[0].is_ascii_lowercase()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(DomainError::invalid(
            field,
            format!("{} must match [a-z][a-z0-9_]{{0,62}}", quote(s)),
        ))
    }
}

macro_rules! newtype {
    ($(#[$doc:meta])* $name:ident, $field:literal) => {
        $(#[$doc])*
        // Deserialized only through `parse` (stored outcomes and specs are read back with the
        // same rules as requests).
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = DomainError;

            fn try_from(s: String) -> Result<Self, DomainError> {
                Self::parse($field, s)
            }
        }

        impl From<$name> for String {
            fn from(v: $name) -> String {
                v.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }
    };
}

newtype!(
    /// A tenant's space: `[a-z0-9][a-z0-9_.-]{0,62}`.
    Namespace,
    "namespace"
);
newtype!(
    /// A lease key: 1..256 bytes, no control characters.
    LeaseKey,
    "key"
);
newtype!(
    /// A lease holder's identity: 1..128 bytes, no control characters.
    Holder,
    "holder"
);
newtype!(
    /// An entity id: `[A-Za-z0-9_.:-]{1,128}`.
    EntityId,
    "id"
);
newtype!(
    /// A machine kind, state, field or transition name: `[a-z][a-z0-9_]{0,62}`.
    Name,
    "name"
);
newtype!(
    /// A dedup key: 1..256 bytes, no control characters.
    DedupKey,
    "dedup_key"
);
newtype!(
    /// An idempotency key: 1..128 bytes, no control characters.
    RequestId,
    "request_id"
);

impl Namespace {
    /// Parses a namespace; `field` names the request field for the error.
    pub fn parse(field: &str, s: String) -> Result<Self, DomainError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 63
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'));
        if ok {
            Ok(Self(s))
        } else if s.is_empty() {
            Err(DomainError::invalid(field, "must not be empty"))
        } else {
            Err(DomainError::invalid(
                field,
                format!("{} must match [a-z0-9][a-z0-9_.-]{{0,62}}", quote(&s)),
            ))
        }
    }
}

impl LeaseKey {
    /// Maximum length in bytes.
    pub const MAX: usize = 256;
    /// Parses a lease key.
    pub fn parse(field: &str, s: String) -> Result<Self, DomainError> {
        free_form(field, &s, Self::MAX).map(|()| Self(s))
    }
}

impl Holder {
    /// Maximum length in bytes.
    pub const MAX: usize = 128;
    /// Parses a holder.
    pub fn parse(field: &str, s: String) -> Result<Self, DomainError> {
        free_form(field, &s, Self::MAX).map(|()| Self(s))
    }
}

impl EntityId {
    /// Parses an entity id.
    pub fn parse(field: &str, s: String) -> Result<Self, DomainError> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b':' | b'-'));
        if ok {
            Ok(Self(s))
        } else if s.is_empty() {
            Err(DomainError::invalid(field, "must not be empty"))
        } else {
            Err(DomainError::invalid(
                field,
                format!("{} must match [A-Za-z0-9_.:-]{{1,128}}", quote(&s)),
            ))
        }
    }

    /// A fresh server-generated id (UUIDv7: time-ordered, so ids sort by creation).
    pub fn generate() -> Self {
        Self(uuid::Uuid::now_v7().to_string())
    }
}

impl Name {
    /// Parses an identifier.
    pub fn parse(field: &str, s: String) -> Result<Self, DomainError> {
        identifier(field, &s).map(|()| Self(s))
    }
}

impl DedupKey {
    /// Parses a dedup key.
    pub fn parse(field: &str, s: String) -> Result<Self, DomainError> {
        free_form(field, &s, 256).map(|()| Self(s))
    }
}

impl RequestId {
    /// Parses a request id.
    pub fn parse(field: &str, s: String) -> Result<Self, DomainError> {
        free_form(field, &s, 128).map(|()| Self(s))
    }

    /// Parses a request id; the empty string means "none".
    pub fn parse_optional(field: &str, s: String) -> Result<Option<Self>, DomainError> {
        if s.is_empty() {
            Ok(None)
        } else {
            Self::parse(field, s).map(Some)
        }
    }
}

/// FNV-1a over a byte sequence: a 64-bit hash that is stable across processes, builds
/// and replicas (unlike `DefaultHasher`), for anything replicas must agree on.
pub fn stable_hash(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// The 64-bit key of the advisory lock that serializes writers of one (namespace, key).
/// `space` separates lease keys, entity ids and dedup keys that happen to be equal.
pub fn lock_key(ns: &Namespace, space: u8, key: &str) -> i64 {
    let parts = ns.as_str().bytes().chain([0, space, 0]).chain(key.bytes());
    stable_hash(parts) as i64
}

/// Lock spaces for [`lock_key`].
pub mod lock_space {
    /// A lease key.
    pub const LEASE: u8 = b'l';
    /// An entity id.
    pub const ENTITY: u8 = b'e';
    /// A (kind, dedup key) pair.
    pub const DEDUP: u8 = b'd';
    /// A machine kind.
    pub const MACHINE: u8 = b'm';
    /// A request id (creates with neither id nor dedup key).
    pub const REQUEST: u8 = b'r';
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespace_rules() {
        assert!(Namespace::parse("namespace", "team-a.prod_1".into()).is_ok());
        for bad in ["", "-a", "A", "a b", &"a".repeat(64)] {
            let err = Namespace::parse("namespace", bad.into()).unwrap_err();
            assert!(
                matches!(err, DomainError::InvalidArgument { ref field, .. } if field == "namespace"),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn key_limits_name_the_field() {
        assert!(LeaseKey::parse("key", "x".repeat(256)).is_ok());
        let err = LeaseKey::parse("key", "x".repeat(257)).unwrap_err();
        assert_eq!(err.to_string(), "key: must be at most 256 bytes, got 257");
        assert!(LeaseKey::parse("key", "a\nb".into()).is_err());
    }

    #[test]
    fn identifiers() {
        assert!(Name::parse("kind", "review_run".into()).is_ok());
        assert!(Name::parse("kind", "Review".into()).is_err());
        assert!(Name::parse("kind", "9x".into()).is_err());
        assert!(EntityId::parse("id", "run:42.a-b_c".into()).is_ok());
        assert!(EntityId::parse("id", "a/b".into()).is_err());
    }

    #[test]
    fn lock_keys_are_stable_and_spaced() {
        let ns = Namespace::parse("n", "a".into()).unwrap();
        // Pinned: replicas of different builds must agree on the lock of a key. The
        // expected values come from the published FNV-1a vector and an independent
        // computation, not from this code.
        assert_eq!(stable_hash(*b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(lock_key(&ns, lock_space::LEASE, "k"), 5_837_079_618_165_278_457);
        assert_ne!(
            lock_key(&ns, lock_space::LEASE, "k"),
            lock_key(&ns, lock_space::ENTITY, "k")
        );
        let other = Namespace::parse("n", "b".into()).unwrap();
        assert_ne!(
            lock_key(&ns, lock_space::LEASE, "k"),
            lock_key(&other, lock_space::LEASE, "k")
        );
    }
}
