//! The validation rule engine (D-005).
//!
//! A rule is a value: an id, a one-line description and a pure function
//! from what is known about a release to findings. [`validate`] runs every
//! rule and returns every finding at once, so an operator fixes all problems
//! in one round. Adding a rule is adding one entry to [`default_rules`].
//! Facts that need I/O (re-hashing stored bytes) are gathered by the caller
//! into [`ValidationInput`] first; rules never touch a disk.

use crate::model::{ArtifactSource, Release};
use crate::names::check_artifact_name;
use crate::version::Version;
use serde::{Deserialize, Serialize};
use std::collections::HashSet;
use utoipa::ToSchema;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Error,
    Warning,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct Finding {
    pub rule: String,
    pub severity: Severity,
    pub message: String,
    /// The artifact the finding is about, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
}

/// What re-reading an uploaded artifact's stored bytes found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredBytes {
    pub name: String,
    /// `None`: the file is missing or unreadable.
    pub sha256: Option<String>,
    pub size: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SizeLimits {
    pub max_artifact_bytes: u64,
    pub max_release_bytes: u64,
}

/// Everything the rules look at.
pub struct ValidationInput<'a> {
    pub release: &'a Release,
    /// Versions of every release of the same dataset and channel that was
    /// ever published (deprecated ones included), other than this one.
    pub published_versions: &'a [Version],
    /// Re-hash results for the uploaded artifacts.
    pub stored: &'a [StoredBytes],
    pub limits: SizeLimits,
    /// Artifact names every release of this dataset must have.
    pub required_artifacts: &'a [String],
}

