//! Bootstrap tokens: which workload identity a caller of the certificate service may ask for. The
//! local default is a file of `<token> <namespace> <service-account>` lines (Istio checks a
//! Kubernetes service-account token instead; the question answered is the same).

use std::collections::HashMap;
use std::path::Path;

/// The identities tokens stand for.
#[derive(Debug, Default, Clone)]
pub struct Tokens(HashMap<String, (String, String)>);

impl Tokens {
    /// Reads a tokens file; `#` starts a comment. Every problem names its line.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Tokens::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut out = HashMap::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or_default().trim();
            if line.is_empty() {
                continue;
            }
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [token, namespace, service_account] = fields[..] else {
                return Err(format!("line {}: expected `<token> <namespace> <service-account>`", n + 1));
            };
            if token.len() < 16 {
                return Err(format!("line {}: a token needs at least 16 characters", n + 1));
            }
            out.insert(token.to_string(), (namespace.to_string(), service_account.to_string()));
        }
        Ok(Tokens(out))
    }

    /// The (namespace, service account) a token stands for.
    pub fn identity(&self, token: &str) -> Option<(&str, &str)> {
        self.0.get(token).map(|(ns, sa)| (ns.as_str(), sa.as_str()))
    }
}

/// The bearer token a gRPC request carries (`authorization: Bearer <token>`), if any.
pub fn bearer(metadata: &tonic::metadata::MetadataMap) -> Option<&str> {
    let value = metadata.get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").map(str::trim)
}
