//! Bearer JWT verification: HS256 with a secret from the environment or a
//! file, RS256/ES256 with public keys from a JWKS document in the bundle;
//! `exp` (required), `nbf`, `iss` and `aud` checked with a small leeway.

use std::sync::OnceLock;

use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};

/// Where an HS256 secret comes from; read on first use, never logged.
#[derive(Debug, Clone)]
pub enum SecretSource {
    /// An environment variable.
    Env(String),
    /// A file (trailing whitespace trimmed).
    File(String),
}

/// A configured verifier.
pub struct JwtVerifier {
    issuer: Option<String>,
    audience: Option<String>,
    claim: String,
    leeway: u64,
    secret: Option<SecretSource>,
    hs_key: OnceLock<Option<DecodingKey>>,
    keys: Vec<(Option<String>, Algorithm, DecodingKey)>,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("claim", &self.claim)
            .field("leeway", &self.leeway)
            // Where the secret lives (a variable or file name), never its value.
            .field("secret_from", &self.secret)
            .field("public_keys", &self.keys.len())
            .finish_non_exhaustive()
    }
}

/// Why a token was refused (shown to the caller in generic terms only).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Expired.
    #[error("the token has expired")]
    Expired,
    /// Not valid yet.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// Wrong audience.
    #[error("the token is not meant for this API")]
    WrongAudience,
    /// Wrong issuer.
    #[error("the token's issuer is not trusted")]
    WrongIssuer,
    /// Signature or format.
    #[error("the token is invalid")]
    Invalid,
    /// The consumer claim is missing.
    #[error("the token does not name a consumer")]
    NoConsumerClaim,
}

impl JwtVerifier {
    /// Build a verifier; `jwks` is the JWKS document's JSON text.
    pub fn new(
        issuer: Option<String>,
        audience: Option<String>,
        claim: String,
        leeway: u64,
        secret: Option<SecretSource>,
        jwks: Option<&serde_json::Value>,
    ) -> Result<Self, String> {
        let mut keys = Vec::new();
        if let Some(doc) = jwks {
            let set: JwkSet = serde_json::from_value(doc.clone())
                .map_err(|e| format!("not a JWKS document: {e}"))?;
            for (i, jwk) in set.keys.iter().enumerate() {
                let alg = match &jwk.algorithm {
                    AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                        Algorithm::ES256
                    }
                    _ => {
                        return Err(format!(
                            "/keys/{i}: only RSA (RS256) and P-256 (ES256) keys are supported"
                        ))
                    }
                };
                let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("/keys/{i}: {e}"))?;
                keys.push((jwk.common.key_id.clone(), alg, key));
            }
        }
        if secret.is_none() && keys.is_empty() {
            return Err(
                "a JWT configuration needs hs256_secret_env, hs256_secret_file or jwks".into(),
            );
        }
        Ok(Self {
            issuer,
            audience,
            claim,
            leeway,
            secret,
            hs_key: OnceLock::new(),
            keys,
        })
    }

    fn hs256_key(&self) -> Option<&DecodingKey> {
        self.hs_key
            .get_or_init(|| {
                let secret = match self.secret.as_ref()? {
                    SecretSource::Env(name) => std::env::var(name).ok(),
                    SecretSource::File(path) => std::fs::read_to_string(path).ok().map(|s| s.trim_end().to_string()),
                };
                match secret {
                    Some(s) if !s.is_empty() => Some(DecodingKey::from_secret(s.as_bytes())),
                    _ => {
                        tracing::error!(source = ?self.secret, "the HS256 secret is not available; HS256 tokens are refused");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Verify `token`; returns the consumer claim's value.
    pub fn verify(&self, token: &str) -> Result<String, JwtError> {
        self.verify_claims(token)?
            .get(&self.claim)
            .and_then(|c| c.as_str())
            .map(str::to_string)
            .ok_or(JwtError::NoConsumerClaim)
    }

    /// Verify `token`; returns all its claims.
    pub fn verify_claims(&self, token: &str) -> Result<serde_json::Value, JwtError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| JwtError::Invalid)?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256_key().ok_or(JwtError::Invalid)?,
            alg @ (Algorithm::RS256 | Algorithm::ES256) => self
                .keys
                .iter()
                .find(|(kid, a, _)| {
                    *a == alg && (header.kid.is_none() || kid.is_none() || *kid == header.kid)
                })
                .map(|(_, _, k)| k)
                .ok_or(JwtError::Invalid)?,
            _ => return Err(JwtError::Invalid),
        };
        let mut v = Validation::new(header.alg);
        v.leeway = self.leeway;
        v.validate_nbf = true;
        v.set_required_spec_claims(&["exp"]);
        match &self.audience {
            Some(aud) => v.set_audience(&[aud]),
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            v.set_issuer(&[iss]);
        }
        let data = jsonwebtoken::decode::<serde_json::Value>(token, key, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::ExpiredSignature => JwtError::Expired,
                ErrorKind::ImmatureSignature => JwtError::NotYetValid,
                ErrorKind::InvalidAudience => JwtError::WrongAudience,
                ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
                _ => JwtError::Invalid,
            }
        })?;
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    fn hs(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap()
    }

    fn verifier() -> JwtVerifier {
        let path = std::env::temp_dir().join(format!("gatehouse-jwt-test-{}", std::process::id()));
        std::fs::write(&path, "s3cret\n").unwrap();
        let source = SecretSource::File(path.display().to_string());
        JwtVerifier::new(
            Some("https://idp.corp.example".into()),
            Some("orders".into()),
            "sub".into(),
            0,
            Some(source),
            None,
        )
        .unwrap()
    }

    #[test]
    fn hs256_tokens_are_checked_for_signature_time_issuer_and_audience() {
        let v = verifier();
        let ok = json!({ "sub": "erp", "exp": now() + 60, "iss": "https://idp.corp.example", "aud": "orders" });
        assert_eq!(v.verify(&hs(ok.clone())), Ok("erp".to_string()));
        let mut c = ok.clone();
        c["exp"] = json!(now() - 120);
        assert_eq!(v.verify(&hs(c)), Err(JwtError::Expired));
        let mut c = ok.clone();
        c["nbf"] = json!(now() + 120);
        assert_eq!(v.verify(&hs(c)), Err(JwtError::NotYetValid));
        let mut c = ok.clone();
        c["aud"] = json!("hr");
        assert_eq!(v.verify(&hs(c)), Err(JwtError::WrongAudience));
        let mut c = ok.clone();
        c["iss"] = json!("https://evil.example");
        assert_eq!(v.verify(&hs(c)), Err(JwtError::WrongIssuer));
        let forged = encode(
            &Header::new(Algorithm::HS256),
            &ok,
            &EncodingKey::from_secret(b"guess"),
        )
        .unwrap();
        assert_eq!(v.verify(&forged), Err(JwtError::Invalid));
        let mut c = ok;
        c.as_object_mut().unwrap().remove("exp");
        assert_eq!(v.verify(&hs(c)), Err(JwtError::Invalid), "exp is required");
        assert_eq!(v.verify("not.a.jwt"), Err(JwtError::Invalid));
    }
}
