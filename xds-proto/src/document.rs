//! Reads a document in Envoy's config format (YAML or JSON, proto3 JSON mapping with `@type` in `Any`)
//! into a prost message, through `prost-reflect` and the descriptor set that ships with `envoy-types`.

use prost_reflect::{DescriptorPool, DeserializeOptions, DynamicMessage};
use std::sync::Mutex;

static DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/envoy_descriptors.bin"));

static POOL: Mutex<Option<DescriptorPool>> = Mutex::new(None);

/// The pool of every Envoy message type (a cheap handle), built on first use (about 60 ms) and kept
/// until [`release_descriptor_pool`].
pub fn descriptor_pool() -> DescriptorPool {
    let mut pool = POOL.lock().unwrap_or_else(|e| e.into_inner());
    pool.get_or_insert_with(|| {
        DescriptorPool::decode(DESCRIPTORS).expect("the envoy-types descriptor set embedded at build time decodes")
    })
    .clone()
}

/// Drops the cached pool (several MB) once config has been read; the next parse builds it again.
pub fn release_descriptor_pool() {
    POOL.lock().unwrap_or_else(|e| e.into_inner()).take();
}

/// The syntax a config document is written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Yaml,
    Json,
}

impl Format {
    /// Picks the format from a file name, as Envoy does (`.json` is JSON, anything else YAML).
    pub fn from_path(path: &std::path::Path) -> Self {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Format::Json,
            _ => Format::Yaml,
        }
    }
}

/// A document that could not be read into the requested message type.
#[derive(Debug, thiserror::Error)]
pub enum DocumentError {
    /// The message type is not in the descriptor pool (a bug in the caller, not in the document).
    #[error("unknown message type {0}")]
    UnknownType(String),
    /// The document is not valid for the message type: `path` is the field path in the document.
    #[error("{}{message}", path_prefix(path))]
    Invalid { path: String, message: String },
    /// The decoded message did not re-encode as the typed message.
    #[error("internal decode error: {0}")]
    Decode(#[from] prost::DecodeError),
}

fn path_prefix(path: &str) -> String {
    if path.is_empty() || path == "." { String::new() } else { format!("{path}: ") }
}

/// Parses `text` as a `T` (an Envoy protobuf message), reading the proto3 JSON mapping from YAML or JSON.
/// Unknown field names are errors, as they are for Envoy's bootstrap.
pub fn parse_document<T>(text: &str, format: Format) -> Result<T, DocumentError>
where
    T: prost::Message + prost::Name + Default,
{
    let dynamic = parse_dynamic(text, format, &T::full_name())?;
    decode_message(&dynamic)
}

/// Parses `text` into a dynamic message of the named type.
pub fn parse_dynamic(text: &str, format: Format, full_name: &str) -> Result<DynamicMessage, DocumentError> {
    let desc = descriptor_pool()
        .get_message_by_name(full_name)
        .ok_or_else(|| DocumentError::UnknownType(full_name.to_string()))?;
    let options = DeserializeOptions::new().deny_unknown_fields(true);
    let mut track = serde_path_to_error::Track::new();
    let result = match format {
        Format::Yaml => {
            let de = yaml_serde::Deserializer::from_str(text);
            let de = serde_path_to_error::Deserializer::new(de, &mut track);
            DynamicMessage::deserialize_with_options(desc, de, &options).map_err(|e| e.to_string())
        }
        Format::Json => {
            let mut de = serde_json::Deserializer::from_str(text);
            let result = {
                let de = serde_path_to_error::Deserializer::new(&mut de, &mut track);
                DynamicMessage::deserialize_with_options(desc, de, &options).map_err(|e| e.to_string())
            };
            result.and_then(|m| de.end().map(|()| m).map_err(|e| e.to_string()))
        }
    };
    result.map_err(|message| {
        let path = track.path().to_string();
        // yaml_serde already puts the path in front of its messages; don't say it twice.
        let message = message.strip_prefix(&format!("{path}: ")).map(str::to_string).unwrap_or(message);
        DocumentError::Invalid { path, message }
    })
}

/// Re-encodes a dynamic message as its typed prost message.
pub fn decode_message<T>(dynamic: &DynamicMessage) -> Result<T, DocumentError>
where
    T: prost::Message + Default,
{
    use prost::Message;
    Ok(T::decode(dynamic.encode_to_vec().as_slice())?)
}

/// Decodes a typed message into a dynamic one, to walk its set fields by descriptor.
pub fn to_dynamic<T>(message: &T) -> Result<DynamicMessage, DocumentError>
where
    T: prost::Message + prost::Name,
{
    let desc = descriptor_pool()
        .get_message_by_name(&T::full_name())
        .ok_or_else(|| DocumentError::UnknownType(T::full_name()))?;
    Ok(DynamicMessage::decode(desc, message.encode_to_vec().as_slice())?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Bootstrap;

    #[test]
    fn reads_a_yaml_bootstrap_with_typed_config() {
        let yaml = r#"
static_resources:
  listeners:
  - name: l
    address: { socket_address: { address: 127.0.0.1, port_value: 10000 } }
    filter_chains:
    - filters:
      - name: envoy.filters.network.tcp_proxy
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy
          stat_prefix: tcp
          cluster: backend
  clusters:
  - name: backend
    connect_timeout: 0.25s
    lb_policy: LEAST_REQUEST
"#;
        let b: Bootstrap = parse_document(yaml, Format::Yaml).unwrap();
        let sr = b.static_resources.unwrap();
        assert_eq!(sr.listeners[0].name, "l");
        let any = sr.listeners[0].filter_chains[0].filters[0].config_type.clone().unwrap();
        let envoy_types::pb::envoy::config::listener::v3::filter::ConfigType::TypedConfig(any) = any else {
            panic!("typed config expected")
        };
        assert_eq!(any.type_url, crate::type_url::TCP_PROXY);
        assert_eq!(sr.clusters[0].connect_timeout.unwrap().nanos, 250_000_000);
        assert_eq!(sr.clusters[0].lb_policy, 1);
    }

    #[test]
    fn names_the_path_and_line_of_an_unknown_field() {
        let yaml = "static_resources:\n  clusters:\n  - name: a\n    lb_polcy: ROUND_ROBIN\n";
        let err = parse_document::<Bootstrap>(yaml, Format::Yaml).unwrap_err().to_string();
        assert!(err.contains("static_resources.clusters[0]"), "{err}");
        assert!(err.contains("lb_polcy"), "{err}");
        assert!(err.contains("line 3"), "{err}");
        assert_eq!(err.matches("clusters[0]").count(), 1, "{err}");
    }

    #[test]
    fn reads_json_too() {
        let json = r#"{"admin":{"address":{"socket_address":{"address":"127.0.0.1","port_value":9901}}}}"#;
        let b: Bootstrap = parse_document(json, Format::Json).unwrap();
        assert!(b.admin.is_some());
        let err = parse_document::<Bootstrap>(r#"{"admin": 3}"#, Format::Json).unwrap_err();
        assert!(err.to_string().contains("admin"), "{err}");
    }
}
