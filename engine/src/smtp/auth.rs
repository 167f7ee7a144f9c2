//! SMTP AUTH (RFC 4954) credentials: `<smtp-user>` entries with plain or hashed passwords
//! (argon2, SHA-512-crypt), checked for PLAIN and LOGIN (RFC 4616, the LOGIN draft) and
//! CRAM-MD5 (RFC 2195, which needs the plain password on the server). Comparisons run in
//! constant time; passwords are never logged.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sluice_config::{Config, SenderRestrictions};
use std::collections::HashMap;
use std::sync::Mutex;

enum Secret {
    Plain(String),
    /// A PHC string (`$argon2id$...`) or SHA-512-crypt (`$6$...`).
    Hash(String),
}

pub struct User {
    secret: Secret,
    /// May relay once authenticated (its `<source {NAME}>`'s `always-allow-relaying`, or yes
    /// when that source is not defined).
    pub relay_allowed: bool,
    /// The user's restrictions, else its source's.
    pub restrictions: SenderRestrictions,
    /// The named source the session takes (`{auth}` by default).
    pub source: String,
}

/// Every `<smtp-user>`, shared by the shards.
#[derive(Default)]
pub struct Users {
    users: HashMap<String, User>,
    /// Hashes are slow on purpose (argon2: tens of milliseconds) and a shard must not stall
    /// on every connection: a password that verified once is remembered as a salted SHA-256
    /// for later sessions. Touched once per AUTH, never per message.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    salt: [u8; 16],
}

/// Equal in time independent of where the inputs differ.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl Users {
    /// The `<smtp-user>`s; `salt_seed` (the caller's: unpredictable per process) salts the
    /// remembered password hashes.
    pub fn from_config(config: &Config, salt_seed: u128) -> Users {
        let salt = salt_seed.to_le_bytes();
        let users = config
            .smtp_users
            .values()
            .map(|u| {
                let policy = config.user_policy(&u.source);
                let password = u.password.trim_matches('"').to_string();
                let secret = if password.starts_with("$argon2") || password.starts_with("$6$") {
                    Secret::Hash(password)
                } else {
                    Secret::Plain(password)
                };
                let restrictions = if u.restrictions == SenderRestrictions::default() {
                    policy.restrictions.clone()
                } else {
                    u.restrictions.clone()
                };
                let user = User {
                    secret,
                    relay_allowed: policy.always_allow_relaying,
                    restrictions,
                    source: u.source.clone(),
                };
                (u.name.clone(), user)
            })
            .collect();
        Users { users, verified: Mutex::new(HashMap::new()), salt }
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.get(name)
    }

    fn remembered(&self, password: &[u8]) -> [u8; 32] {
        use sha2::Digest;
        let mut h = sha2::Sha256::new();
        h.update(self.salt);
        h.update(password);
        h.finalize().into()
    }

    /// PLAIN and LOGIN: the user if the password is right.
    pub fn check(&self, name: &str, password: &[u8]) -> Option<&User> {
        let user = self.users.get(name)?;
        let ok = match &user.secret {
            Secret::Plain(p) => ct_eq(p.as_bytes(), password),
            Secret::Hash(hash) => {
                let fast = self.remembered(password);
                let known = self.verified.lock().expect("not poisoned").get(name).copied();
                if known.is_some_and(|k| ct_eq(&k, &fast)) {
                    true
                } else if verify_hash(hash, password) {
                    self.verified.lock().expect("not poisoned").insert(name.to_string(), fast);
                    true
                } else {
                    false
                }
            }
        };
        ok.then_some(user)
    }

    /// CRAM-MD5: `response` is `user hex(HMAC-MD5(password, challenge))`.
    pub fn check_cram(&self, challenge: &[u8], response: &[u8]) -> Option<(&str, &User)> {
        let response = std::str::from_utf8(response).ok()?;
        let (name, digest) = response.rsplit_once(' ')?;
        let (key, user) = self.users.get_key_value(name)?;
        let Secret::Plain(password) = &user.secret else { return None }; // a hash cannot answer
        let expected = cram_digest(password, challenge);
        ct_eq(expected.as_bytes(), digest.to_ascii_lowercase().as_bytes()).then_some((key.as_str(), user))
    }
}

