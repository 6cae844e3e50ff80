//! Table-driven tests of `resolve`: architecture × kernel × BTF ×
//! versions × channels.

use super::*;
use crate::fleet::requirements::BtfRequirement;

fn id(version: &str, arch: &str) -> Digest {
    Digest::of(format!("{version}/{arch}").as_bytes())
}

fn c(version: &str, arch: &str, req: Option<Requirements>) -> Candidate {
    Candidate {
        version: version.into(),
        id: id(version, arch),
        architecture: arch.into(),
        requirements: req,
    }
}

fn min(k: &str) -> Option<Requirements> {
    Some(Requirements {
        min_kernel: Some(k.into()),
        ..Default::default()
    })
}

fn max(k: &str) -> Option<Requirements> {
    Some(Requirements {
        max_kernel: Some(k.into()),
        ..Default::default()
    })
}

fn btf() -> Option<Requirements> {
    Some(Requirements {
        btf: Some(BtfRequirement::Required),
        ..Default::default()
    })
}

fn host(arch: &str, release: &str, btf: Option<bool>) -> HostFacts {
    HostFacts {
        architecture: arch.into(),
        kernel_release: release.into(),
        btf,
    }
}

fn direct(name: &str) -> Assignment {
    Assignment {
        name: name.into(),
        via: "direct".into(),
        channel: None,
    }
}

fn chan(name: &str, channel: &str) -> Assignment {
    Assignment {
        name: name.into(),
        via: format!("channel:{channel}"),
        channel: Some(channel.into()),
    }
}

fn sel(name: &str, id: &str) -> Assignment {
    Assignment {
        name: name.into(),
        via: format!("selector:{id}"),
        channel: None,
    }
}

/// (name, its candidates, its channels as (channel, version))
type NameRow = (
    &'static str,
    Vec<Candidate>,
    Vec<(&'static str, &'static str)>,
);