pub struct Rule {
    pub id: &'static str,
    pub description: &'static str,
    pub check: fn(&ValidationInput<'_>) -> Vec<Finding>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ValidationReport {
    /// True when no finding is an error.
    pub valid: bool,
    pub findings: Vec<Finding>,
}

pub fn validate(rules: &[Rule], input: &ValidationInput<'_>) -> ValidationReport {
    let findings: Vec<Finding> = rules.iter().flat_map(|r| (r.check)(input)).collect();
    ValidationReport { valid: findings.iter().all(|f| f.severity != Severity::Error), findings }
}

fn finding(rule: &str, severity: Severity, message: String, artifact: Option<&str>) -> Finding {
    Finding { rule: rule.to_owned(), severity, message, artifact: artifact.map(str::to_owned) }
}

pub fn default_rules() -> Vec<Rule> {
    vec![
        Rule { id: "has-artifacts", description: "a release has at least one artifact", check: has_artifacts },
        Rule { id: "artifact-names", description: "artifact names are unique and safe", check: artifact_names },
        Rule {
            id: "artifact-integrity",
            description: "every uploaded artifact's stored bytes re-hash to its recorded SHA-256 and size",
            check: artifact_integrity,
        },
        Rule {
            id: "size-limits",
            description: "artifacts and the release stay within size limits",
            check: size_limits,
        },
        Rule {
            id: "version-increases",
            description: "the version is greater than every published release of the dataset and channel",
            check: version_increases,
        },
        Rule {
            id: "min-app-version",
            description: "the minimum app version is major.minor.patch",
            check: min_app_version,
        },
        Rule {
            id: "required-artifacts",
            description: "the dataset's required artifacts are present",
            check: required_artifacts,
        },
        Rule { id: "external-urls", description: "external artifacts are fetched over https", check: external_urls },
        Rule { id: "release-notes", description: "a release says what changed (warning)", check: release_notes },
    ]
}

fn has_artifacts(i: &ValidationInput<'_>) -> Vec<Finding> {
    if i.release.artifacts.is_empty() {
        vec![finding("has-artifacts", Severity::Error, "the release has no artifacts".into(), None)]
    } else {
        Vec::new()
    }
}

fn artifact_names(i: &ValidationInput<'_>) -> Vec<Finding> {
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for a in &i.release.artifacts {
        if let Err(e) = check_artifact_name(&a.name) {
            out.push(finding("artifact-names", Severity::Error, e.to_string(), Some(&a.name)));
        }
        if !seen.insert(a.name.to_lowercase()) {
            out.push(finding(
                "artifact-names",
                Severity::Error,
                format!("artifact name `{}` is used twice (names are compared case-insensitively)", a.name),
                Some(&a.name),
            ));
        }
    }
    out
}

fn artifact_integrity(i: &ValidationInput<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    for a in i.release.artifacts.iter().filter(|a| a.source == ArtifactSource::Uploaded) {
        let rule = "artifact-integrity";
        match i.stored.iter().find(|s| s.name == a.name) {
            None | Some(StoredBytes { sha256: None, .. }) => out.push(finding(
                rule,
                Severity::Error,
                format!("stored bytes of `{}` are missing", a.name),
                Some(&a.name),
            )),
            Some(s) if s.size != a.size => out.push(finding(
                rule,
                Severity::Error,
                format!("`{}` is {} bytes on disk, {} recorded", a.name, s.size, a.size),
                Some(&a.name),
            )),
            Some(StoredBytes { sha256: Some(h), .. }) if *h != a.sha256 => out.push(finding(
                rule,
                Severity::Error,
                format!("`{}` re-hashes to {h}, {} recorded", a.name, a.sha256),
                Some(&a.name),
            )),
            Some(_) => {}
        }
    }
    out
}

fn size_limits(i: &ValidationInput<'_>) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut total: u64 = 0;
    for a in &i.release.artifacts {
        total = total.saturating_add(a.size);
        if a.size > i.limits.max_artifact_bytes {
            out.push(finding(
                "size-limits",
                Severity::Error,
                format!("`{}` is {} bytes, over the limit of {}", a.name, a.size, i.limits.max_artifact_bytes),
                Some(&a.name),
            ));
        }
        // An empty required artifact is an error (see `required_artifacts`).
        if a.size == 0 && !i.required_artifacts.contains(&a.name) {
            out.push(finding("size-limits", Severity::Warning, format!("`{}` is empty", a.name), Some(&a.name)));
        }
    }
    if total > i.limits.max_release_bytes {
        out.push(finding(
            "size-limits",
            Severity::Error,
            format!("the release is {total} bytes, over the limit of {}", i.limits.max_release_bytes),
            None,
        ));
    }
    out
}

fn version_increases(i: &ValidationInput<'_>) -> Vec<Finding> {
    match i.published_versions.iter().max() {
        Some(max) if i.release.version <= *max => vec![finding(
            "version-increases",
            Severity::Error,
            format!(
                "version {} is not greater than {max}, already published on {}/{}",
                i.release.version, i.release.dataset, i.release.channel
            ),
            None,
        )],
        _ => Vec::new(),
    }
}

fn min_app_version(i: &ValidationInput<'_>) -> Vec<Finding> {
    match i.release.min_app_version.parse::<Version>() {
        Ok(_) => Vec::new(),
        Err(e) => vec![finding("min-app-version", Severity::Error, e.to_string(), None)],
    }
}

fn required_artifacts(i: &ValidationInput<'_>) -> Vec<Finding> {
    i.required_artifacts
        .iter()
        .filter_map(|name| match i.release.artifacts.iter().find(|a| &a.name == name) {
            None => Some(finding(
                "required-artifacts",
                Severity::Error,
                format!("dataset {} requires an artifact named `{name}`", i.release.dataset),
                Some(name),
            )),
            // A required file with nothing in it is as good as missing.
            Some(a) if a.size == 0 => Some(finding(
                "required-artifacts",
                Severity::Error,
                format!("dataset {} requires `{name}`, and it is empty", i.release.dataset),
                Some(name),
            )),
            Some(_) => None,
        })
        .collect()
}

fn external_urls(i: &ValidationInput<'_>) -> Vec<Finding> {
    i.release
        .artifacts
        .iter()
        .filter_map(|a| match &a.source {
            ArtifactSource::External { url } if !url.starts_with("https://") => Some(finding(
                "external-urls",
                Severity::Error,
                format!("`{}` would be fetched from `{url}`, which is not https", a.name),
                Some(&a.name),
            )),
            _ => None,
        })
        .collect()
}

fn release_notes(i: &ValidationInput<'_>) -> Vec<Finding> {
    if i.release.notes.trim().is_empty() {
        vec![finding("release-notes", Severity::Warning, "the release has no notes".into(), None)]
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Artifact, ReleaseState};

    fn release(artifacts: Vec<Artifact>) -> Release {
        Release {
            id: "r".into(),
            dataset: "vocab-en".into(),
            channel: "stable".into(),
            version: Version::new(1, 2, 0),
            notes: "n".into(),
            min_app_version: "2.0.0".into(),
            state: ReleaseState::Draft,
            rollout_percent: 0,
            mandatory: false,
            deprecated_reason: None,
            created_at: 0,
            published_at: None,
            artifacts,
        }
    }

    fn artifact(name: &str, size: u64, sha: &str) -> Artifact {
        Artifact { name: name.into(), size, sha256: sha.into(), source: ArtifactSource::Uploaded, created_at: 0 }
    }

    fn run(r: &Release, published: &[Version], stored: &[StoredBytes], required: &[String]) -> ValidationReport {
        let input = ValidationInput {
            release: r,
            published_versions: published,
            stored,
            limits: SizeLimits { max_artifact_bytes: 100, max_release_bytes: 150 },
            required_artifacts: required,
        };
        validate(&default_rules(), &input)
    }

    fn rules_of(report: &ValidationReport) -> Vec<&str> {
        report.findings.iter().map(|f| f.rule.as_str()).collect()
    }

    #[test]
    fn a_good_release_passes() {
        let r = release(vec![artifact("a.db", 10, "aa")]);
        let stored = [StoredBytes { name: "a.db".into(), sha256: Some("aa".into()), size: 10 }];
        let report = run(&r, &[Version::new(1, 1, 9)], &stored, &["a.db".into()]);
        assert!(report.valid, "{report:?}");
        assert!(report.findings.is_empty());
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let mut r = release(vec![
            artifact("a.db", 120, "aa"),
            artifact("A.db", 40, "bb"),
            Artifact {
                name: "c".into(),
                size: 1,
                sha256: "cc".into(),
                source: ArtifactSource::External { url: "http://x".into() },
                created_at: 0,
            },
        ]);
        r.min_app_version = "two".into();
        r.notes = String::new();
        let stored = [
            StoredBytes { name: "a.db".into(), sha256: Some("zz".into()), size: 120 },
            StoredBytes { name: "A.db".into(), sha256: None, size: 0 },
        ];
        let report = run(&r, &[Version::new(1, 2, 0)], &stored, &["words.db".into()]);
        assert!(!report.valid);
        let rules = rules_of(&report);
        for expected in [
            "artifact-names",
            "artifact-integrity",
            "size-limits",
            "version-increases",
            "min-app-version",
            "required-artifacts",
            "external-urls",
            "release-notes",
        ] {
            assert!(rules.contains(&expected), "{expected} missing from {rules:?}");
        }
        assert_eq!(
            report.findings.iter().filter(|f| f.rule == "release-notes").map(|f| f.severity).collect::<Vec<_>>(),
            vec![Severity::Warning]
        );
        assert_eq!(rules_of(&run(&release(vec![]), &[], &[], &[])), vec!["has-artifacts"]);
    }

    #[test]
    fn an_empty_required_artifact_is_an_error() {
        let r = release(vec![artifact("words.db", 0, "e3")]);
        let stored = [StoredBytes { name: "words.db".into(), sha256: Some("e3".into()), size: 0 }];
        let report = run(&r, &[], &stored, &["words.db".into()]);
        assert!(!report.valid);
        let errors: Vec<_> = report.findings.iter().filter(|f| f.severity == Severity::Error).collect();
        assert_eq!(errors.len(), 1, "{:?}", report.findings);
        assert_eq!(errors[0].rule, "required-artifacts");
        assert!(errors[0].message.contains("empty"));
    }

    #[test]
    fn warnings_alone_do_not_fail() {
        let mut r = release(vec![artifact("a.db", 0, "e3")]);
        r.notes = " ".into();
        let stored = [StoredBytes { name: "a.db".into(), sha256: Some("e3".into()), size: 0 }];
        let report = run(&r, &[], &stored, &[]);
        assert!(report.valid);
        assert_eq!(report.findings.len(), 2);
    }
}
