//! Pure rules: names, leases, machines, the tape, and the commands that ask for them. No
//! I/O; every decision a backend makes inside its transaction is a function here, so both
//! backends share one predicate.

/// The conversions of a `u64` counter newtype (`Version`, `Seq`, `FencingToken`): read
/// with [`get`](Self::get), serialized as a number, and deserialized only through the
/// type's own `parse(field, u64)`, so stored outcomes obey the rules requests do.
macro_rules! counter {
    ($name:ident, $field:literal) => {
        impl $name {
            /// The number.
            pub fn get(self) -> u64 {
                self.0
            }
        }

        impl TryFrom<u64> for $name {
            type Error = $crate::domain::DomainError;

            fn try_from(v: u64) -> Result<Self, Self::Error> {
                Self::parse($field, v)
            }
        }

        impl From<$name> for u64 {
            fn from(v: $name) -> u64 {
                v.0
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                self.0.fmt(f)
            }
        }
    };
}

pub mod batch;
pub mod command;
pub mod entity;
pub mod error;
pub mod fingerprint;
pub mod lease;
pub mod machine;
pub mod names;
pub mod outcome;
pub mod tape;
pub mod time;

pub use error::DomainError;
