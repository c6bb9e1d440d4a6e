//! The opaque bearer-token format.
//!
//! A token is `writ_` followed by the unpadded base64url encoding of
//! `version (1) | key id (4, big-endian) | entropy (32) | tag (16)`, where the tag is a
//! keyed blake3 MAC of the first 37 bytes under the server key named by the key id.
//! The prefix lets secret scanners find leaked tokens; the tag lets the server reject a
//! forged or mistyped token before it touches storage; the key id lets keys rotate
//! (the ring's first key signs, every key in it verifies).
//!
//! Storage never sees the token: only [`SecretHash`] (blake3 of the decoded bytes) and
//! the public [`TokenId`] derived from that hash.

use crate::ids::TokenId;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use std::fmt;
use subtle::ConstantTimeEq;

/// The printable prefix of every Writ token.
pub const TOKEN_PREFIX: &str = "writ_";
const VERSION: u8 = 1;
const BODY_LEN: usize = 1 + 4 + 32;
const TAG_LEN: usize = 16;
const RAW_LEN: usize = BODY_LEN + TAG_LEN;
/// Exact length of a well-formed token string.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + (RAW_LEN * 4).div_ceil(3);
const MAC_CONTEXT: &[u8] = b"writ token tag v1\0";
const HASH_CONTEXT: &str = "writ 2026-11 token secret hash v1";
const ID_CONTEXT: &str = "writ 2026-11 public token id v1";
/// Bytes of a capability link: key id, payload, tag.
const LINK_LEN: usize = 4 + 16 + 32;
const DERIVED_ENTROPY_CONTEXT: &str = "writ 2026-12 idempotent token entropy v1";

/// Why a presented string is not a token this server issued. Deliberately coarse: the
/// caller learns nothing about which byte was wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Wrong prefix, length, encoding or version.
    #[error("malformed token")]
    Malformed,
    /// Well-formed, but signed by no key in the ring, or the tag does not verify.
    #[error("token failed its integrity check")]
    Forged,
}

/// A server MAC key with its id. `Debug` never prints the key.
#[derive(Clone, Serialize, Deserialize)]
pub struct ServerKey {
    /// Key id carried in every token this key signs.
    pub id: u32,
    /// 256-bit blake3 key.
    pub key: [u8; 32],
}

impl fmt::Debug for ServerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerKey")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The server's keys: the first signs new tokens, all of them verify.
#[derive(Clone, Debug)]
pub struct KeyRing {
    keys: Vec<ServerKey>,
}

impl KeyRing {
    /// A ring whose first key signs. Returns `None` for an empty list or duplicate ids.
    pub fn new(keys: Vec<ServerKey>) -> Option<KeyRing> {
        let mut ids: Vec<u32> = keys.iter().map(|k| k.id).collect();
        ids.sort_unstable();
        ids.dedup();
        (!keys.is_empty() && ids.len() == keys.len()).then_some(KeyRing { keys })
    }

    /// The id of the signing key.
    pub fn signing_key_id(&self) -> u32 {
        self.keys[0].id
    }

    fn tag(key: &ServerKey, body: &[u8]) -> [u8; TAG_LEN] {
        let mut h = blake3::Hasher::new_keyed(&key.key);
        h.update(MAC_CONTEXT);
        h.update(body);
        let mut tag = [0u8; TAG_LEN];
        tag.copy_from_slice(&h.finalize().as_bytes()[..TAG_LEN]);
        tag
    }

    /// Issues a new token from 32 bytes of caller-supplied CSPRNG output.
    pub fn issue(&self, entropy: [u8; 32]) -> (TokenSecret, VerifiedToken) {
        Self::issue_with(&self.keys[0], entropy)
    }

