//! The tokens file: who may call, with what role, in which namespaces. It stores only
//! SHA-256 hashes of the bearer secrets (a secret is 256 random bits, so a fast hash is
//! enough: there is nothing to guess), and is read again whenever it changes, so a new,
//! expired or revoked token takes effect without a restart.
//!
//! ```toml
//! [[token]]
//! subject = "ci-bot"
//! sha256 = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
//! role = "write"                      # read | write | admin
//! namespaces = ["prod", "team-*"]     # exact names, or prefixes ending in *
//! expires_at = "2027-06-01T00:00:00Z" # optional
//!
//! [[identity]]                        # a client certificate (mTLS) instead of a token
//! subject = "worker-1"                # its common name, or a DNS or URI name
//! role = "write"
//! namespaces = ["prod"]
//! ```

use super::{Caller, Role};
use crate::domain::error::quote;
use crate::domain::names::Namespace;
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

/// Prefix of every secret `baton token create` makes (so a leaked one is recognizable).
pub const SECRET_PREFIX: &str = "bt_";

/// A namespace a grant covers: `prod` exactly, or `team-*` (every namespace starting with
/// `team-`); `*` alone is every namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespacePattern {
    /// This namespace.
    Exact(String),
    /// Every namespace starting with this.
    Prefix(String),
}

impl NamespacePattern {
    /// True when `ns` is covered.
    pub fn matches(&self, ns: &str) -> bool {
        match self {
            NamespacePattern::Exact(n) => n == ns,
            NamespacePattern::Prefix(p) => ns.starts_with(p.as_str()),
        }
    }
}

impl std::str::FromStr for NamespacePattern {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(body) => (body, true),
            None => (s, false),
        };
        let refused = || format!("{} is neither a namespace nor a prefix ending in *", quote(s));
        if !prefix {
            return Namespace::parse("namespace", body.to_string())
                .map(|ns| NamespacePattern::Exact(ns.as_str().to_string()))
                .map_err(|_| refused());
        }
        // A prefix is the start of a namespace: a namespace once anything completes it.
        if !body.is_empty() && Namespace::parse("namespace", format!("{body}0")).is_err() {
            return Err(refused());
        }
        Ok(NamespacePattern::Prefix(body.to_string()))
    }
}

impl std::fmt::Display for NamespacePattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NamespacePattern::Exact(n) => f.write_str(n),
            NamespacePattern::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

/// The file as written.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct GrantsFile {
    /// Bearer tokens.
    #[serde(default, rename = "token", skip_serializing_if = "Vec::is_empty")]
    pub tokens: Vec<TokenEntry>,
    /// Client-certificate identities.
    #[serde(default, rename = "identity", skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<IdentityEntry>,
}

/// One bearer token.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    /// Who it is.
    pub subject: String,
    /// Lowercase hex SHA-256 of the secret.
    pub sha256: String,
    /// What it may do.
    pub role: Role,
    /// Where.
    pub namespaces: Vec<String>,
    /// When it stops working (RFC 3339), if ever.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
}

/// One client-certificate identity.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityEntry {
    /// The certificate's common name, or one of its DNS or URI names.
    pub subject: String,
    /// What it may do.
    pub role: Role,
    /// Where.
    pub namespaces: Vec<String>,
}

/// One parsed grant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Who.
    pub subject: String,
    /// What.
    pub role: Role,
    /// Where.
    pub namespaces: Vec<NamespacePattern>,
    /// Until when.
    pub expires_at: Option<SystemTime>,
}

impl Grant {
    fn caller(&self) -> Caller {
        Caller {
            subject: self.subject.clone(),
            role: self.role,
            namespaces: self.namespaces.clone(),
        }
    }
}

/// Why a presented token was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// No grant has this token.
    Unknown,
    /// Its grant expired.
    Expired,
}

/// The grants of one version of the file.
#[derive(Debug, Default)]
pub struct Grants {
    by_hash: HashMap<[u8; 32], Grant>,
    by_identity: HashMap<String, Grant>,
}

/// The SHA-256 of a secret.
pub fn hash(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// A new secret: `bt_` and 256 random bits, base64url.
pub fn new_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

fn patterns(at: &str, list: &[String]) -> Result<Vec<NamespacePattern>, String> {
    if list.is_empty() {
        return Err(format!("{at}.namespaces: must name at least one namespace (or \"*\")"));
    }
    list.iter()
        .enumerate()
        .map(|(i, s)| s.parse().map_err(|e| format!("{at}.namespaces[{i}]: {e}")))
        .collect()
}

fn subject(at: &str, s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 256 || s.chars().any(char::is_control) {
        return Err(format!("{at}.subject: 1 to 256 characters, no control characters"));
    }
    Ok(s.to_string())
}

impl Grants {
    /// Parses a tokens file; an error names the entry and field (`token[2].sha256: …`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let file: GrantsFile = toml::from_str(text).map_err(|e| e.to_string())?;
        let mut grants = Grants::default();
        for (i, t) in file.tokens.iter().enumerate() {
            let at = format!("token[{i}]");
            let digest = hex::decode(&t.sha256)
                .ok()
                .and_then(|d| <[u8; 32]>::try_from(d).ok())
                .ok_or_else(|| format!("{at}.sha256: must be 64 hex digits"))?;
            let expires_at = t
                .expires_at
                .as_deref()
                .map(|e| humantime::parse_rfc3339_weak(e).map_err(|err| format!("{at}.expires_at: {err}")))
                .transpose()?;
            let grant = Grant {
                subject: subject(&at, &t.subject)?,
                role: t.role,
                namespaces: patterns(&at, &t.namespaces)?,
                expires_at,
            };
            if grants.by_hash.insert(digest, grant).is_some() {
                return Err(format!("{at}.sha256: the same token is listed twice"));
            }
        }
        for (i, id) in file.identities.iter().enumerate() {
            let at = format!("identity[{i}]");
            let grant = Grant {
                subject: subject(&at, &id.subject)?,
                role: id.role,
                namespaces: patterns(&at, &id.namespaces)?,
                expires_at: None,
            };
            if grants.by_identity.insert(id.subject.clone(), grant).is_some() {
                return Err(format!("{at}.subject: {:?} is listed twice", id.subject));
            }
        }
        Ok(grants)
    }

    /// The caller a bearer secret stands for, at `now`.
    pub fn by_token(&self, secret: &str, now: SystemTime) -> Result<Caller, Rejected> {
        let grant = self.by_hash.get(&hash(secret)).ok_or(Rejected::Unknown)?;
        if grant.expires_at.is_some_and(|e| e <= now) {
            return Err(Rejected::Expired);
        }
        Ok(grant.caller())
    }

    /// The caller a verified client certificate stands for: the first of its names (common
    /// name, DNS and URI names) that the file lists.
    pub fn by_identity<'a>(&self, names: impl IntoIterator<Item = &'a str>) -> Option<Caller> {
        names
            .into_iter()
            .find_map(|n| self.by_identity.get(n))
            .map(Grant::caller)
    }

    /// Number of grants (tokens and identities).
    pub fn len(&self) -> usize {
        self.by_hash.len() + self.by_identity.len()
    }

    /// True when the file grants nothing.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tokens file a server uses, read again when it changes.
