//! Bearer token → [`Principal`]: a token file and signed JWTs (HS256, RS256).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use tonic::Status;

use crate::{AuthArgs, Principal};

/// Longest principal or group name accepted from a token file or a JWT.
const MAX_NAME_BYTES: usize = 256;
/// Most groups one principal may carry.
const MAX_GROUPS: usize = 256;
/// Longest authorization header looked at (JWTs with many groups fit).
const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Why authentication could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read {}: {error}", path.display())]
    Read { path: PathBuf, error: String },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
    #[error("no authentication source is configured: pass --auth-token-file, --auth-jwt-hs256-secret-file or --auth-jwt-rs256-public-key, or --allow-anonymous to let anyone in as \"anonymous\"")]
    NoSource,
}

/// JWT claims we read.
#[derive(Debug, serde::Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    groups: Vec<String>,
}

/// Decides who sent a request (see the crate docs).
pub struct Authenticator {
    tokens: HashMap<String, Principal>,
    hs256: Option<DecodingKey>,
    rs256: Option<DecodingKey>,
    anonymous: bool,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("tokens", &self.tokens.len())
            .field("hs256", &self.hs256.is_some())
            .field("rs256", &self.rs256.is_some())
            .field("anonymous", &self.anonymous)
            .finish()
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && name.bytes().all(|b| b.is_ascii_graphic())
}

fn read(path: &Path) -> Result<Vec<u8>, AuthError> {
    std::fs::read(path).map_err(|e| AuthError::Read {
        path: path.to_path_buf(),
        error: e.to_string(),
    })
}

/// Parses a token file: `TOKEN PRINCIPAL [GROUP,GROUP...]` per line, `#` comments.
pub fn parse_token_file(path: &Path, text: &str) -> Result<HashMap<String, Principal>, AuthError> {
    let mut tokens = HashMap::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let invalid = |reason: String| AuthError::Invalid {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", index + 1),
        };
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (token, name, groups) = match fields.as_slice() {
            [token, name] => (*token, *name, ""),
            [token, name, groups] => (*token, *name, *groups),
            _ => {
                return Err(invalid(
                    "expected `TOKEN PRINCIPAL [GROUP,GROUP...]`".into(),
                ))
            }
        };
        if !valid_name(name) {
            return Err(invalid(format!("principal {name:?} is malformed")));
        }
        let groups: Vec<String> = groups
            .split(',')
            .filter(|g| !g.is_empty())
            .map(str::to_string)
            .collect();
        if let Some(bad) = groups.iter().find(|g| !valid_name(g)) {
            return Err(invalid(format!("group {bad:?} is malformed")));
        }
        let principal = Principal {
            name: name.to_string(),
            groups,
        };
        if tokens.insert(token.to_string(), principal).is_some() {
            return Err(invalid("the token appears twice".into()));
        }
    }
    Ok(tokens)
}

impl Authenticator {
    /// Reads every configured source. With none, anonymous access must be enabled
    /// ([`AuthError::NoSource`] otherwise).
    pub fn from_args(args: &AuthArgs) -> Result<Self, AuthError> {
        let mut this = Authenticator {
            tokens: HashMap::new(),
            hs256: None,
            rs256: None,
            anonymous: args.allow_anonymous,
        };
        if let Some(path) = &args.auth_token_file {
            let bytes = read(path)?;
            let text = String::from_utf8(bytes).map_err(|_| AuthError::Invalid {
                path: path.clone(),
                reason: "not UTF-8".into(),
            })?;
            this.tokens = parse_token_file(path, &text)?;
        }
        if let Some(path) = &args.auth_jwt_hs256_secret_file {
            let secret = read(path)?;
            let secret = secret.trim_ascii();
            if secret.len() < 16 {
                return Err(AuthError::Invalid {
                    path: path.clone(),
                    reason: "an HS256 secret must be at least 16 bytes".into(),
                });
            }
            this.hs256 = Some(DecodingKey::from_secret(secret));
        }
        if let Some(path) = &args.auth_jwt_rs256_public_key {
            let pem = read(path)?;
            let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| AuthError::Invalid {
                path: path.clone(),
                reason: format!("not an RSA public key in PEM: {e}"),
            })?;
            this.rs256 = Some(key);
        }
        if !this.has_source() && !this.anonymous {
            return Err(AuthError::NoSource);
        }
        Ok(this)
    }

    /// Accepts only the tokens given (tests and embedding).
    pub fn with_tokens(tokens: HashMap<String, Principal>, anonymous: bool) -> Self {
        Authenticator {
            tokens,
            hs256: None,
            rs256: None,
            anonymous,
        }
    }

    /// Also accepts `token` as `principal` (the in-process service token of `dev`).
    pub fn add_token(&mut self, token: String, principal: Principal) {
        self.tokens.insert(token, principal);
    }

    /// Whether a token file or JWT key is configured.
    pub fn has_source(&self) -> bool {
        !self.tokens.is_empty() || self.hs256.is_some() || self.rs256.is_some()
    }

    pub fn allows_anonymous(&self) -> bool {
        self.anonymous
    }

    fn what_to_send(&self) -> String {
        let mut kinds = Vec::new();
        if !self.tokens.is_empty() {
            kinds.push("a token from the server's token file");
        }
        if self.hs256.is_some() || self.rs256.is_some() {
            kinds.push("a signed JWT (HS256 or RS256 with claims sub, groups, exp)");
        }
        format!(
            "send `authorization: Bearer <token>` with {}",
            kinds.join(" or ")
        )
    }

    /// The principal of a request with these headers.
    pub fn authenticate(&self, headers: &http::HeaderMap) -> Result<Principal, Status> {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            if self.anonymous {
                return Ok(Principal::anonymous());
            }
            return Err(Status::unauthenticated(format!(
                "this AetherFS server requires authentication: {}",
                self.what_to_send()
            )));
        };
        let token = value
            .to_str()
            .ok()
            .filter(|v| v.len() <= MAX_HEADER_BYTES)
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "the authorization header is malformed: {}",
                    self.what_to_send()
                ))
            })?;
        if let Some(principal) = self.tokens.get(token) {
            return Ok(principal.clone());
        }
        if token.matches('.').count() == 2 {
            let mut last = None;
            for (key, algorithm) in [
                (&self.hs256, Algorithm::HS256),
                (&self.rs256, Algorithm::RS256),
            ] {
                let Some(key) = key else { continue };
                let mut validation = Validation::new(algorithm);
                validation.set_required_spec_claims(&["exp", "sub"]);
                validation.validate_aud = false;
                validation.leeway = 30;
                match jsonwebtoken::decode::<Claims>(token, key, &validation) {
                    Ok(data) => return principal_of(data.claims),
                    Err(e) => last = Some(e),
                }
            }
            if let Some(error) = last {
                return Err(Status::unauthenticated(format!(
                    "the bearer token is not a valid JWT for this server ({error}): {}",
                    self.what_to_send()
                )));
            }
        }
        Err(Status::unauthenticated(format!(
            "the bearer token is not recognised: {}",
            self.what_to_send()
        )))
    }
}

