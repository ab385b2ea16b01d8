//! The CRD of `ReplicatedVolume` as YAML, for the Helm chart
//! (`deploy/helm/warren/files/replicatedvolumes-crd.yaml`, included by its template): the
//! chart's copy is generated from the Rust types, and a test fails when they differ.
//!
//! The YAML is written here rather than by a YAML library (Warren has none): block style,
//! every string a JSON-quoted scalar (which YAML reads as the same string), so no value
//! can be mistaken for another type.

use kube::CustomResourceExt;
use serde_json::Value;

use super::resource::ReplicatedVolume;

/// The CRD, as the chart's file holds it.
pub fn crd_yaml() -> String {
    let crd = serde_json::to_value(ReplicatedVolume::crd()).unwrap_or(Value::Null);
    let mut out = String::from(
        "# GENERATED from kube/src/replicated_view/resource.rs: do not edit. To write it again:\n\
         #   WARREN_WRITE_CRD=1 cargo test -p warren-kube replicated_view::tests::the_chart_ships_the_crd_the_code_defines\n",
    );
    write_value(&mut out, &crd, 0);
    out
}

#[cfg(test)]
pub(super) fn write_for_test(out: &mut String, value: &Value) {
    write_value(out, value, 0);
}

fn write_value(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                out.push_str(&" ".repeat(indent));
                out.push_str(&key_text(key));
                out.push(':');
                write_child(out, v, indent);
            }
        }
        Value::Array(items) => {
            for v in items {
                out.push_str(&" ".repeat(indent));
                out.push('-');
                match v {
                    Value::Object(map) if !map.is_empty() => {
                        // The first key on the dash's line, the others under it.
                        let mut nested = String::new();
                        write_value(&mut nested, v, indent + 2);
                        out.push(' ');
                        out.push_str(nested.trim_start());
                    }
                    _ => write_child(out, v, indent),
                }
            }
        }
        scalar => {
            out.push_str(&" ".repeat(indent));
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

/// What follows `key:` or `-`: a scalar (or empty collection) on the same line, a
/// collection on the lines below.
fn write_child(out: &mut String, value: &Value, indent: usize) {
    match value {
        Value::Object(map) if !map.is_empty() => {
            out.push('\n');
            write_value(out, value, indent + 2);
        }
        Value::Array(items) if !items.is_empty() => {
            out.push('\n');
            write_value(out, value, indent + 2);
        }
        Value::Object(_) => out.push_str(" {}\n"),
        Value::Array(_) => out.push_str(" []\n"),
        scalar => {
            out.push(' ');
            out.push_str(&scalar_text(scalar));
            out.push('\n');
        }
    }
}

fn scalar_text(value: &Value) -> String {
    // JSON's quoting of strings, and its numbers, booleans and null, are YAML's too.
    value.to_string()
}

fn key_text(key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '$'))
        && key.starts_with(|c: char| c.is_ascii_alphabetic())
        // YAML 1.1 readers take these for booleans or null.
        && !["y", "n", "yes", "no", "true", "false", "on", "off", "null"]
            .contains(&key.to_ascii_lowercase().as_str());
    if plain {
        key.to_string()
    } else {
        Value::String(key.to_string()).to_string()
    }
}
