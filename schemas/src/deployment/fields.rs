//! Unknown fields in an operator's ApplicationDeployment: typos such as
//! `paramters:` or `packageLocaton:` must not become a new manifest version
//! that the device then runs without its parameters (issue 12, finding 8).
//!
//! Which objects are closed follows the Margo OpenAPI drafts 1.0.0-rc.2 and
//! rc.3, the ones that say: `spec`, `spec.deploymentProfile` and each
//! `components[i]` have `additionalProperties: false` and allow only
//! `x-<name>-extensions` (a mapping) besides their own keys
//! (specification-extensions.md). There an unknown key is refused. Every
//! other object is open in the texts (the document root, `metadata`, its
//! `annotations`, a parameter, a target, and a component's `properties`,
//! `map[string][string]` on the page, read by the exec and simulated
//! runtimes for their own keys); there only a key that is a near miss of a
//! key the spec defines (`packageLocaton`, `Revision`, `targts`) is refused,
//! because it is a typo, never an extension.
//!
//! The agent does not run this check: what it receives was checked by the
//! manager that signed it, and the spec says a client MUST NOT fail on what
//! a newer manager may add.

use serde_norway::Value;

use super::DeploymentError;

/// The keys of a closed object (besides `x-<name>-extensions`), or the keys
/// the spec defines in an open one.
struct Shape {
    keys: &'static [&'static str],
    closed: bool,
}

const ROOT: Shape = Shape {
    // `id` is rc.2/rc.3's top-level deployment id.
    keys: &["apiVersion", "kind", "metadata", "spec", "id"],
    closed: false,
};
const METADATA: Shape = Shape {
    keys: &["name", "namespace", "annotations", "labels", "deviceId"],
    closed: false,
};
const ANNOTATIONS: Shape = Shape {
    keys: &["id", "applicationId"],
    closed: false,
};
const SPEC: Shape = Shape {
    // `applicationId` sits here in rc.2/rc.3 (in the annotations on the page).
    keys: &["deploymentProfile", "parameters", "applicationId"],
    closed: true,
};
const PROFILE: Shape = Shape {
    keys: &["type", "components", "deviceConstraints"],
    closed: true,
};
const COMPONENT: Shape = Shape {
    keys: &["name", "properties"],
    closed: true,
};
const PROPERTIES: Shape = Shape {
    // helm: repository, revision, timeout, wait; compose: packageLocation,
    // keyLocation, timeout, wait (rc.3 gives compose repository/revision too).
    keys: &[
        "repository",
        "revision",
        "timeout",
        "wait",
        "packageLocation",
        "keyLocation",
    ],
    closed: false,
};
const PARAMETER: Shape = Shape {
    keys: &["value", "targets"],
    closed: false,
};
const TARGET: Shape = Shape {
    keys: &["pointer", "components"],
    closed: false,
};

/// Refuses an unknown key in a closed object and a near miss of a spec key
/// in an open one. `bytes` already parsed as an ApplicationDeployment.
pub(super) fn check(bytes: &[u8]) -> Result<(), DeploymentError> {
    let doc: Value =
        serde_norway::from_slice(bytes).map_err(|e| DeploymentError::Yaml(e.to_string()))?;
    check_object(&doc, "", &ROOT)?;
    if let Some(metadata) = get(&doc, "metadata") {
        check_object(metadata, "metadata", &METADATA)?;
        if let Some(annotations) = get(metadata, "annotations") {
            check_object(annotations, "metadata.annotations", &ANNOTATIONS)?;
        }
    }
    let Some(spec) = get(&doc, "spec") else {
        return Ok(());
    };
    check_object(spec, "spec", &SPEC)?;
    if let Some(profile) = get(spec, "deploymentProfile") {
        check_object(profile, "spec.deploymentProfile", &PROFILE)?;
        if let Some(Value::Sequence(components)) = get(profile, "components") {
            for (i, component) in components.iter().enumerate() {
                let path = format!("spec.deploymentProfile.components[{i}]");
                check_object(component, &path, &COMPONENT)?;
                if let Some(properties) = get(component, "properties") {
                    check_object(properties, &format!("{path}.properties"), &PROPERTIES)?;
                }
            }
        }
    }
    if let Some(Value::Mapping(parameters)) = get(spec, "parameters") {
        for (name, parameter) in parameters {
            let path = format!("spec.parameters.{}", key_text(name));
            check_object(parameter, &path, &PARAMETER)?;
            if let Some(Value::Sequence(targets)) = get(parameter, "targets") {
                for (t, target) in targets.iter().enumerate() {
                    check_object(target, &format!("{path}.targets[{t}]"), &TARGET)?;
                }
            }
        }
    }
    Ok(())
}