fn principal_of(claims: Claims) -> Result<Principal, Status> {
    if !valid_name(&claims.sub) {
        return Err(Status::unauthenticated(
            "the JWT's sub claim must be 1 to 256 printable ASCII characters without spaces",
        ));
    }
    if claims.groups.len() > MAX_GROUPS || !claims.groups.iter().all(|g| valid_name(g)) {
        return Err(Status::unauthenticated(format!(
            "the JWT's groups claim must list at most {MAX_GROUPS} names of 1 to 256 printable ASCII characters"
        )));
    }
    Ok(Principal {
        name: claims.sub,
        groups: claims.groups,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = value {
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    fn hs256(secret: &[u8], sub: &str, exp: u64) -> String {
        #[derive(serde::Serialize)]
        struct C<'a> {
            sub: &'a str,
            groups: Vec<&'a str>,
            exp: u64,
        }
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(Algorithm::HS256),
            &C {
                sub,
                groups: vec!["dev"],
                exp,
            },
            &jsonwebtoken::EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    #[test]
    fn token_file_lines() {
        let text = "# comment\n\nt1 alice\nt2 bob dev,ops\n";
        let tokens = parse_token_file(Path::new("f"), text).unwrap();
        assert_eq!(tokens["t1"], Principal::user("alice"));
        assert_eq!(tokens["t2"].groups, vec!["dev", "ops"]);
        assert!(parse_token_file(Path::new("f"), "t1\n").is_err());
        assert!(parse_token_file(Path::new("f"), "t1 a b c\n").is_err());
        assert!(parse_token_file(Path::new("f"), "t1 a\nt1 b\n").is_err());
    }

    #[test]
    fn no_token_bad_token_and_anonymous() {
        let tokens = parse_token_file(Path::new("f"), "t1 alice\n").unwrap();
        let strict = Authenticator::with_tokens(tokens.clone(), false);
        let open = Authenticator::with_tokens(tokens, true);
        let e = strict.authenticate(&headers(None)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
        assert!(e.message().contains("authorization: Bearer"), "{e:?}");
        assert_eq!(
            open.authenticate(&headers(None)).unwrap(),
            Principal::anonymous()
        );
        assert_eq!(
            strict.authenticate(&headers(Some("Bearer t1"))).unwrap(),
            Principal::user("alice")
        );
        for bad in ["Bearer nope", "Basic t1", "Bearer ", "t1"] {
            let e = open.authenticate(&headers(Some(bad))).unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated, "{bad}");
        }
    }

    #[test]
    fn hs256_jwts() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "0123456789abcdef-secret\n").unwrap();
        let auth = Authenticator::from_args(&AuthArgs {
            auth_jwt_hs256_secret_file: Some(secret),
            ..AuthArgs::default()
        })
        .unwrap();
        let good = hs256(b"0123456789abcdef-secret", "carol", now() + 600);
        let p = auth
            .authenticate(&headers(Some(&format!("Bearer {good}"))))
            .unwrap();
        assert_eq!(p.name, "carol");
        assert_eq!(p.groups, vec!["dev"]);
        let expired = hs256(b"0123456789abcdef-secret", "carol", now() - 3600);
        let wrong_key = hs256(b"another-secret-0123456789", "carol", now() + 600);
        for token in [expired, wrong_key, "a.b.c".to_string()] {
            let e = auth
                .authenticate(&headers(Some(&format!("Bearer {token}"))))
                .unwrap_err();
            assert_eq!(e.code(), tonic::Code::Unauthenticated);
        }
    }

    #[test]
    fn no_source_needs_anonymous() {
        assert!(matches!(
            Authenticator::from_args(&AuthArgs::default()),
            Err(AuthError::NoSource)
        ));
        let open = Authenticator::from_args(&AuthArgs {
            allow_anonymous: true,
            ..AuthArgs::default()
        })
        .unwrap();
        assert!(!open.has_source());
    }
}