    /// The tokens a request identified by `scope` (who asks, from where, under which
    /// idempotency key) gets: one per key of the ring, the signing key's first. The
    /// entropy is a keyed hash of the scope under a key derived from the server key, so a
    /// retry re-derives the same secret instead of anyone storing it, and nobody without
    /// the server key can compute it. The other keys' tokens let a retry find a token
    /// issued before the signing key rotated.
    pub fn issue_derived(
        &self,
        scope: &[u8],
    ) -> impl Iterator<Item = (TokenSecret, VerifiedToken)> + '_ {
        let scope = scope.to_vec();
        self.keys.iter().map(move |key| {
            let derive = blake3::derive_key(DERIVED_ENTROPY_CONTEXT, &key.key);
            let entropy = *blake3::keyed_hash(&derive, &scope).as_bytes();
            Self::issue_with(key, entropy)
        })
    }

    fn issue_with(key: &ServerKey, entropy: [u8; 32]) -> (TokenSecret, VerifiedToken) {
        let mut raw = [0u8; RAW_LEN];
        raw[0] = VERSION;
        raw[1..5].copy_from_slice(&key.id.to_be_bytes());
        raw[5..BODY_LEN].copy_from_slice(&entropy);
        let tag = Self::tag(key, &raw[..BODY_LEN]);
        raw[BODY_LEN..].copy_from_slice(&tag);
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(TOKEN_PREFIX);
        URL_SAFE_NO_PAD.encode_string(raw, &mut s);
        (TokenSecret(s), VerifiedToken::from_raw(&raw))
    }

    /// The capability links for `payload` (say, a consent request's id) under `context`,
    /// one per key of the ring, the signing key's first: base64url of the key id, the
    /// payload and a 256-bit keyed tag under a key derived from the server key for
    /// `context`. Nobody without the server key can make one, the server re-derives it
    /// instead of storing it, and [`open_link`](Self::open_link) checks it before any
    /// storage read.
    pub fn links(&self, context: &str, payload: &[u8; 16]) -> impl Iterator<Item = String> + '_ {
        let context = context.to_owned();
        let payload = *payload;
        self.keys.iter().map(move |key| {
            let mut raw = [0u8; LINK_LEN];
            raw[..4].copy_from_slice(&key.id.to_be_bytes());
            raw[4..20].copy_from_slice(&payload);
            let tag = Self::link_tag(key, &context, &raw[..20]);
            raw[20..].copy_from_slice(&tag);
            URL_SAFE_NO_PAD.encode(raw)
        })
    }

    /// The payload a link made by [`links`](Self::links) under `context` carries, if it
    /// is one (well-formed, of a key in the ring, its tag verified in constant time).
    pub fn open_link(&self, context: &str, presented: &str) -> Option<[u8; 16]> {
        if presented.len() != (LINK_LEN * 4).div_ceil(3) {
            return None;
        }
        let mut raw = [0u8; LINK_LEN];
        match URL_SAFE_NO_PAD.decode_slice(presented, &mut raw) {
            Ok(LINK_LEN) => {}
            _ => return None,
        }
        let kid = u32::from_be_bytes([raw[0], raw[1], raw[2], raw[3]]);
        let key = self.keys.iter().find(|k| k.id == kid)?;
        let expected = Self::link_tag(key, context, &raw[..20]);
        if !bool::from(expected.ct_eq(&raw[20..])) {
            return None;
        }
        let mut payload = [0u8; 16];
        payload.copy_from_slice(&raw[4..20]);
        Some(payload)
    }

    /// A keyed MAC of `input` under a key derived from the signing key for `context`:
    /// for short-lived values the server hands out and checks itself (a form's CSRF
    /// token). Compare with [`ct_eq_32`].
    pub fn mac(&self, context: &str, input: &[u8]) -> [u8; 32] {
        let derived = blake3::derive_key(context, &self.keys[0].key);
        *blake3::keyed_hash(&derived, input).as_bytes()
    }

    fn link_tag(key: &ServerKey, context: &str, body: &[u8]) -> [u8; 32] {
        let derived = blake3::derive_key(context, &key.key);
        *blake3::keyed_hash(&derived, body).as_bytes()
    }

    /// Checks a presented token's format and tag. Never touches storage; the result says
    /// which record to look up and what hash it must carry.
    pub fn verify(&self, presented: &str) -> Result<VerifiedToken, TokenError> {
        if presented.len() != TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let encoded = presented
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(TokenError::Malformed)?;
        let mut raw = [0u8; RAW_LEN];
        match URL_SAFE_NO_PAD.decode_slice(encoded, &mut raw) {
            Ok(RAW_LEN) => {}
            _ => return Err(TokenError::Malformed),
        }
        if raw[0] != VERSION {
            return Err(TokenError::Malformed);
        }
        let kid = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
        let key = self
            .keys
            .iter()
            .find(|k| k.id == kid)
            .ok_or(TokenError::Forged)?;
        let expected = Self::tag(key, &raw[..BODY_LEN]);
        if !bool::from(expected.ct_eq(&raw[BODY_LEN..])) {
            return Err(TokenError::Forged);
        }
        Ok(VerifiedToken::from_raw(&raw))
    }
}

/// A token string as handed to its holder. Returned once, at minting; `Debug` and
/// `Display` are redacted so it cannot leak through logs by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenSecret(String);

impl TokenSecret {
    /// The token string itself. Call only to hand it to its holder.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for TokenSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TokenSecret(<redacted>)")
    }
}

/// The blake3 hash of a token's bytes: what storage keeps in place of the token.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretHash(pub [u8; 32]);

impl SecretHash {
    /// Constant-time equality, for comparing a presented token with a stored record.
    pub fn ct_eq(&self, other: &SecretHash) -> bool {
        bool::from(self.0.ct_eq(&other.0))
    }
}

impl fmt::Debug for SecretHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretHash(..)")
    }
}

/// A presented token that passed the format and tag checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VerifiedToken {
    /// The public id: the storage key.
    pub token_id: TokenId,
    /// The hash the stored record must carry.
    pub secret_hash: SecretHash,
}

