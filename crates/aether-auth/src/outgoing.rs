//! [`AttachToken`]: the client half of service-to-service authentication.

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// A tonic interceptor that sends `authorization: Bearer <token>` on every call that does not
/// carry one already; without a token it changes nothing.
#[derive(Clone, Debug, Default)]
pub struct AttachToken {
    header: Option<MetadataValue<Ascii>>,
}

impl AttachToken {
    /// Attaches nothing.
    pub fn none() -> Self {
        Self::default()
    }

    /// Attaches `token`; Err when it cannot be sent in a header.
    pub fn new(token: Option<&str>) -> Result<Self, String> {
        let header = match token {
            Some(token) => Some(
                format!("Bearer {token}")
                    .parse()
                    .map_err(|_| "the service token must be printable ASCII".to_string())?,
            ),
            None => None,
        };
        Ok(Self { header })
    }
}

impl Interceptor for AttachToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            if !request.metadata().contains_key("authorization") {
                request
                    .metadata_mut()
                    .insert("authorization", header.clone());
            }
        }
        Ok(request)
    }
}
