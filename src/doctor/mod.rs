//! `mnd doctor`: checks this node's install of mnd-srun and says, one line per check, what
//! is ok, what is wrong and how to fix it. Run by the admin as root on a node (every check),
//! or by a user (what a user can see, and their own `~/.mnd`).
//!
//! Two steps, as everywhere in the crate: [`gather`] collects the facts (files, Slurm's
//! settings, Docker, MUNGE, mounts) into a plain [`Facts`] and decides nothing; [`check`]
//! turns facts into [`Finding`]s without any I/O, so every rule is tested on facts built in
//! the test. Paths are parameters ([`Paths`]) with the node's defaults, so a broken copy of
//! a file can be checked in place of the real one.
//!
//! Statuses: `ok`; `warn` (works, but something is off or cannot be told from here); `FAIL`
//! (jobs break, or the install is unsafe); `skip` (does not apply: the plugin checks when
//! plugstack.conf loads no mnd plugin, the user checks when run as root). Exit code: 1 when
//! any check FAILs (or, with `--strict`, warns), else 0.

mod checks;
mod elf;
mod facts;
mod plugstack;

pub use checks::check;
pub use facts::{gather, Facts, Paths};

use serde::Serialize;

/// How a check came out; the order is the severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Nothing to do.
    Ok,
    /// Does not apply here.
    Skip,
    /// Works, but something is off, or this node alone cannot tell.
    Warn,
    /// Jobs break, or the install is unsafe.
    Fail,
}

impl Status {
    /// As the text report shows it.
    pub fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Skip => "skip",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
        }
    }
}

/// One check's result. The JSON keys (`id`, `status`, `detail`, `fix`) are stable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check (`plugstack`, `epilog`, ...).
    pub id: &'static str,
    /// How it came out.
    pub status: Status,
    /// What was found: which file, which rule.
    pub detail: String,
    /// What to do, for anything not ok.
    pub fix: Option<String>,
}

/// The exit code: 1 when a check failed (or warned, with `strict`), else 0.
pub fn exit_code(findings: &[Finding], strict: bool) -> u8 {
    let worst = findings.iter().map(|f| f.status).max();
    match worst {
        Some(Status::Fail) => 1,
        Some(Status::Warn) if strict => 1,
        _ => 0,
    }
}

/// How many checks came out each way, for the summary line.
fn counts(findings: &[Finding]) -> [(Status, usize); 4] {
    [Status::Ok, Status::Warn, Status::Fail, Status::Skip]
        .map(|s| (s, findings.iter().filter(|f| f.status == s).count()))
}

/// The text report: one line per check (status, id, what was found, and the fix), then a
/// summary line.
pub fn render_text(findings: &[Finding], strict: bool) -> String {
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "{:<4}  {:<12}  {}",
            f.status.label(),
            f.id,
            f.detail
        ));
        if let Some(fix) = &f.fix {
            out.push_str(&format!(" Fix: {fix}"));
        }
        out.push('\n');
    }
    let summary: Vec<String> = counts(findings)
        .iter()
        .filter(|(_, n)| *n > 0)
        .map(|(s, n)| format!("{n} {}", s.label()))
        .collect();
    out.push_str(&format!(
        "mnd doctor: {}; exit {}{}\n",
        summary.join(", "),
        exit_code(findings, strict),
        if strict {
            " (--strict: warnings count)"
        } else {
            ""
        }
    ));
    out
}

/// The JSON report: `{"host", "user", "checks": [{"id", "status", "detail", "fix"}], "exit"}`
/// (status: ok, warn, fail, skip).
pub fn render_json(facts: &Facts, findings: &[Finding], strict: bool) -> String {
    #[derive(Serialize)]
    struct Report<'a> {
        host: &'a str,
        user: &'a str,
        uid: u32,
        checks: &'a [Finding],
        exit: u8,
    }
    let report = Report {
        host: &facts.caller.host,
        user: &facts.caller.name,
        uid: facts.caller.uid,
        checks: findings,
        exit: exit_code(findings, strict),
    };
    serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(id: &'static str, status: Status) -> Finding {
        Finding {
            id,
            status,
            detail: format!("{id} detail"),
            fix: (status != Status::Ok).then(|| format!("fix {id}")),
        }
    }

    #[test]
    fn exit_code_is_1_on_a_failure_and_on_a_warning_only_when_strict() {
        let ok = [f("a", Status::Ok), f("b", Status::Skip)];
        assert_eq!(exit_code(&ok, true), 0);
        let warned = [f("a", Status::Ok), f("b", Status::Warn)];
        assert_eq!(exit_code(&warned, false), 0);
        assert_eq!(exit_code(&warned, true), 1);
        let failed = [f("a", Status::Fail), f("b", Status::Warn)];
        assert_eq!(exit_code(&failed, false), 1);
    }

    #[test]
    fn the_text_report_has_one_line_per_check_with_its_fix_and_a_summary() {
        let text = render_text(&[f("epilog", Status::Fail), f("cgroup", Status::Ok)], false);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("FAIL  epilog") && lines[0].ends_with("Fix: fix epilog"));
        assert!(lines[1].starts_with("ok    cgroup") && !lines[1].contains("Fix"));
        assert_eq!(lines[2], "mnd doctor: 1 ok, 1 FAIL; exit 1");
    }

    #[test]
    fn json_statuses_are_lowercase_with_stable_keys() {
        let v = serde_json::to_value(f("munge", Status::Fail)).unwrap();
        assert_eq!(v["id"], "munge");
        assert_eq!(v["status"], "fail");
        assert_eq!(v["detail"], "munge detail");
        assert_eq!(v["fix"], "fix munge");
        let v = serde_json::to_value(f("munge", Status::Ok)).unwrap();
        assert!(v["fix"].is_null());
    }
}
