//! `--print-capabilities`: the JSON object of the vhost-user spec's back-end
//! program conventions, e.g. `{"type": "block", "features": ["read-only"]}`.

/// What a back end prints for `--print-capabilities`.
#[derive(Debug, Clone)]
pub struct Capabilities {
    /// The spec's device type name: "block", "net", "rng", ...
    pub device_type: &'static str,
    /// The spec's feature names for that type, plus any of our own.
    pub features: Vec<&'static str>,
}

impl Capabilities {
    pub fn to_json(&self) -> String {
        serde_json::json!({
            "type": self.device_type,
            "features": self.features,
            "sandbox": crate::sandbox::capabilities_note(),
        })
        .to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_has_type_and_features() {
        let c = Capabilities {
            device_type: "block",
            features: vec!["blk-file", "read-only"],
        };
        let v: serde_json::Value = serde_json::from_str(&c.to_json()).unwrap();
        assert_eq!(v["type"], "block");
        assert_eq!(v["features"][1], "read-only");
    }
}