impl VerifiedToken {
    fn from_raw(raw: &[u8; RAW_LEN]) -> VerifiedToken {
        let hash = blake3::Hasher::new_derive_key(HASH_CONTEXT)
            .update(raw)
            .finalize();
        let secret_hash = SecretHash(*hash.as_bytes());
        let idh = blake3::Hasher::new_derive_key(ID_CONTEXT)
            .update(&secret_hash.0)
            .finalize();
        let mut id = [0u8; 16];
        id.copy_from_slice(&idh.as_bytes()[..16]);
        VerifiedToken {
            token_id: TokenId(id),
            secret_hash,
        }
    }
}

/// Constant-time equality of two 32-byte values (MACs, hashes).
pub fn ct_eq_32(a: &[u8; 32], b: &[u8; 32]) -> bool {
    bool::from(a.ct_eq(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn ring(ids: &[u32]) -> KeyRing {
        KeyRing::new(
            ids.iter()
                .map(|&id| ServerKey {
                    id,
                    key: [id as u8; 32],
                })
                .collect(),
        )
        .expect("valid ring")
    }

    #[test]
    fn issued_tokens_verify_and_carry_the_prefix() {
        let r = ring(&[1]);
        let (secret, v) = r.issue([9; 32]);
        assert!(secret.expose().starts_with(TOKEN_PREFIX));
        assert_eq!(secret.expose().len(), TOKEN_LEN);
        assert_eq!(r.verify(secret.expose()), Ok(v));
        assert_eq!(format!("{secret:?}"), "TokenSecret(<redacted>)");
    }

    #[test]
    fn every_single_character_change_is_rejected() {
        let r = ring(&[1]);
        let (secret, _) = r.issue([3; 32]);
        let s = secret.expose();
        for i in 0..s.len() {
            for c in ['A', 'b', '0', '_', '-'] {
                let mut t: Vec<char> = s.chars().collect();
                if t[i] == c {
                    continue;
                }
                t[i] = c;
                let t: String = t.into_iter().collect();
                assert!(r.verify(&t).is_err(), "accepted a change at {i}");
            }
        }
        assert_eq!(r.verify(&s[..s.len() - 1]), Err(TokenError::Malformed));
        assert_eq!(r.verify(""), Err(TokenError::Malformed));
    }

    #[test]
    fn rotation_old_keys_verify_new_key_signs() {
        let old = ring(&[1]);
        let (t_old, _) = old.issue([5; 32]);
        let rotated = ring(&[2, 1]);
        assert!(rotated.verify(t_old.expose()).is_ok());
        let (t_new, _) = rotated.issue([6; 32]);
        assert_eq!(old.verify(t_new.expose()), Err(TokenError::Forged));
        assert_eq!(rotated.signing_key_id(), 2);
        // A ring that dropped the old key no longer accepts its tokens.
        assert_eq!(ring(&[2]).verify(t_old.expose()), Err(TokenError::Forged));
    }

    #[test]
    fn a_different_key_with_the_same_id_rejects() {
        let a = ring(&[1]);
        let b = KeyRing::new(vec![ServerKey {
            id: 1,
            key: [77; 32],
        }])
        .expect("ring");
        let (t, _) = a.issue([1; 32]);
        assert_eq!(b.verify(t.expose()), Err(TokenError::Forged));
    }

    #[test]
    fn rings_reject_empty_and_duplicate_ids() {
        assert!(KeyRing::new(vec![]).is_none());
        let k = ServerKey {
            id: 4,
            key: [0; 32],
        };
        assert!(KeyRing::new(vec![k.clone(), k]).is_none());
    }

    #[test]
    fn links_verify_under_their_context_and_key_only() {
        let ring = KeyRing::new(vec![
            ServerKey {
                id: 2,
                key: [2; 32],
            },
            ServerKey {
                id: 1,
                key: [1; 32],
            },
        ])
        .unwrap();
        let links: Vec<String> = ring.links("ctx a", &[9; 16]).collect();
        assert_eq!(links.len(), 2);
        assert_ne!(links[0], links[1]);
        for l in &links {
            assert_eq!(l.len(), 70);
            assert_eq!(ring.open_link("ctx a", l), Some([9; 16]));
            assert_eq!(ring.open_link("ctx b", l), None);
        }
        let old = KeyRing::new(vec![ServerKey {
            id: 1,
            key: [1; 32],
        }])
        .unwrap();
        assert_eq!(old.open_link("ctx a", &links[1]), Some([9; 16]));
        assert_eq!(old.open_link("ctx a", &links[0]), None);
        let mut forged = links[0].clone().into_bytes();
        forged[69] = if forged[69] == b'A' { b'B' } else { b'A' };
        assert_eq!(
            ring.open_link("ctx a", std::str::from_utf8(&forged).unwrap()),
            None
        );
        assert_eq!(ring.open_link("ctx a", ""), None);
        assert_eq!(ring.open_link("ctx a", &"A".repeat(70)), None);
        assert!(ct_eq_32(&ring.mac("m", b"x"), &ring.mac("m", b"x")));
        assert!(!ct_eq_32(&ring.mac("m", b"x"), &ring.mac("n", b"x")));
    }
}