struct Case {
    what: &'static str,
    host: HostFacts,
    assignments: Vec<Assignment>,
    names: Vec<NameRow>,
    /// (name, version, architecture, channel)
    artifacts: Vec<(
        &'static str,
        &'static str,
        &'static str,
        Option<&'static str>,
    )>,
    /// (name, version, has id, reason)
    excluded: Vec<(&'static str, Option<&'static str>, bool, &'static str)>,
}

fn run(case: &Case) -> Desired {
    let map: BTreeMap<String, Arc<NameCandidates>> = case
        .names
        .iter()
        .map(|(n, versions, channels)| {
            (
                n.to_string(),
                Arc::new(NameCandidates {
                    versions: versions.clone(),
                    channels: channels
                        .iter()
                        .map(|(c, v)| (c.to_string(), v.to_string()))
                        .collect(),
                }),
            )
        })
        .collect();
    resolve(&case.host, &case.assignments, &|n| map.get(n).cloned())
}

fn x86() -> HostFacts {
    host("x86_64", "5.15.0-91-generic", Some(true))
}

fn cases() -> Vec<Case> {
    let two_arch = || {
        vec![
            c("1.0.0", "x86_64", None),
            c("1.0.0", "aarch64", None),
            c("1.1.0", "aarch64", None),
        ]
    };
    vec![
        Case {
            what: "newest version with the host's arch",
            host: x86(),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None), c("1.2.0", "x86_64", None)],
                vec![],
            )],
            artifacts: vec![("n", "1.2.0", "x86_64", None)],
            excluded: vec![],
        },
        Case {
            what: "newer version lacking the arch is excluded",
            host: x86(),
            assignments: vec![direct("n")],
            names: vec![("n", two_arch(), vec![])],
            artifacts: vec![("n", "1.0.0", "x86_64", None)],
            excluded: vec![("n", Some("1.1.0"), true, "no x86_64 platform")],
        },
        Case {
            what: "aarch64 host takes the newest aarch64",
            host: host("aarch64", "6.1.0", Some(true)),
            assignments: vec![direct("n")],
            names: vec![("n", two_arch(), vec![])],
            artifacts: vec![("n", "1.1.0", "aarch64", None)],
            excluded: vec![],
        },
        Case {
            what: "OCI arch names normalise (amd64 host, arm64 platforms)",
            host: host("amd64", "6.1.0", Some(true)),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                vec![c("1.0.0", "amd64", None), c("2.0.0", "arm64", None)],
                vec![],
            )],
            artifacts: vec![("n", "1.0.0", "x86_64", None)],
            excluded: vec![("n", Some("2.0.0"), true, "no x86_64 platform")],
        },
        Case {
            what: "no platform at all for the arch",
            host: host("riscv64", "6.1.0", None),
            assignments: vec![direct("n")],
            names: vec![("n", two_arch(), vec![])],
            artifacts: vec![],
            excluded: vec![
                ("n", Some("1.1.0"), true, "no riscv64 platform"),
                ("n", Some("1.0.0"), true, "no riscv64 platform"),
            ],
        },
        Case {
            what: "min_kernel unmet falls back to an older version",
            host: host("x86_64", "5.4.0-42-generic", Some(true)),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None), c("2.0.0", "x86_64", min("5.8"))],
                vec![],
            )],
            artifacts: vec![("n", "1.0.0", "x86_64", None)],
            excluded: vec![("n", Some("2.0.0"), true, "kernel 5.4.0 < min_kernel 5.8")],
        },
        Case {
            what: "min_kernel met",
            host: host("x86_64", "5.8.0", Some(true)),
            assignments: vec![direct("n")],
            names: vec![("n", vec![c("2.0.0", "x86_64", min("5.8"))], vec![])],
            artifacts: vec![("n", "2.0.0", "x86_64", None)],
            excluded: vec![],
        },
        Case {
            what: "max_kernel unmet",
            host: host("x86_64", "7.0.0", Some(true)),
            assignments: vec![direct("n")],
            names: vec![("n", vec![c("1.0.0", "x86_64", max("6.99"))], vec![])],
            artifacts: vec![],
            excluded: vec![("n", Some("1.0.0"), true, "kernel 7.0.0 > max_kernel 6.99")],
        },
        Case {
            what: "max_kernel 6.99 admits 6.99.4",
            host: host("x86_64", "6.99.4-custom", Some(true)),
            assignments: vec![direct("n")],
            names: vec![("n", vec![c("1.0.0", "x86_64", max("6.99"))], vec![])],
            artifacts: vec![("n", "1.0.0", "x86_64", None)],
            excluded: vec![],
        },
        Case {
            what: "btf required on a host without BTF",
            host: host("x86_64", "6.1.0", Some(false)),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None), c("1.1.0", "x86_64", btf())],
                vec![],
            )],
            artifacts: vec![("n", "1.0.0", "x86_64", None)],
            excluded: vec![("n", Some("1.1.0"), true, "btf required")],
        },
        Case {
            what: "btf required on a host with BTF",
            host: host("x86_64", "6.1.0", Some(true)),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None), c("1.1.0", "x86_64", btf())],
                vec![],
            )],
            artifacts: vec![("n", "1.1.0", "x86_64", None)],
            excluded: vec![],
        },
        Case {
            what: "btf unknown does not meet required",
            host: host("x86_64", "6.1.0", None),
            assignments: vec![direct("n")],
            names: vec![("n", vec![c("1.1.0", "x86_64", btf())], vec![])],
            artifacts: vec![],
            excluded: vec![("n", Some("1.1.0"), true, "btf required")],
        },
        Case {
            what: "unparsable kernel release with a bound",
            host: host("x86_64", "custom", Some(true)),
            assignments: vec![direct("n")],
            names: vec![("n", vec![c("1.0.0", "x86_64", min("5.8"))], vec![])],
            artifacts: vec![],
            excluded: vec![(
                "n",
                Some("1.0.0"),
                true,
                "kernel release \"custom\" does not parse",
            )],
        },
        Case {
            what: "semver order: 1.10.0 above 1.9.0",
            host: x86(),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                vec![c("1.9.0", "x86_64", None), c("1.10.0", "x86_64", None)],
                vec![],
            )],
            artifacts: vec![("n", "1.10.0", "x86_64", None)],
            excluded: vec![],
        },
        Case {
            what: "pre-release below release",
            host: x86(),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                vec![c("1.0.0-rc1", "x86_64", None), c("1.0.0", "x86_64", None)],
                vec![],
            )],
            artifacts: vec![("n", "1.0.0", "x86_64", None)],
            excluded: vec![],
        },
        Case {
            what: "non-semver versions compare byte-wise (v2 above 1.0.0)",
            host: x86(),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None), c("v2", "x86_64", None)],
                vec![],
            )],
            artifacts: vec![("n", "v2", "x86_64", None)],
            excluded: vec![],
        },
        Case {
            what: "channel picks its version, not the newest",
            host: x86(),
            assignments: vec![chan("n", "stable")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None), c("2.0.0", "x86_64", None)],
                vec![("stable", "1.0.0")],
            )],
            artifacts: vec![("n", "1.0.0", "x86_64", Some("stable"))],
            excluded: vec![],
        },
        Case {
            what: "channel not set",
            host: x86(),
            assignments: vec![chan("n", "stable")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None)],
                vec![("beta", "1.0.0")],
            )],
            artifacts: vec![],
            excluded: vec![("n", None, false, "channel stable not set")],
        },
        Case {
            what: "channel pointing at a version that is not there",
            host: x86(),
            assignments: vec![chan("n", "stable")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None)],
                vec![("stable", "9.9.9")],
            )],
            artifacts: vec![],
            excluded: vec![("n", None, false, "channel stable not set")],
        },
        Case {
            what: "channel version without the host's arch: no fallback",
            host: x86(),
            assignments: vec![chan("n", "stable")],
            names: vec![("n", two_arch(), vec![("stable", "1.1.0")])],
            artifacts: vec![],
            excluded: vec![("n", Some("1.1.0"), true, "no x86_64 platform")],
        },
        Case {
            what: "channel version whose requirements are unmet: no fallback",
            host: host("x86_64", "5.4.0", Some(true)),
            assignments: vec![chan("n", "stable")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None), c("2.0.0", "x86_64", min("5.8"))],
                vec![("stable", "2.0.0")],
            )],
            artifacts: vec![],
            excluded: vec![("n", Some("2.0.0"), true, "kernel 5.4.0 < min_kernel 5.8")],
        },
        Case {
            what: "several channels: the byte-wise smallest wins",
            host: x86(),
            assignments: vec![chan("n", "stable"), chan("n", "beta"), direct("n")],
            names: vec![(
                "n",
                vec![c("1.0.0", "x86_64", None), c("2.0.0", "x86_64", None)],
                vec![("stable", "1.0.0"), ("beta", "2.0.0")],
            )],
            artifacts: vec![("n", "2.0.0", "x86_64", Some("beta"))],
            excluded: vec![],
        },
        Case {
            what: "no versions at all",
            host: x86(),
            assignments: vec![direct("gone")],
            names: vec![],
            artifacts: vec![],
            excluded: vec![("gone", None, false, "no versions")],
        },
        Case {
            what: "several names, sorted by name",
            host: x86(),
            assignments: vec![direct("zeta"), sel("alpha", "sha256:aa"), direct("mid")],
            names: vec![
                ("zeta", vec![c("1.0.0", "x86_64", None)], vec![]),
                ("alpha", vec![c("3.0.0", "x86_64", None)], vec![]),
                (
                    "mid",
                    vec![c("1.0.0", "x86_64", None), c("2.0.0", "x86_64", btf())],
                    vec![],
                ),
            ],
            artifacts: vec![
                ("alpha", "3.0.0", "x86_64", None),
                ("mid", "2.0.0", "x86_64", None),
                ("zeta", "1.0.0", "x86_64", None),
            ],
            excluded: vec![],
        },
        Case {
            what: "at most 10 excluded per name",
            host: host("x86_64", "4.19.0", Some(true)),
            assignments: vec![direct("n")],
            names: vec![(
                "n",
                (0..15)
                    .map(|i| {
                        c(
                            ["1.0.", &i.to_string()].concat().leak(),
                            "x86_64",
                            min("5.0"),
                        )
                    })
                    .chain([c("0.1.0", "x86_64", None)])
                    .collect(),
                vec![],
            )],
            artifacts: vec![("n", "0.1.0", "x86_64", None)],
            excluded: (5..15)
                .rev()
                .map(|i| {
                    let v: &'static str = ["1.0.", &i.to_string()].concat().leak();
                    ("n", Some(v), true, "kernel 4.19.0 < min_kernel 5.0")
                })
                .collect(),
        },
    ]
}

