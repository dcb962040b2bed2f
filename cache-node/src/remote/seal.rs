//! Sealing of values stored in a remote tier: whoever can write to the tier must not be able to plant
//! an answer, and with encryption on, whoever can read it must not be able to read the rows.
//!
//! A sealed value is `version (1 byte) | expiry (8 bytes, Unix ms) | body`. Version 1's body is an
//! HMAC-SHA256 tag (first 16 bytes) followed by the response; version 2's is a 12-byte nonce and the
//! response under ChaCha20-Poly1305. Either way the stored key and the expiry are authenticated with
//! the response, so a value copied under another key, or given a longer life, does not open.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use ring::aead::{self, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

const MAC: u8 = 1;
const SEALED: u8 = 2;
const HEADER: usize = 9;
const TAG: usize = 16;
const NONCE: usize = 12;

/// Why a stored value was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Its MAC or AEAD tag does not match: written without the secret, or altered.
    Forged,
    /// Its expiry has passed (the tier kept it longer than asked).
    Expired,
}

/// Seals and opens values under one secret.
pub struct Seal {
    mac: hmac::Key,
    cipher: Option<LessSafeKey>,
    random: SystemRandom,
    /// Names the secret without revealing it (see [`Seal::fleet`]).
    fleet: u64,
}

impl Seal {
    /// A seal under `secret` (a random one when `None`: only this process can then open what it
    /// stored), encrypting when `encrypt` is set.
    pub fn new(secret: Option<&str>, encrypt: bool) -> Seal {
        let random = SystemRandom::new();
        let secret: Vec<u8> = match secret {
            Some(s) => s.as_bytes().to_vec(),
            None => {
                let mut bytes = [0u8; 32];
                random.fill(&mut bytes).expect("the system's random source");
                bytes.to_vec()
            }
        };
        // Separate keys for the two uses, derived from the one secret.
        let derive = |label: &[u8]| {
            let key = hmac::Key::new(hmac::HMAC_SHA256, &secret);
            hmac::sign(&key, label)
        };
        let mac = hmac::Key::new(hmac::HMAC_SHA256, derive(b"veneer mac").as_ref());
        let cipher = encrypt.then(|| {
            let key = derive(b"veneer encryption");
            LessSafeKey::new(
                UnboundKey::new(&CHACHA20_POLY1305, &key.as_ref()[..32]).expect("a 32-byte key"),
            )
        });
        let fleet = u64::from_be_bytes(
            derive(b"veneer fleet").as_ref()[..8]
                .try_into()
                .expect("8 bytes"),
        );
        Seal {
            mac,
            cipher,
            random,
            fleet,
        }
    }

    /// A name of the secret, derived from it (HMAC) and telling nothing of it: proxies sharing a
    /// secret share a namespace, and proxies with different secrets (or none) never meet.
    pub fn fleet(&self) -> u64 {
        self.fleet
    }

    /// `response` sealed for storing under `key`, to expire after `ttl`.
    pub fn seal(&self, key: &[u8], response: &[u8], ttl: Duration) -> Vec<u8> {
        let expiry = now_ms().saturating_add(ttl.as_millis().try_into().unwrap_or(u64::MAX));
        let mut out = Vec::with_capacity(HEADER + NONCE + response.len() + TAG);
        match &self.cipher {
            None => {
                out.push(MAC);
                out.extend_from_slice(&expiry.to_be_bytes());
                let tag = self.tag(key, &out[..HEADER], response);
                out.extend_from_slice(&tag);
                out.extend_from_slice(response);
            }
            Some(cipher) => {
                out.push(SEALED);
                out.extend_from_slice(&expiry.to_be_bytes());
                let mut nonce = [0u8; NONCE];
                self.random
                    .fill(&mut nonce)
                    .expect("the system's random source");
                out.extend_from_slice(&nonce);
                let mut body = response.to_vec();
                let aad = [key, &out[..HEADER]].concat();
                cipher
                    .seal_in_place_append_tag(
                        Nonce::assume_unique_for_key(nonce),
                        aead::Aad::from(aad),
                        &mut body,
                    )
                    .expect("sealing fits in memory");
                out.extend_from_slice(&body);
            }
        }
        out
    }

