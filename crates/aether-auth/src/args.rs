//! The authentication flags every `aetherd` service takes.

use std::path::PathBuf;

/// Authentication flags (see the crate docs).
#[derive(Clone, Debug, Default, clap::Args)]
pub struct AuthArgs {
    /// Token file: one `TOKEN PRINCIPAL [GROUP,GROUP...]` per line; `#` starts a comment.
    #[arg(long, env = "AETHER_AUTH_TOKEN_FILE", global = true)]
    pub auth_token_file: Option<PathBuf>,
    /// File holding the shared secret of HS256-signed JWTs (claims: sub, groups, exp).
    #[arg(long, env = "AETHER_AUTH_JWT_HS256_SECRET_FILE", global = true)]
    pub auth_jwt_hs256_secret_file: Option<PathBuf>,
    /// PEM file with the RSA public key of RS256-signed JWTs (claims: sub, groups, exp).
    #[arg(long, env = "AETHER_AUTH_JWT_RS256_PUBLIC_KEY", global = true)]
    pub auth_jwt_rs256_public_key: Option<PathBuf>,
    /// Let callers without a token in, as principal "anonymous" (a bad token is still
    /// refused). Cluster services refuse to start with no auth source unless this is given;
    /// `dev` enables it by default.
    #[arg(long, env = "AETHER_ALLOW_ANONYMOUS", global = true)]
    pub allow_anonymous: bool,
    /// File holding the bearer token this process sends on its own calls to other services
    /// (coordinator → store and bus). Map it to a principal in group `aether-services` in the
    /// receiving services' token file (or issue it as a JWT with that group).
    #[arg(long, env = "AETHER_SERVICE_TOKEN_FILE", global = true)]
    pub service_token_file: Option<PathBuf>,
    /// The service token itself (instead of --service-token-file).
    #[arg(
        long,
        env = "AETHER_SERVICE_TOKEN",
        global = true,
        hide_env_values = true,
        conflicts_with = "service_token_file"
    )]
    pub service_token: Option<String>,
}

impl AuthArgs {
    /// Whether any authentication source is configured.
    pub fn has_source(&self) -> bool {
        self.auth_token_file.is_some()
            || self.auth_jwt_hs256_secret_file.is_some()
            || self.auth_jwt_rs256_public_key.is_some()
    }

    /// The service token, read from its file or taken as given.
    pub fn service_token(&self) -> Result<Option<String>, crate::AuthError> {
        if let Some(token) = &self.service_token {
            return Ok(Some(token.trim().to_string()));
        }
        match &self.service_token_file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| crate::AuthError::Read {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
                let token = text.trim().to_string();
                if token.is_empty() {
                    return Err(crate::AuthError::Invalid {
                        path: path.clone(),
                        reason: "the service token file is empty".into(),
                    });
                }
                Ok(Some(token))
            }
            None => Ok(None),
        }
    }
}