fn get<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    match value {
        Value::Mapping(m) => m.get(key),
        _ => None,
    }
}

fn key_text(key: &Value) -> String {
    match key {
        Value::String(s) => s.clone(),
        other => serde_norway::to_string(other)
            .map(|s| s.trim_end().to_string())
            .unwrap_or_else(|_| format!("{other:?}")),
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// `x-<name>-extensions` with `<name>` matching `[a-z][a-z0-9-]*`.
pub fn is_extension_key(key: &str) -> bool {
    key.strip_prefix("x-")
        .and_then(|k| k.strip_suffix("-extensions"))
        .is_some_and(|name| {
            name.starts_with(|c: char| c.is_ascii_lowercase())
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        })
}

fn check_object(value: &Value, path: &str, shape: &Shape) -> Result<(), DeploymentError> {
    let Value::Mapping(map) = value else {
        // Types are the parser's business.
        return Ok(());
    };
    for (key, member) in map {
        let text = key_text(key);
        if shape.keys.contains(&text.as_str()) {
            continue;
        }
        let field = join(path, &text);
        if shape.closed && is_extension_key(&text) {
            if !matches!(member, Value::Mapping(_)) {
                return Err(DeploymentError::Invalid {
                    field,
                    problem: "an extension's value must be a mapping".into(),
                });
            }
            continue;
        }
        let near = shape.keys.iter().find(|k| is_near_miss(&text, k));
        if shape.closed || near.is_some() {
            return Err(DeploymentError::UnknownField {
                field,
                hint: hint(shape, near.copied()),
            });
        }
    }
    Ok(())
}

fn hint(shape: &Shape, near: Option<&str>) -> String {
    let mut hint = match near {
        Some(k) => format!("did you mean {k}? "),
        None => String::new(),
    };
    if shape.closed {
        hint.push_str(&format!(
            "the Margo schema allows only {} and x-<name>-extensions here",
            shape.keys.join(", ")
        ));
    } else {
        hint.push_str("it is a misspelling of a key the Margo spec defines");
    }
    hint
}

/// `candidate` is not `known` but looks like a typo of it: the same letters
/// in another case, or at most 1 (keys up to 5 letters) or 2 (longer)
/// insertions, deletions, substitutions or swaps of neighbours away. Keys
/// of 3 letters or fewer (`id`) only in case.
fn is_near_miss(candidate: &str, known: &str) -> bool {
    if candidate == known {
        return false;
    }
    if candidate.eq_ignore_ascii_case(known) {
        return true;
    }
    let limit = match known.chars().count() {
        0..=3 => return false,
        4..=5 => 1,
        _ => 2,
    };
    edit_distance(&candidate.to_ascii_lowercase(), &known.to_ascii_lowercase()) <= limit
}

/// Optimal string alignment distance (Levenshtein plus swaps of neighbours).
fn edit_distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.chars().collect();
    let b: Vec<char> = b.chars().collect();
    if a.len().abs_diff(b.len()) > 2 {
        return a.len().abs_diff(b.len());
    }
    let width = b.len() + 1;
    let mut d = vec![0usize; (a.len() + 1) * width];
    for i in 0..=a.len() {
        d[i * width] = i;
    }
    for (j, cell) in d.iter_mut().enumerate().take(width) {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[(i - 1) * width + j] + 1)
                .min(d[i * width + j - 1] + 1)
                .min(d[(i - 1) * width + j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[(i - 2) * width + j - 2] + 1);
            }
            d[i * width + j] = best;
        }
    }
    d[a.len() * width + b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn near_misses() {
        for (candidate, known) in [
            ("paramters", "parameters"),
            ("packageLocaton", "packageLocation"),
            ("packageLoaction", "packageLocation"),
            ("PackageLocation", "packageLocation"),
            ("revison", "revision"),
            ("waits", "wait"),
            ("ID", "id"),
            ("targts", "targets"),
        ] {
            assert!(is_near_miss(candidate, known), "{candidate} / {known}");
        }
        for (candidate, known) in [
            ("parameters", "parameters"),
            ("path", "wait"),
            ("simulatedDelayMs", "timeout"),
            ("ip", "id"),
            ("image", "wait"),
            ("version", "revision"),
        ] {
            assert!(!is_near_miss(candidate, known), "{candidate} / {known}");
        }
    }

    #[test]
    fn extension_keys_follow_the_naming_rule() {
        assert!(is_extension_key("x-acme-extensions"));
        assert!(is_extension_key(
            "x-northforgesystems-processautomation-extensions"
        ));
        assert!(!is_extension_key("x-Acme-extensions"));
        assert!(!is_extension_key("x--extensions"));
        assert!(!is_extension_key("x-acme"));
        assert!(!is_extension_key("x-1acme-extensions"));
    }
}
