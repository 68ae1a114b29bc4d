//! How clients reach the coordinator: its URL, the bearer token every call carries, and the CA
//! to trust for an `https://` URL. Shared by the worker daemon and the `lorasweep` CLI.
//!
//! The coordinator authenticates each call by an `authorization: Bearer <token>` header (its
//! worker token for daemons, the admin token for submit/cancel/retry); with no token configured
//! it accepts loopback clients only. The token is read once, at start, and never logged.

use std::{fmt, path::PathBuf};

use tonic::{
    Request, Status,
    metadata::{Ascii, MetadataValue},
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Certificate, Channel, ClientTlsConfig, Endpoint},
};

use crate::WorkerError;

/// Connection flags, shared by `lorasweep-worker` and `lorasweep` (global there).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ConnectArgs {
    /// File holding the bearer token sent on every call (the coordinator's worker token for a
    /// worker, its admin token for submit/cancel/retry). Alternatively set LORASWEEP_TOKEN.
    #[arg(long, global = true, env = "LORASWEEP_TOKEN_FILE")]
    pub token_file: Option<PathBuf>,
    /// The token itself (prefer the file: a flag shows in `ps`).
    #[arg(long, global = true, env = "LORASWEEP_TOKEN", hide = true, hide_env_values = true)]
    pub token: Option<String>,
    /// PEM certificate of the CA that signed the coordinator's TLS certificate; needed for an
    /// `https://` coordinator URL.
    #[arg(long, visible_alias = "ca", global = true, env = "LORASWEEP_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
}

/// Where the coordinator is and how to authenticate to it.
#[derive(Clone)]
pub struct Remote {
    /// The coordinator's URL.
    url: String,
    /// `Bearer <token>`, ready to send.
    bearer: Option<MetadataValue<Ascii>>,
    /// The CA to trust for https.
    ca: Option<Certificate>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the token itself.
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("token", &self.bearer.as_ref().map(|_| "<set>"))
            .field("tls_ca", &self.ca.is_some())
            .finish()
    }
}

impl Remote {
    /// A coordinator at `url` without token or CA (a local, open coordinator).
    pub fn plain(url: &str) -> Self {
        Self { url: url.to_string(), bearer: None, ca: None }
    }

    /// Reads the token and CA that `args` point to.
    ///
    /// # Errors
    /// [`WorkerError::Config`] naming the flag: both token sources set, an unreadable or empty
    /// token file, a token that cannot travel in a header, an unreadable CA file, or an
    /// `https://` URL without `--tls-ca`.
    pub fn new(url: &str, args: &ConnectArgs) -> Result<Self, WorkerError> {
        let bad = |m: String| WorkerError::Config(m);
        let token = match (&args.token_file, &args.token) {
            (Some(_), Some(_)) => {
                return Err(bad("both --token-file and LORASWEEP_TOKEN are set; give the token once".into()));
            }
            (Some(path), None) => Some((
                std::fs::read_to_string(path).map_err(|e| bad(format!("--token-file {}: {e}", path.display())))?,
                format!("--token-file {}", path.display()),
            )),
            (None, Some(t)) => Some((t.clone(), "LORASWEEP_TOKEN".to_string())),
            (None, None) => None,
        };
        let bearer = match token {
            None => None,
            Some((text, origin)) => {
                let text = text.trim();
                if text.is_empty() {
                    return Err(bad(format!("{origin}: the token is empty")));
                }
                let value = format!("Bearer {text}")
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| bad(format!("{origin}: the token must be printable ASCII")))?;
                Some(value)
            }
        };
        let ca = match &args.tls_ca {
            Some(path) => Some(Certificate::from_pem(
                std::fs::read(path).map_err(|e| bad(format!("--tls-ca {}: {e}", path.display())))?,
            )),
            None => None,
        };
        if url.starts_with("https://") && ca.is_none() {
            return Err(bad(format!("coordinator {url} uses TLS: give --tls-ca (or LORASWEEP_TLS_CA)")));
        }
        Ok(Self { url: url.to_string(), bearer, ca })
    }

    /// The coordinator's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The gRPC endpoint, with TLS when the URL is `https://`.
    ///
    /// # Errors
    /// [`WorkerError::Endpoint`] when the URL does not parse or TLS cannot be set up.
    pub fn endpoint(&self) -> Result<Endpoint, WorkerError> {
        let endpoint_err = |source| WorkerError::Endpoint { url: self.url.clone(), source };
        let mut endpoint = Endpoint::from_shared(self.url.clone()).map_err(endpoint_err)?;
        if let (true, Some(ca)) = (self.url.starts_with("https://"), &self.ca) {
            endpoint = endpoint.tls_config(ClientTlsConfig::new().ca_certificate(ca.clone())).map_err(endpoint_err)?;
        }
        Ok(endpoint)
    }

    /// Wraps `channel` so every call carries the token.
    pub fn authed(&self, channel: Channel) -> Authed {
        InterceptedService::new(channel, Bearer(self.bearer.clone()))
    }
}

/// A channel whose calls carry the bearer token.
pub type Authed = InterceptedService<Channel, Bearer>;

/// Adds `authorization: Bearer <token>` to each call (nothing when no token is configured).
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl fmt::Debug for Bearer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() { "Bearer(<set>)" } else { "Bearer(none)" })
    }
}

impl Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_comes_from_a_file_or_the_environment_but_not_both() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let file = dir.path().join("token");
        std::fs::write(&file, "worker-0123456789abcdef\n")?;
        let args = ConnectArgs { token_file: Some(file.clone()), ..Default::default() };
        let remote = Remote::new("http://h:1", &args)?;
        let mut bearer = Bearer(remote.bearer.clone());
        let req = bearer.call(Request::new(()))?;
        assert_eq!(
            req.metadata().get("authorization").map(|v| v.to_str().ok()),
            Some(Some("Bearer worker-0123456789abcdef"))
        );
        assert!(!format!("{remote:?}").contains("0123456789"), "Debug hides the token");

        let both = ConnectArgs { token_file: Some(file), token: Some("x".into()), tls_ca: None };
        assert!(Remote::new("http://h:1", &both).unwrap_err().to_string().contains("give the token once"));
        let empty = ConnectArgs { token: Some("  ".into()), ..Default::default() };
        assert!(Remote::new("http://h:1", &empty).unwrap_err().to_string().contains("empty"));
        let https = Remote::new("https://h:1", &ConnectArgs::default()).unwrap_err().to_string();
        assert!(https.contains("--tls-ca"), "{https}");
        let none = Bearer(None).call(Request::new(()))?;
        assert!(none.metadata().get("authorization").is_none());
        Ok(())
    }
}