pub struct TokenStore {
    path: PathBuf,
    current: RwLock<Arc<Grants>>,
    /// (modified time, length) of the version read, to notice a change cheaply.
    stamp: Mutex<Option<(SystemTime, u64)>>,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

impl TokenStore {
    /// Reads the file; a missing or invalid file is an error (the server does not start).
    pub fn load(path: &Path) -> Result<Self, String> {
        let store = Self {
            path: path.to_path_buf(),
            current: RwLock::default(),
            stamp: Mutex::default(),
        };
        store.read()?;
        Ok(store)
    }

    fn read(&self) -> Result<(), String> {
        let before = stamp(&self.path);
        let text = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("cannot read tokens file {}: {e}", self.path.display()))?;
        let grants = Grants::parse(&text).map_err(|e| format!("tokens file {}: {e}", self.path.display()))?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(grants);
        *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) = before;
        Ok(())
    }

    /// The grants in force.
    pub fn grants(&self) -> Arc<Grants> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Reads the file again if it changed since it was last read: `Ok(true)` when the new
    /// version is in force. A new version that does not parse is an error, and the old one
    /// stays in force (a half-written file never locks everyone out).
    pub fn reload_if_changed(&self) -> Result<bool, String> {
        let now = stamp(&self.path);
        if now.is_some() && now == *self.stamp.lock().unwrap_or_else(|p| p.into_inner()) {
            return Ok(false);
        }
        self.read().map(|()| true)
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The lines to add to a tokens file for a new token, as `baton token create` prints them.
pub fn token_entry(
    subject: &str,
    secret: &str,
    role: Role,
    namespaces: &[String],
    expires_at: Option<String>,
) -> Result<String, String> {
    let file = GrantsFile {
        tokens: vec![TokenEntry {
            subject: subject.to_string(),
            sha256: hex::encode(hash(secret)),
            role,
            namespaces: namespaces.to_vec(),
            expires_at,
        }],
        identities: vec![],
    };
    let text = toml::to_string(&file).map_err(|e| e.to_string())?;
    // What we write must be what we read.
    Grants::parse(&text)?;
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_token_entry_round_trips_and_expires() {
        let secret = new_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() > 40);
        let text = token_entry(
            "ci",
            &secret,
            Role::Write,
            &["prod".into(), "team-*".into()],
            Some("2030-01-01T00:00:00Z".into()),
        )
        .unwrap();
        assert!(!text.contains(&secret), "only the hash is written: {text}");
        let grants = Grants::parse(&text).unwrap();
        let before = humantime::parse_rfc3339("2029-12-31T23:59:59Z").unwrap();
        let caller = grants.by_token(&secret, before).unwrap();
        assert_eq!((caller.subject.as_str(), caller.role), ("ci", Role::Write));
        assert_eq!(caller.namespaces[1], NamespacePattern::Prefix("team-".into()));
        assert_eq!(
            grants.by_token(&secret, before + Duration::from_secs(2)),
            Err(Rejected::Expired)
        );
        assert_eq!(grants.by_token("bt_nope", before), Err(Rejected::Unknown));
    }

    #[test]
    fn a_bad_file_names_the_entry() {
        for (text, wants) in [
            (
                "[[token]]\nsubject='a'\nsha256='xy'\nrole='read'\nnamespaces=['p']",
                "token[0].sha256",
            ),
            (
                "[[token]]\nsubject='a'\nsha256='00'\nrole='root'\nnamespaces=['p']",
                "unknown variant",
            ),
            (
                "[[identity]]\nsubject='w'\nrole='read'\nnamespaces=[]",
                "identity[0].namespaces",
            ),
            (
                "[[identity]]\nsubject='w'\nrole='read'\nnamespaces=['Prod']",
                "identity[0].namespaces[0]",
            ),
            ("[[tokens]]\n", "unknown field"),
        ] {
            let err = Grants::parse(text).unwrap_err();
            assert!(err.contains(wants), "{text}: {err}");
        }
        let grants = Grants::parse("[[identity]]\nsubject='worker-1'\nrole='read'\nnamespaces=['*']").unwrap();
        let caller = grants.by_identity(["CN=x", "worker-1"]).unwrap();
        assert!(caller.namespaces[0].matches("anything"));
    }
}
