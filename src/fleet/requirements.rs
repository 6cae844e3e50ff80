//! What an artifact needs of a host (kernel bounds, BTF), their
//! validation, and the check against a host's facts.

use serde::{Deserialize, Serialize};

use super::resolve::HostFacts;
use super::version::KernelVersion;

/// The `requirements` of an artifact: all optional.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({"min_kernel": "5.8", "max_kernel": "6.99", "btf": "required"}))]
pub struct Requirements {
    /// The oldest kernel, `N(.N){0,2}`: the host's release, missing
    /// components 0, must be at least this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_kernel: Option<String>,
    /// The newest kernel, `N(.N){0,2}`: the host's release truncated to
    /// this many components must be at most this (`6.99` admits 6.99.x).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_kernel: Option<String>,
    /// Whether the host must have kernel BTF.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub btf: Option<BtfRequirement>,
}

/// Whether an artifact needs kernel BTF (`/sys/kernel/btf/vmlinux`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum BtfRequirement {
    Required,
    Optional,
}

fn bound(field: &str, value: &Option<String>) -> Result<Option<KernelVersion>, String> {
    match value {
        None => Ok(None),
        Some(s) => KernelVersion::parse_bound(s).map(Some).ok_or_else(|| {
            format!(
                "{field} {:?} is not a kernel version N(.N){{0,2}}",
                s.chars().take(64).collect::<String>()
            )
        }),
    }
}

impl Requirements {
    /// Both bounds are `N(.N){0,2}`, and some kernel meets both.
    pub fn validate(&self) -> Result<(), String> {
        let min = bound("min_kernel", &self.min_kernel)?;
        let max = bound("max_kernel", &self.max_kernel)?;
        if let (Some(min), Some(max)) = (&min, &max) {
            if !min.at_most(max) {
                return Err(format!("min_kernel {min} is above max_kernel {max}"));
            }
        }
        Ok(())
    }

    /// Whether nothing is required.
    pub fn is_empty(&self) -> bool {
        self.min_kernel.is_none() && self.max_kernel.is_none() && self.btf.is_none()
    }

    /// The first requirement this host does not meet, as the reason the
    /// artifact is excluded; `None` when all are met. A host without BTF
    /// facts (`btf` unknown) does not meet `btf: required`.
    pub fn unmet(&self, host: &HostFacts) -> Option<String> {
        if self.min_kernel.is_some() || self.max_kernel.is_some() {
            let min = match bound("min_kernel", &self.min_kernel) {
                Ok(b) => b,
                Err(e) => return Some(e),
            };
            let max = match bound("max_kernel", &self.max_kernel) {
                Ok(b) => b,
                Err(e) => return Some(e),
            };
            let Some(kernel) = KernelVersion::of_release(&host.kernel_release) else {
                return Some(format!(
                    "kernel release {:?} does not parse",
                    host.kernel_release.chars().take(64).collect::<String>()
                ));
            };
            if let (Some(min), Some(text)) = (&min, &self.min_kernel) {
                if !kernel.at_least(min) {
                    return Some(format!("kernel {kernel} < min_kernel {text}"));
                }
            }
            if let (Some(max), Some(text)) = (&max, &self.max_kernel) {
                if !kernel.at_most(max) {
                    return Some(format!("kernel {kernel} > max_kernel {text}"));
                }
            }
        }
        if self.btf == Some(BtfRequirement::Required) && host.btf != Some(true) {
            return Some("btf required".into());
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(min: Option<&str>, max: Option<&str>, btf: Option<BtfRequirement>) -> Requirements {
        Requirements {
            min_kernel: min.map(str::to_string),
            max_kernel: max.map(str::to_string),
            btf,
        }
    }

    fn host(release: &str, btf: Option<bool>) -> HostFacts {
        HostFacts {
            architecture: "x86_64".into(),
            kernel_release: release.into(),
            btf,
        }
    }

    #[test]
    fn serde_shape() {
        let r: Requirements =
            serde_json::from_str(r#"{"min_kernel":"5.8","max_kernel":"6.99","btf":"required"}"#)
                .unwrap();
        assert_eq!(
            r,
            req(Some("5.8"), Some("6.99"), Some(BtfRequirement::Required))
        );
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"min_kernel":"5.8","max_kernel":"6.99","btf":"required"}"#
        );
        let empty: Requirements = serde_json::from_str("{}").unwrap();
        assert!(empty.is_empty());
        assert_eq!(serde_json::to_string(&empty).unwrap(), "{}");
        assert!(serde_json::from_str::<Requirements>(r#"{"btf":"optional"}"#).is_ok());
        for bad in [
            r#"{"min_kernel":"5.8","extra":1}"#,
            r#"{"btf":"maybe"}"#,
            r#"{"btf":"Required"}"#,
            r#"{"min_kernel":5}"#,
        ] {
            assert!(serde_json::from_str::<Requirements>(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn validation() {
        assert!(req(None, None, None).validate().is_ok());
        assert!(req(Some("5.8"), Some("6.99"), None).validate().is_ok());
        assert!(req(Some("6.99.5"), Some("6.99"), None).validate().is_ok());
        assert!(req(Some("5.8"), Some("5.8"), None).validate().is_ok());
        assert!(req(Some("6.0"), Some("5.99"), None).validate().is_err());
        assert!(req(Some("5.8.1"), Some("5.8.0"), None).validate().is_err());
        assert!(req(Some("5.x"), None, None).validate().is_err());
        assert!(req(None, Some("5.8.0.1"), None).validate().is_err());
        assert!(req(None, Some(""), None).validate().is_err());
    }

    #[test]
    fn unmet_reasons() {
        let cases = [
            (
                req(Some("5.8"), None, None),
                host("5.4.0-42", Some(true)),
                Some("kernel 5.4.0 < min_kernel 5.8"),
            ),
            (req(Some("5.8"), None, None), host("5.8.0", None), None),
            (
                req(None, Some("6.99"), None),
                host("7.0.0", None),
                Some("kernel 7.0.0 > max_kernel 6.99"),
            ),
            (
                req(None, Some("6.99"), None),
                host("6.99.3-arch1", None),
                None,
            ),
            (
                req(None, None, Some(BtfRequirement::Required)),
                host("6.1.0", Some(false)),
                Some("btf required"),
            ),
            (
                req(None, None, Some(BtfRequirement::Required)),
                host("6.1.0", None),
                Some("btf required"),
            ),
            (
                req(None, None, Some(BtfRequirement::Required)),
                host("6.1.0", Some(true)),
                None,
            ),
            (
                req(None, None, Some(BtfRequirement::Optional)),
                host("6.1.0", None),
                None,
            ),
            (
                req(None, None, Some(BtfRequirement::Required)),
                host("weird", Some(true)),
                None,
            ),
            (
                req(Some("5.8"), None, None),
                host("weird", Some(true)),
                Some("kernel release \"weird\" does not parse"),
            ),
            (
                req(Some("5.8"), None, Some(BtfRequirement::Required)),
                host("5.4.0", Some(false)),
                Some("kernel 5.4.0 < min_kernel 5.8"),
            ),
            (
                req(Some("bad"), None, None),
                host("5.4.0", None),
                Some("min_kernel \"bad\" is not a kernel version N(.N){0,2}"),
            ),
        ];
        for (r, h, want) in cases {
            assert_eq!(r.unmet(&h).as_deref(), want, "{r:?} on {h:?}");
        }
    }
}