    /// The response in `value`, stored under `key`, and how long it has left to live.
    pub fn open(&self, key: &[u8], value: &[u8]) -> Result<(Bytes, Duration), Rejected> {
        if value.len() < HEADER + TAG {
            return Err(Rejected::Forged);
        }
        let (header, body) = value.split_at(HEADER);
        let response = match (header[0], &self.cipher) {
            (MAC, None) => {
                let (tag, response) = body.split_at(TAG);
                if !same(tag, &self.tag(key, header, response)) {
                    return Err(Rejected::Forged);
                }
                Bytes::copy_from_slice(response)
            }
            (SEALED, Some(cipher)) if body.len() >= NONCE + TAG => {
                let (nonce, sealed) = body.split_at(NONCE);
                let nonce =
                    Nonce::try_assume_unique_for_key(nonce).map_err(|_| Rejected::Forged)?;
                let mut sealed = sealed.to_vec();
                let aad = [key, header].concat();
                let opened = cipher
                    .open_in_place(nonce, aead::Aad::from(aad), &mut sealed)
                    .map_err(|_| Rejected::Forged)?;
                Bytes::copy_from_slice(opened)
            }
            // A value of the other mode is not trusted either: a proxy configured to encrypt never
            // accepts a plain one.
            _ => return Err(Rejected::Forged),
        };
        let expiry = u64::from_be_bytes(header[1..HEADER].try_into().expect("8 bytes"));
        let left = expiry.saturating_sub(now_ms());
        if left == 0 {
            return Err(Rejected::Expired);
        }
        Ok((response, Duration::from_millis(left)))
    }

    fn tag(&self, key: &[u8], header: &[u8], response: &[u8]) -> [u8; TAG] {
        let mut context = hmac::Context::with_key(&self.mac);
        context.update(&(key.len() as u64).to_be_bytes());
        context.update(key);
        context.update(header);
        context.update(response);
        let mut tag = [0u8; TAG];
        tag.copy_from_slice(&context.sign().as_ref()[..TAG]);
        tag
    }
}

/// Equality in time that does not depend on where the slices differ.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn a_sealed_value_opens_under_its_key_only() {
        for encrypt in [false, true] {
            let seal = Seal::new(Some("a fleet secret of ours"), encrypt);
            let value = seal.seal(b"k1", b"rows", HOUR);
            let (rows, left) = seal.open(b"k1", &value).expect("opens");
            assert_eq!(&rows[..], b"rows");
            assert!(left > HOUR - Duration::from_secs(5));
            assert_eq!(seal.open(b"k2", &value), Err(Rejected::Forged));
            assert_eq!(
                encrypt,
                !value.windows(4).any(|w| w == b"rows"),
                "encrypted values hide the rows, plain ones carry them"
            );
        }
    }

    #[test]
    fn a_value_written_without_the_secret_or_altered_is_forged() {
        let ours = Seal::new(Some("a fleet secret of ours"), false);
        let theirs = Seal::new(Some("someone else's secret"), false);
        let planted = theirs.seal(b"k", b"rows", HOUR);
        assert_eq!(ours.open(b"k", &planted), Err(Rejected::Forged));
        let mut altered = ours.seal(b"k", b"rows", HOUR);
        *altered.last_mut().unwrap() ^= 1;
        assert_eq!(ours.open(b"k", &altered), Err(Rejected::Forged));
        let mut longer = ours.seal(b"k", b"rows", HOUR);
        longer[1] ^= 1; // the expiry, moved far ahead
        assert_eq!(ours.open(b"k", &longer), Err(Rejected::Forged));
        assert_eq!(ours.open(b"k", b"junk"), Err(Rejected::Forged));
        let encrypting = Seal::new(Some("a fleet secret of ours"), true);
        let plain = ours.seal(b"k", b"rows", HOUR);
        assert_eq!(encrypting.open(b"k", &plain), Err(Rejected::Forged));
    }

    #[test]
    fn an_expired_value_is_refused() {
        let seal = Seal::new(None, false);
        let value = seal.seal(b"k", b"rows", Duration::ZERO);
        assert_eq!(seal.open(b"k", &value), Err(Rejected::Expired));
    }
}