#[test]
fn resolution_table() {
    let cases = cases();
    assert!(cases.len() >= 20);
    for case in &cases {
        let got = run(case);
        let artifacts: Vec<_> = got
            .artifacts
            .iter()
            .map(|a| {
                (
                    a.name.as_str(),
                    a.version.as_str(),
                    a.architecture.as_str(),
                    a.channel.as_deref(),
                )
            })
            .collect();
        let want: Vec<_> = case.artifacts.clone();
        assert_eq!(artifacts, want, "{}: artifacts", case.what);
        for a in &got.artifacts {
            let from_candidate = case.names.iter().any(|(n, versions, _)| {
                *n == a.name
                    && versions.iter().any(|c| {
                        c.version == a.version
                            && normalize_arch(&c.architecture) == a.architecture
                            && c.id.to_string() == a.id
                    })
            });
            assert!(from_candidate, "{}: id of {a:?}", case.what);
        }
        let excluded: Vec<_> = got
            .excluded
            .iter()
            .map(|e| {
                (
                    e.name.as_str(),
                    e.version.as_deref(),
                    e.id.is_some(),
                    e.reason.as_str(),
                )
            })
            .collect();
        assert_eq!(excluded, case.excluded, "{}: excluded", case.what);
        for e in &got.excluded {
            assert_eq!(e.id.is_some(), e.architecture.is_some(), "{}", case.what);
        }
    }
}