/// CRAM-MD5's digest (RFC 2195): hex(HMAC-MD5(password, challenge)), the server's check and
/// the client's answer.
pub fn cram_digest(password: &str, challenge: &[u8]) -> String {
    let mut mac = Hmac::<md5::Md5>::new_from_slice(password.as_bytes()).expect("HMAC takes any key length");
    mac.update(challenge);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

fn verify_hash(hash: &str, password: &[u8]) -> bool {
    if hash.starts_with("$6$") {
        let Ok(password) = std::str::from_utf8(password) else { return false };
        return sha_crypt::sha512_check(password, hash).is_ok();
    }
    use argon2::password_hash::{PasswordHash, PasswordVerifier};
    PasswordHash::new(hash).is_ok_and(|h| argon2::Argon2::default().verify_password(password, &h).is_ok())
}

pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    B64.decode(s.trim()).ok()
}

pub fn b64_encode(b: &[u8]) -> String {
    B64.encode(b)
}

/// PLAIN's message (RFC 4616): `authzid NUL authcid NUL passwd`; returns (authcid, passwd).
/// An authorization identity other than the user itself is refused (no proxy auth).
pub fn parse_plain(msg: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut parts = msg.splitn(3, |&b| b == 0);
    let (authz, authc, pass) = (parts.next()?, parts.next()?, parts.next()?);
    if !authz.is_empty() && authz != authc {
        return None;
    }
    Some((String::from_utf8(authc.to_vec()).ok()?, pass.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn users(extra: &str) -> Users {
        let text = format!("smtp-listener 127.0.0.1:25\n<smtp-user alice>\n password s3cret\n</smtp-user>\n{extra}");
        Users::from_config(&sluice_config::load("t.conf", &text, &mut |_| Err("no".into())).unwrap(), 7)
    }

    #[test]
    fn plain_passwords_and_the_plain_message() {
        let u = users("");
        assert!(u.check("alice", b"s3cret").is_some());
        assert!(u.check("alice", b"s3cre").is_none());
        assert!(u.check("bob", b"s3cret").is_none());
        assert_eq!(parse_plain(b"\0alice\0s3cret"), Some(("alice".into(), b"s3cret".to_vec())));
        assert_eq!(parse_plain(b"alice\0alice\0pw"), Some(("alice".into(), b"pw".to_vec())));
        assert_eq!(parse_plain(b"bob\0alice\0pw"), None, "no acting as someone else");
        assert_eq!(parse_plain(b"alice"), None);
    }

    #[test]
    fn cram_md5_rfc2195_example() {
        // RFC 2195 §2: tim / tanstaaftanstaaf.
        let u = users("<smtp-user tim>\n password tanstaaftanstaaf\n</smtp-user>\n");
        let challenge = b"<1896.697170952@postoffice.reston.mci.net>";
        let (name, _) = u.check_cram(challenge, b"tim b913a602c7eda7a495b4e6e7334d3890").unwrap();
        assert_eq!(name, "tim");
        assert!(u.check_cram(challenge, b"tim b913a602c7eda7a495b4e6e7334d3891").is_none());
    }

    #[test]
    fn hashed_passwords_verify_and_are_remembered() {
        // SHA-512-crypt of "pw" (openssl passwd -6 -salt abcdefgh pw).
        let sha = "$6$abcdefgh$KQeXafAQAaOoKTevphVU215RvJdgzyfASRasIOuh12hO8u0r1bGW92ZnTmC9IjsiQ8VPiTXBiZF49dFL1U4wX/";
        let argon = argon2_hash("pw");
        let u = users(&format!(
            "<smtp-user s>\n password {sha}\n</smtp-user>\n<smtp-user a>\n password {argon}\n</smtp-user>\n"
        ));
        for name in ["s", "a"] {
            assert!(u.check(name, b"pw").is_some(), "{name}");
            assert!(u.check(name, b"pw").is_some(), "{name} again, from memory");
            assert!(u.check(name, b"px").is_none(), "{name}");
            assert!(u.check_cram(b"<1@x>", format!("{name} 00").as_bytes()).is_none());
        }
    }

    fn argon2_hash(pw: &str) -> String {
        use argon2::password_hash::{PasswordHasher, SaltString};
        let salt = SaltString::encode_b64(b"0123456789abcdef").unwrap();
        argon2::Argon2::default().hash_password(pw.as_bytes(), &salt).unwrap().to_string()
    }
}
