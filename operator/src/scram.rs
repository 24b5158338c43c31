//! SCRAM-SHA-256 password verifiers (RFC 5802 / RFC 7677), computed here so
//! that `CREATE ROLE ... PASSWORD` carries only the verifier: the plain
//! password never travels to the server or lands in its statement log.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::{Digest, Sha256};

/// PostgreSQL's default iteration count.
const ITERATIONS: u32 = 4096;

/// The verifier string PostgreSQL stores in `pg_authid.rolpassword`.
pub fn verifier(password: &str) -> String {
    let mut salt = [0u8; 16];
    rand::rng().fill_bytes(&mut salt);
    verifier_with_salt(password, &salt, ITERATIONS)
}

/// Whether `stored` (a verifier from `pg_authid`) was made from `password`.
/// Compared in constant time.
pub fn matches(password: &str, stored: &str) -> bool {
    use subtle::ConstantTimeEq;
    let Some((iterations, salt)) = parse(stored) else {
        return false;
    };
    let expected = verifier_with_salt(password, &salt, iterations);
    expected.as_bytes().ct_eq(stored.as_bytes()).into()
}

fn parse(stored: &str) -> Option<(u32, Vec<u8>)> {
    let rest = stored.strip_prefix("SCRAM-SHA-256$")?;
    let (params, _keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    Some((iterations.parse().ok()?, STANDARD.decode(salt).ok()?))
}

fn verifier_with_salt(password: &str, salt: &[u8], iterations: u32) -> String {
    let mut salted = [0u8; 32];
    pbkdf2::pbkdf2_hmac::<Sha256>(password.as_bytes(), salt, iterations, &mut salted);
    let client_key = hmac(&salted, b"Client Key");
    let stored_key = Sha256::digest(client_key);
    let server_key = hmac(&salted, b"Server Key");
    format!(
        "SCRAM-SHA-256${iterations}:{}${}:{}",
        STANDARD.encode(salt),
        STANDARD.encode(stored_key),
        STANDARD.encode(server_key)
    )
}

fn hmac(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(msg);
    mac.finalize().into_bytes().into()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Expected value computed independently with Python's hashlib/hmac.
    /// (The integration tests also log in with a password set this way.)
    #[test]
    fn verifier_matches_an_independent_computation() {
        let v = verifier_with_salt("pencil", b"0123456789abcdef", 4096);
        assert_eq!(
            v,
            "SCRAM-SHA-256$4096:MDEyMzQ1Njc4OWFiY2RlZg==$nQpbZ77WudtqufPwikHXGRt6g2QJ4zns8bZLw273DRM=:jn2amWP1q1h+jgjy0YTO14S6/F02SV7taipOeB7ef20="
        );
        assert_ne!(
            verifier("pencil"),
            verifier("pencil"),
            "salt must be random"
        );
    }

    #[test]
    fn matches_recomputes_with_the_stored_salt() {
        let stored = verifier("s3cret");
        assert!(matches("s3cret", &stored));
        assert!(!matches("s3cret!", &stored));
        assert!(!matches("s3cret", "md5abcdef"));
    }
}
