//! Two jobs: compiles Strait's own management API (`proto/strait/control/v1/mesh.proto`) with `protox`
//! (pure Rust, no `protoc` needed) and `tonic-prost-build`; and extracts the complete Envoy
//! `FileDescriptorSet` shipped inside the `envoy-types` package, strips the source comments (3.3 MB ->
//! ~0.6 MB) and writes it to `OUT_DIR`, so the proxy can read Envoy's YAML and JSON config into the
//! real protobuf types at run time.

use prost::Message;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=proto");
    let api = protox::compile(["strait/control/v1/mesh.proto", "strait/ca/v1/ca.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("{e:?}"));
    tonic_prost_build::configure().compile_fds(api).expect("generating the management API");

    println!("cargo:rerun-if-changed=Cargo.toml");
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    // Offline first (no network during a build); a fresh machine that has only fetched what this
    // build needs lacks other workspace members' packages, which `cargo metadata` resolves too, so it
    // then runs again allowed to download them.
    let metadata = |extra: &[&str]| {
        cargo_metadata::MetadataCommand::new()
            .manifest_path(manifest_dir.join("Cargo.toml"))
            .other_options(extra.iter().map(|s| s.to_string()).collect::<Vec<_>>())
            .exec()
    };
    let metadata = metadata(&["--offline"])
        .or_else(|_| metadata(&[]))
        .expect("cargo metadata (needed to find the envoy-types package)");
    let envoy_types = metadata
        .packages
        .iter()
        .filter(|p| p.name.as_str() == "envoy-types")
        .max_by_key(|p| p.version.clone())
        .expect("envoy-types is a dependency of xds-proto");
    let package_dir = envoy_types.manifest_path.parent().expect("envoy-types manifest has a parent directory");
    let bin_path = package_dir.join("src/generated/types.bin");
    println!("cargo:rerun-if-changed={bin_path}");
    let bytes = std::fs::read(&bin_path).unwrap_or_else(|e| panic!("reading {bin_path}: {e}"));
    let mut set =
        prost_types::FileDescriptorSet::decode(bytes.as_slice()).unwrap_or_else(|e| panic!("decoding {bin_path}: {e}"));
    for file in &mut set.file {
        file.source_code_info = None;
    }
    add_typed_structs(&mut set);
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("envoy_descriptors.bin");
    std::fs::write(&out, set.encode_to_vec()).unwrap_or_else(|e| panic!("writing {}: {e}", out.display()));
}

/// Adds `xds.type.v3.TypedStruct` and `udpa.type.v1.TypedStruct` (`type_url` 1, `value` 2, a
/// `google.protobuf.Struct`) where the set lacks them: envoy-types' set references them but does
/// not define them, and a config may carry one in an `Any` (custom extension settings, such as
/// Strait's peak-EWMA balancer). Built from their wire shape, not copied from a .proto file.
fn add_typed_structs(set: &mut prost_types::FileDescriptorSet) {
    use prost_types::field_descriptor_proto::{Label, Type};
    use prost_types::{DescriptorProto, FieldDescriptorProto, FileDescriptorProto};
    for (file, package) in
        [("xds/type/v3/typed_struct.proto", "xds.type.v3"), ("udpa/type/v1/typed_struct.proto", "udpa.type.v1")]
    {
        let defined =
            set.file.iter().any(|f| f.package() == package && f.message_type.iter().any(|m| m.name() == "TypedStruct"));
        if defined || set.file.iter().any(|f| f.name() == file) {
            continue;
        }
        let field = |name: &str, number: i32, kind: Type, type_name: Option<&str>| FieldDescriptorProto {
            name: Some(name.into()),
            number: Some(number),
            label: Some(Label::Optional as i32),
            r#type: Some(kind as i32),
            type_name: type_name.map(Into::into),
            json_name: Some(name.replace("_u", "U")),
            ..Default::default()
        };
        set.file.push(FileDescriptorProto {
            name: Some(file.into()),
            package: Some(package.into()),
            dependency: vec!["google/protobuf/struct.proto".into()],
            message_type: vec![DescriptorProto {
                name: Some("TypedStruct".into()),
                field: vec![
                    field("type_url", 1, Type::String, None),
                    field("value", 2, Type::Message, Some(".google.protobuf.Struct")),
                ],
                ..Default::default()
            }],
            syntax: Some("proto3".into()),
            ..Default::default()
        });
    }
}
