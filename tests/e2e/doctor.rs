//! `mnd doctor` on a real node: as root on the healthy cluster every check passes (exit 0);
//! given broken copies of plugstack.conf (a drop-in nothing includes), the site config
//! (group-writable) and the Epilog (not mnd's), it names each and exits 1; as dave, who is
//! not in group docker, it runs and says Docker is out of his reach, as expected for
//! direct mode.

use crate::cluster::*;

/// This build's mnd on the nodes (the packaged one may be on PATH too).
const MND: &str = "/opt/mnd/bin/mnd";

/// The checks of `mnd doctor --json`.
fn checks(r: &Run) -> Vec<serde_json::Value> {
    let report: serde_json::Value = serde_json::from_str(&r.stdout)
        .unwrap_or_else(|e| panic!("doctor --json printed no JSON ({e}):\n{}", r.all()));
    report["checks"].as_array().expect("checks").clone()
}

/// The check `id`: (status, detail, fix).
fn check<'a>(all: &'a [serde_json::Value], id: &str) -> (&'a str, &'a str, &'a str) {
    let c = all
        .iter()
        .find(|c| c["id"] == id)
        .unwrap_or_else(|| panic!("no check {id} in {all:?}"));
    (
        c["status"].as_str().unwrap_or_default(),
        c["detail"].as_str().unwrap_or_default(),
        c["fix"].as_str().unwrap_or_default(),
    )
}

/// The text report's line of check `id`.
fn line<'a>(r: &'a Run, id: &str) -> &'a str {
    r.stdout
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(id))
        .unwrap_or_else(|| panic!("no line for {id}:\n{}", r.all()))
}

#[test]
fn doctor_passes_as_root_on_the_healthy_cluster() {
    let _g = shared();
    cluster();
    let r = root_on("node1", &[MND, "doctor"]);
    assert_eq!(r.code, 0, "{}", r.all());
    for id in [
        "slurm",
        "plugstack",
        "plugin",
        "plugin-args",
        "helper",
        "epilog",
        "site-config",
        "docker",
        "size-limit",
        "munge",
    ] {
        assert!(line(&r, id).starts_with("ok "), "{id}:\n{}", r.all());
    }
    assert!(
        line(&r, "plugin").contains("mnd_spank built for Slurm"),
        "{}",
        r.all()
    );
    assert!(line(&r, "user-mnd").starts_with("skip"), "{}", r.all());
    // The JSON says the same, and --strict also counts the warnings (the shared home here
    // is a bind mount, which one node cannot prove shared).
    let j = root_on("node1", &[MND, "doctor", "--json"]);
    assert_eq!(j.code, 0, "{}", j.all());
    let all = checks(&j);
    assert!(all.iter().all(|c| c["status"] != "fail"), "{}", j.all());
    let warned = all.iter().any(|c| c["status"] == "warn");
    let strict = root_on("node1", &[MND, "doctor", "--strict"]);
    assert_eq!(strict.code, i32::from(warned), "{}", strict.all());
}

#[test]
fn doctor_names_each_broken_copy_and_exits_1() {
    let _g = shared();
    cluster();
    let dir = format!("/tmp/{}", unique("doctor"));
    // A plugstack.conf without its plugin or include lines, beside a drop-in holding the
    // node's own mnd_spank.so line (the pyxis support question: the drop-in is there, the
    // include line is not); a site config others may change; an Epilog that is not mnd's.
    let setup = format!(
        r#"set -e
umask 022
mkdir -p {dir}/plugstack.conf.d
line=$(cat /etc/slurm/plugstack.conf /etc/slurm/plugstack.conf.d/* 2>/dev/null | grep -E '^(required|optional)[[:space:]].*mnd_spank' | head -n1)
[ -n "$line" ] || {{ echo 'no mnd_spank.so line on this node' >&2; exit 1; }}
grep -v -E '^[[:space:]]*(include|required|optional)' /etc/slurm/plugstack.conf >{dir}/plugstack.conf || true
echo "$line" >{dir}/plugstack.conf.d/mnd-srun.conf
printf '[policy]\nallow_privileged = false\n' >{dir}/config.toml
chmod 0664 {dir}/config.toml
printf '#!/bin/sh\nexit 0\n' >{dir}/epilog.sh
chmod 0755 {dir}/epilog.sh
"#
    );
    let made = root_on("node1", &["sh", "-c", &setup]);
    assert_eq!(made.code, 0, "{}", made.all());
    let (plugstack, config, epilog) = (
        format!("{dir}/plugstack.conf"),
        format!("{dir}/config.toml"),
        format!("{dir}/epilog.sh"),
    );
    let args = [
        "--plugstack",
        plugstack.as_str(),
        "--config",
        config.as_str(),
        "--epilog",
        epilog.as_str(),
    ];
    let text = root_on("node1", &[&[MND, "doctor"][..], &args[..]].concat());
    let json = root_on(
        "node1",
        &[&[MND, "doctor", "--json"][..], &args[..]].concat(),
    );
    root_on("node1", &["rm", "-rf", &dir]);
    assert_eq!(text.code, 1, "{}", text.all());
    for id in ["plugstack", "site-config", "epilog"] {
        assert!(line(&text, id).starts_with("FAIL"), "{id}:\n{}", text.all());
    }
    assert_eq!(json.code, 1, "{}", json.all());
    let all = checks(&json);
    let (status, detail, fix) = check(&all, "plugstack");
    assert_eq!(status, "fail", "{}", json.all());
    assert!(
        detail.contains(&format!(
            "{dir}/plugstack.conf.d/mnd-srun.conf loads mnd_spank.so, but {plugstack}"
        )) && fix.contains(&format!("include {dir}/plugstack.conf.d/*.conf")),
        "{}",
        json.all()
    );
    let (status, detail, fix) = check(&all, "site-config");
    assert_eq!(status, "fail", "{}", json.all());
    assert!(
        detail.contains("mode 0664") && fix.contains(&format!("chmod 0644 {config}")),
        "{}",
        json.all()
    );
    let (status, detail, fix) = check(&all, "epilog");
    assert_eq!(status, "fail", "{}", json.all());
    assert!(
        detail.contains(&epilog)
            && detail.contains("does not run mnd's epilog")
            && fix.contains("epilog.sh"),
        "{}",
        json.all()
    );
    // What was not given is still the node's own, and well.
    for id in ["docker", "munge"] {
        assert_eq!(check(&all, id).0, "ok", "{id}: {}", json.all());
    }
}

#[test]
fn doctor_runs_as_dave_and_says_docker_is_out_of_his_reach_as_expected() {
    let _g = shared();
    let r = dave(&format!("{MND} doctor"));
    // It ran to its end (0, or 1 if something of dave's own is wrong: the lines say what).
    assert!(r.code == 0 || r.code == 1, "{}", r.all());
    assert!(r.stdout.contains("mnd doctor: "), "{}", r.all());
    let docker = line(&r, "docker");
    assert!(
        docker.starts_with("warn")
            && docker.contains("not reachable for dave")
            && docker.contains("expected")
            && docker.contains("Direct mode (srun --mnd-image=IMAGE) does not need it"),
        "{}",
        r.all()
    );
    // As a user it checks his ~/.mnd, and still sees the plugin's files.
    assert!(!line(&r, "user-mnd").starts_with("skip"), "{}", r.all());
    assert!(line(&r, "plugin").starts_with("ok"), "{}", r.all());
}