#[test]
fn via_is_sorted_and_deduplicated() {
    let map: BTreeMap<String, Arc<NameCandidates>> = [(
        "n".to_string(),
        Arc::new(NameCandidates {
            versions: vec![c("1.0.0", "x86_64", None)],
            channels: BTreeMap::new(),
        }),
    )]
    .into();
    let assignments = [
        sel("n", "sha256:bb"),
        direct("n"),
        sel("n", "sha256:aa"),
        direct("n"),
    ];
    let got = resolve(&x86(), &assignments, &|n| map.get(n).cloned());
    assert_eq!(
        got.artifacts[0].via,
        vec!["direct", "selector:sha256:aa", "selector:sha256:bb"]
    );
    assert_eq!(got.artifacts[0].channel, None);
}

#[test]
fn serializes_like_the_contract() {
    let case = &cases()[1];
    let got = run(case);
    let json = serde_json::to_value(&got).unwrap();
    assert_eq!(json["artifacts"][0]["channel"], serde_json::Value::Null);
    assert_eq!(json["artifacts"][0]["via"], serde_json::json!(["direct"]));
    assert_eq!(json["excluded"][0]["reason"], "no x86_64 platform");
    // Named by the platform it does have (aarch64 only).
    assert!(json["excluded"][0]["id"].is_string(), "{json}");
    assert_eq!(json["excluded"][0]["architecture"], "aarch64");
}

#[test]
fn arch_names() {
    assert_eq!(normalize_arch("amd64"), "x86_64");
    assert_eq!(normalize_arch("arm64"), "aarch64");
    assert_eq!(normalize_arch("x86_64"), "x86_64");
    assert_eq!(normalize_arch("riscv64"), "riscv64");
}
