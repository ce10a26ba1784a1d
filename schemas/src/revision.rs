//! The published revisions of the Margo Management API whose document
//! shapes differ (see `docs/http-api.md`, "Document shapes"). By content the
//! order is `1.0.0` (an old working copy despite its name) → `1.0.0-rc.2` →
//! `1.0.0-rc.3` (newest, the default of what our agent sends).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A published revision of the Margo Management API, by the name of its
/// OpenAPI file (`workload-management-api-<name>.yaml`); oldest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
pub enum Revision {
    /// `workload-management-api-1.0.0.yaml`: `roles`, `resources{cpu{}}`.
    #[serde(rename = "1.0.0")]
    V1_0_0,
    /// `1.0.0-rc.2`: `apiVersion`, `kind`, `cpu` array.
    #[serde(rename = "1.0.0-rc.2")]
    Rc2,
    /// `1.0.0-rc.3` (newest): no `apiVersion`/`kind`, `cpus`, `labels`.
    #[default]
    #[serde(rename = "1.0.0-rc.3")]
    Rc3,
}

impl Revision {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::V1_0_0 => "1.0.0",
            Self::Rc2 => "1.0.0-rc.2",
            Self::Rc3 => "1.0.0-rc.3",
        }
    }
}

impl fmt::Display for Revision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Revision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "1.0.0" => Ok(Self::V1_0_0),
            "1.0.0-rc.2" => Ok(Self::Rc2),
            "1.0.0-rc.3" => Ok(Self::Rc3),
            other => Err(format!(
                "{other:?} is not a Margo API revision (1.0.0-rc.3, 1.0.0-rc.2 or 1.0.0)"
            )),
        }
    }
}
