//! The checks: [`Facts`] in, one [`Finding`] per check out, no I/O. Each message says what
//! is wrong, in which file or by which rule, and the fix.

use super::elf::major_minor;
use super::facts::{
    ConfigFacts, EngineInfo, Facts, Kind, Meta, Outcome, PathFacts, Probe, Role, Seen,
};
use super::plugstack::{self, Entry, PluginLine};
use super::{Finding, Status};
use crate::config::SiteConfig;
use std::path::Path;

/// One thing wrong, with its fix.
struct Problem {
    status: Status,
    what: String,
    fix: String,
}

fn problem(status: Status, what: impl Into<String>, fix: impl Into<String>) -> Problem {
    Problem {
        status,
        what: what.into(),
        fix: fix.into(),
    }
}

/// `ok` with `ok_detail` when nothing is wrong; else the worst status, every problem and
/// every (distinct) fix.
fn finding(id: &'static str, ok_detail: String, problems: Vec<Problem>) -> Finding {
    let Some(status) = problems.iter().map(|p| p.status).max() else {
        return Finding {
            id,
            status: Status::Ok,
            detail: ok_detail,
            fix: None,
        };
    };
    let mut fixes: Vec<&str> = Vec::new();
    for p in &problems {
        if !fixes.contains(&p.fix.as_str()) {
            fixes.push(&p.fix);
        }
    }
    Finding {
        id,
        status,
        detail: problems
            .iter()
            .map(|p| p.what.as_str())
            .collect::<Vec<_>>()
            .join("; "),
        fix: Some(fixes.join("; ")),
    }
}

fn skip(id: &'static str, why: impl Into<String>) -> Finding {
    Finding {
        id,
        status: Status::Skip,
        detail: why.into(),
        fix: None,
    }
}

/// Every check, in the order they are reported.
pub fn check(f: &Facts) -> Vec<Finding> {
    let mut out = vec![
        slurm(f),
        plugstack_check(f),
        plugin(f),
        plugin_args(f),
        helper(f),
        epilog(f),
    ];
    for (i, c) in f.configs.iter().enumerate() {
        out.push(site_config(
            f,
            c,
            if i == 0 {
                "site-config"
            } else {
                "site-config-default"
            },
        ));
    }
    out.extend([
        docker(f),
        size_limit(f),
        munge(f),
        shared_home(f),
        cgroup(f),
        user_mnd(f),
    ]);
    out
}

const SET_UP_DIRECT: &str = "to set up direct mode: scripts/install.sh --plugin, and the line it prints in plugstack.conf on every node and login node (or the package's plugstack.conf.d snippet and an include line)";

/// mnd's plugin line, when plugstack.conf loads it.
fn direct_mode(f: &Facts) -> Option<&PluginLine> {
    f.mnd_lines().first().copied()
}

/// Who other than root could change a file root runs or loads (the file, or a folder
/// above it: whoever can write a folder can swap what is in it). `sticky_ok`: a root-owned
/// sticky folder (`/tmp`) is fine, as nobody can rename another's entry there.
fn not_roots_alone(pf: &PathFacts, sticky_ok: bool) -> Option<String> {
    let m = pf.target?;
    if m.uid != 0 {
        return Some(format!(
            "{} is owned by uid {}, not root",
            pf.path.display(),
            m.uid
        ));
    }
    if m.mode & 0o022 != 0 {
        return Some(format!(
            "{} has mode {:04o}: others can change it",
            pf.path.display(),
            m.mode
        ));
    }
    for (p, fm) in &pf.folders {
        let Some(fm) = fm else {
            continue;
        };
        if fm.uid != 0 {
            return Some(format!(
                "its folder {} is owned by uid {}, not root",
                p.display(),
                fm.uid
            ));
        }
        let sticky = sticky_ok && fm.mode & 0o1000 != 0;
        if fm.mode & 0o022 != 0 && !sticky {
            return Some(format!(
                "its folder {} has mode {:04o}: others can swap what is in it",
                p.display(),
                fm.mode
            ));
        }
    }
    None
}

/// The site config direct mode enforces (the named one, else the default file, else the
/// built-in defaults), or why it is not known.
fn site_policy(f: &Facts) -> Result<(SiteConfig, String), String> {
    let c = f.configs.first().ok_or("no site config was looked at")?;
    match &c.outcome {
        Outcome::Loaded(cfg) => Ok(((**cfg).clone(), c.path.display().to_string())),
        Outcome::Missing if c.roles == [Role::Default] => {
            Ok((SiteConfig::default(), "the built-in defaults".into()))
        }
        _ => Err(format!(
            "the site config {} did not load (see site-config)",
            c.path.display()
        )),
    }
}

fn slurm(f: &Facts) -> Finding {
    let s = &f.slurm;
    let mut problems = Vec::new();
    if let Err(e) = &s.version {
        problems.push(problem(
            Status::Warn,
            format!("no Slurm release found ({e})"),
            "run mnd doctor on a Slurm node, with scontrol on PATH",
        ));
    }
    match &s.settings_from {
        Err(e) => problems.push(problem(
            Status::Warn,
            format!("no Slurm settings: {e}"),
            "check that slurmctld answers (scontrol ping), or name the files: --plugstack FILE --epilog FILE",
        )),
        Ok(from) if from != "scontrol show config" => problems.push(problem(
            Status::Warn,
            format!("Slurm's settings were read from {from}"),
            "check that slurmctld answers (scontrol ping)",
        )),
        Ok(_) => {}
    }
    finding(
        "slurm",
        format!(
            "Slurm {} ({}); settings from scontrol show config",
            s.version.as_deref().unwrap_or("?"),
            s.version_from
        ),
        problems,
    )
}

fn plugstack_check(f: &Facts) -> Finding {
    let p = &f.plugstack;
    let name = format!("{} ({})", p.path.display(), p.from);
    let stack = &p.stack;
    let Some(top) = stack.files.first() else {
        return skip("plugstack", "nothing was read");
    };
    if let Some(e) = &top.error {
        return finding(
            "plugstack",
            String::new(),
            vec![problem(
                Status::Warn,
                format!("cannot read {name}: {e}"),
                "run mnd doctor as root",
            )],
        );
    }
    let mut problems = Vec::new();
    for file in &stack.files[1..] {
        if let Some(e) = &file.error {
            problems.push(problem(
                Status::Warn,
                format!(
                    "cannot read {}, which it includes: {e}",
                    file.path.display()
                ),
                "run mnd doctor as root",
            ));
        } else if file.missing {
            problems.push(problem(
                Status::Warn,
                format!(
                    "{} matches an include line but cannot be opened (a link to a removed file?): Slurm reads it as empty",
                    file.path.display()
                ),
                format!("remove {} or reinstall what it points to", file.path.display()),
            ));
        }
    }
    for e in &stack.entries {
        if let Entry::Invalid { file, line, text } = e {
            problems.push(problem(
                Status::Warn,
                format!(
                    "{}:{line}: Slurm ignores '{text}' (a line is required|optional PATH ARGS or include PATTERN)",
                    file.display()
                ),
                format!("fix or remove {}:{line}", file.display()),
            ));
        }
    }
    let ours = f.mnd_lines();
    let Some(first) = ours.first() else {
        let orphans: Vec<String> = p
            .dropins
            .iter()
            .filter(|d| !stack.reads(d))
            .map(|d| d.display().to_string())
            .collect();
        let includes: Vec<&str> = stack
            .entries
            .iter()
            .filter_map(|e| match e {
                Entry::Include { pattern, .. } => Some(pattern.as_str()),
                _ => None,
            })
            .collect();
        let add_include = format!(
            "add the line `include {}/*.conf` to {}, as its last line (Slurm reads it at every step: no restart)",
            p.dropin_dir.display(),
            p.path.display()
        );
        problems.push(match (top.missing, orphans.is_empty()) {
            (true, false) => problem(
                Status::Fail,
                format!(
                    "{name} does not exist, so Slurm loads no plugin, though {} loads mnd_spank.so",
                    orphans.join(", ")
                ),
                add_include,
            ),
            (false, false) => problem(
                Status::Fail,
                format!(
                    "{} loads mnd_spank.so, but {name} does not include it ({}): Slurm never reads it, so direct mode (srun --mnd-image) is off",
                    orphans.join(", "),
                    if includes.is_empty() {
                        "it has no include line".to_string()
                    } else {
                        format!("its include lines {} match none of it", includes.join(", "))
                    }
                ),
                add_include,
            ),
            (true, true) => problem(
                Status::Warn,
                format!(
                    "{name} does not exist: Slurm loads no SPANK plugin, so direct mode (srun --mnd-image, for users outside group docker) is not set up; the ssh mode needs no plugin"
                ),
                SET_UP_DIRECT,
            ),
            (false, true) => problem(
                Status::Warn,
                format!(
                    "{name} loads no mnd_spank.so{}: direct mode (srun --mnd-image, for users outside group docker) is not set up; the ssh mode needs no plugin",
                    if includes.is_empty() { "" } else { ", nor does any file it includes" }
                ),
                SET_UP_DIRECT,
            ),
        });
        return finding("plugstack", String::new(), problems);
    };
    if ours.len() > 1 {
        problems.push(problem(
            Status::Warn,
            format!(
                "mnd_spank.so is loaded {} times ({}): Slurm refuses a second copy",
                ours.len(),
                ours.iter()
                    .map(|l| l.place())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            "keep one line",
        ));
    }
    let last = ours[ours.len() - 1];
    let move_last = format!(
        "put mnd_spank.so's line (or the include line that brings it) last in {}",
        p.path.display()
    );
    for after in stack.plugins().skip_while(|l| *l != last).skip(1) {
        let symbols = f.plugins.get(&after.path).map(|pf| &pf.symbols);
        let at = format!("{} ({})", after.written, after.place());
        problems.push(match symbols {
            Some(Ok(s)) if s.task_init_privileged => problem(
                Status::Fail,
                format!("{at} is loaded after mnd_spank.so and has a task_init_privileged callback: it runs as root inside the user's image file system (the plugin goes last)"),
                move_last.clone(),
            ),
            Some(Ok(_)) => problem(
                Status::Warn,
                format!("{at} is loaded after mnd_spank.so; it has no task_init_privileged callback (nothing of it runs as root inside the user's image today), but the plugin goes last"),
                move_last.clone(),
            ),
            Some(Err(e)) => problem(
                Status::Warn,
                format!("{at} is loaded after mnd_spank.so and cannot be read ({e}): it may run as root inside the user's image (the plugin goes last)"),
                move_last.clone(),
            ),
            None => problem(
                Status::Warn,
                format!("{at} is loaded after mnd_spank.so (the plugin goes last)"),
                move_last.clone(),
            ),
        });
    }
    let via = if first.file == p.path {
        String::new()
    } else {
        format!(", included by {}", p.path.display())
    };
    finding(
        "plugstack",
        format!(
            "{name} loads {} at {}{via}; it is the last plugin",
            first.written,
            first.place()
        ),
        problems,
    )
}

fn plugin(f: &Facts) -> Finding {
    let Some(line) = direct_mode(f) else {
        return skip(
            "plugin",
            "plugstack.conf loads no mnd_spank.so (see plugstack)",
        );
    };
    let Some(pf) = f.plugins.get(&line.path) else {
        return skip(
            "plugin",
            format!("{} was not looked at", line.path.display()),
        );
    };
    let path = pf.file.path.display();
    let place = line.place();
    let breaks = if line.required {
        "every step on this node fails (the line says required)"
    } else {
        "Slurm goes on without it (optional): --mnd-image is an unknown option"
    };
    let install = format!("install it (scripts/install.sh --plugin, or the mnd-srun-slurm-X.Y package), or correct the path at {place}");
    let mut problems = Vec::new();
    match (&pf.file.own, pf.file.target) {
        (Seen::Missing, _) | (Seen::Found(_), None) => problems.push(problem(
            Status::Fail,
            format!("{path} (named at {place}) does not exist: {breaks}"),
            install,
        )),
        (Seen::Hidden(e), _) => problems.push(problem(
            Status::Warn,
            format!("cannot look at {path}: {e}"),
            "run mnd doctor as root",
        )),
        (Seen::Found(_), Some(m)) if m.kind != Kind::File => problems.push(problem(
            Status::Fail,
            format!("{path} (named at {place}) is not a regular file: {breaks}"),
            install,
        )),
        (Seen::Found(_), Some(_)) => {}
    }
    if !problems.is_empty() {
        return finding("plugin", String::new(), problems);
    }
    if let Some(why) = not_roots_alone(&pf.file, true) {
        problems.push(problem(
            Status::Fail,
            format!("{why}: slurmstepd loads it as root into every step, so whoever can change it is root on this node"),
            format!("chown root:root {path}; chmod 0755 {path}; chmod go-w the folders above it"),
        ));
    }
    let mut ok = format!("{path}: ");
    match &pf.symbols {
        Err(e) => problems.push(problem(
            Status::Warn,
            format!("cannot tell which Slurm {path} was built for: {e}"),
            "rebuild it for this Slurm: scripts/install.sh --plugin",
        )),
        Ok(s) => {
            if let Some(n) = s.name.as_deref().filter(|n| *n != "mnd_spank") {
                problems.push(problem(
                    Status::Warn,
                    format!("{path} calls itself plugin '{n}', not mnd_spank"),
                    format!("check which file {place} names"),
                ));
            }
            match (s.version, &f.slurm.version) {
                (None, _) => problems.push(problem(
                    Status::Fail,
                    format!("{path} exports no plugin_version: Slurm refuses it, so {breaks}"),
                    "rebuild it: scripts/install.sh --plugin",
                )),
                (Some(v), Ok(running)) => {
                    let built = major_minor(v);
                    if running == &built || running.starts_with(&format!("{built}.")) {
                        ok.push_str(&format!(
                            "mnd_spank built for Slurm {built}, and this node runs {running}"
                        ));
                    } else {
                        let mm: String = running.split('.').take(2).collect::<Vec<_>>().join(".");
                        problems.push(problem(
                            Status::Fail,
                            format!(
                                "{path} was built for Slurm {built} but this node runs Slurm {running} ({}): slurmstepd loads a plugin only of its own major.minor ('Incompatible Slurm plugin ... version'), so {breaks}",
                                f.slurm.version_from
                            ),
                            format!("rebuild it for this Slurm: scripts/install.sh --plugin (or scripts/package.sh) with Slurm {mm}'s libslurm-dev, or install the mnd-srun-slurm-{mm} package"),
                        ));
                    }
                }
                (Some(v), Err(e)) => problems.push(problem(
                    Status::Warn,
                    format!(
                        "{path} was built for Slurm {}, and this node's Slurm is not known ({e})",
                        major_minor(v)
                    ),
                    "run mnd doctor where scontrol runs",
                )),
            }
        }
    }
    if let Some(m) = pf.file.target {
        ok.push_str(&format!("; root's, mode {:04o}", m.mode));
    }
    finding("plugin", ok, problems)
}

fn plugin_args(f: &Facts) -> Finding {
    let Some(line) = direct_mode(f) else {
        return skip(
            "plugin-args",
            "plugstack.conf loads no mnd_spank.so (see plugstack)",
        );
    };
    let (args, refused) = plugstack::mnd_args(&line.args);
    let shown = |p: &Option<std::path::PathBuf>, default: &str| {
        p.as_ref().map_or_else(
            || format!("{default} (default)"),
            |p| p.display().to_string(),
        )
    };
    let problems = if refused.is_empty() {
        Vec::new()
    } else {
        vec![problem(
            Status::Fail,
            format!(
                "{}: the plugin refuses {}, so slurmstepd does not load it",
                line.place(),
                refused.join(", ")
            ),
            format!(
                "correct the arguments at {} (see slurm/plugstack.conf.example)",
                line.place()
            ),
        )]
    };
    finding(
        "plugin-args",
        format!(
            "{}: helper={}, config={}, runtime_dir={}",
            line.place(),
            shown(&args.helper, super::facts::DEFAULT_HELPER),
            shown(&args.config, crate::config::DEFAULT_CONFIG_PATH),
            shown(&args.runtime_dir, super::facts::DEFAULT_RUNTIME_DIR)
        ),
        problems,
    )
}

fn helper(f: &Facts) -> Finding {
    let (Some(line), Some(h)) = (direct_mode(f), &f.helper) else {
        return skip(
            "helper",
            "plugstack.conf loads no mnd_spank.so (see plugstack)",
        );
    };
    let path = h.path.display();
    let place = line.place();
    let mut problems = Vec::new();
    match h.target {
        None => problems.push(problem(
            Status::Fail,
            format!("the helper {path} (helper= at {place}, or the plugin's default) does not exist: every --mnd-image step fails"),
            format!("install mnd there (scripts/install.sh --plugin), or set helper= at {place} to the installed mnd"),
        )),
        Some(m) if m.kind != Kind::File => problems.push(problem(
            Status::Fail,
            format!("the helper {path} is not a regular file: every --mnd-image step fails"),
            format!("set helper= at {place} to the installed mnd"),
        )),
        Some(m) => {
            if m.mode & 0o111 == 0 {
                problems.push(problem(
                    Status::Fail,
                    format!("the helper {path} is not executable (mode {:04o})", m.mode),
                    format!("chmod 0755 {path}"),
                ));
            }
            // The plugin's own rule (slurm/spank/src/step.rs): the helper and every folder
            // above it root's and writable by nobody else, links followed, no sticky folder.
            if let Some(why) = not_roots_alone(h, false) {
                problems.push(problem(
                    Status::Fail,
                    format!("the plugin refuses to run the helper {path} ('must be root's and writable by nobody else'): {why}"),
                    format!("chown root:root {path} and the folders above it; chmod go-w them"),
                ));
            }
        }
    }
    let mut ok = format!("{path}: root's and writable by root alone, as is every folder above it");
    if let Some(d) = &f.runtime_dir {
        match (&d.own, d.target) {
            (Seen::Missing, _) => ok.push_str(&format!("; runtime_dir {} is made at the first step", d.path.display())),
            (_, Some(m)) if m.kind == Kind::Dir && m.uid == 0 && m.mode & 0o022 == 0 => {
                ok.push_str(&format!("; runtime_dir {} is root's, mode {:04o}", d.path.display(), m.mode))
            }
            (Seen::Hidden(e), _) => problems.push(problem(
                Status::Warn,
                format!("cannot look at runtime_dir {}: {e}", d.path.display()),
                "run mnd doctor as root",
            )),
            _ => problems.push(problem(
                Status::Fail,
                format!(
                    "runtime_dir {} is not a folder of root's that nobody else can write: the plugin refuses every --mnd-image step",
                    d.path.display()
                ),
                format!(
                    "remove {} (the plugin makes it, root's, 0700), or chown root:root and chmod 0700 it",
                    d.path.display()
                ),
            )),
        }
    }
    finding("helper", ok, problems)
}

/// Whether a script runs mnd's cleanup of a job (what slurm/epilog.sh does).
fn runs_cleanup(text: &str) -> bool {
    code_lines(text).any(|l| l.contains("cleanup --job") && l.contains("--all-users"))
}

/// Whether a script removes the images direct mode's root side pulled for the job.
fn prunes_pulled(text: &str) -> bool {
    code_lines(text).any(|l| l.contains("image prune --pulled"))
}

fn code_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines().filter(|l| !l.trim_start().starts_with('#'))
}

fn epilog(f: &Facts) -> Finding {
    let e = &f.epilog;
    let install = "Epilog=/opt/mnd-srun/slurm/epilog.sh in slurm.conf on every node (the package's: /usr/lib/mnd-srun/epilog.sh), or call it from your Epilog script; then scontrol reconfigure";
    let gone = "nothing removes --mnd-name containers, containers a killed slurmstepd or launcher left, or the images root pulled for a job";
    if e.scripts.is_empty() {
        if f.slurm.settings_from.is_err() && e.from != "--epilog" {
            return finding(
                "epilog",
                String::new(),
                vec![problem(
                    Status::Warn,
                    "cannot tell which Epilog Slurm runs: no Slurm settings (see slurm)",
                    "name it: --epilog FILE",
                )],
            );
        }
        return finding(
            "epilog",
            String::new(),
            vec![problem(
                Status::Fail,
                format!("Slurm runs no Epilog ({} is not set): {gone}", e.from),
                install,
            )],
        );
    }
    let mut problems = Vec::new();
    let mut runs = None;
    let mut prunes = false;
    let mut unreadable = Vec::new();
    for s in &e.scripts {
        let path = s.file.path.display();
        match (&s.file.own, s.file.target) {
            (Seen::Missing, _) | (Seen::Found(_), None) => {
                problems.push(problem(
                    Status::Fail,
                    format!("the Epilog {path} ({}) does not exist: slurmd fails every job's end on this node and drains it", e.from),
                    "install it (scripts/install.sh), or correct Epilog= in slurm.conf",
                ));
                continue;
            }
            (Seen::Hidden(err), _) => {
                problems.push(problem(
                    Status::Warn,
                    format!("cannot look at the Epilog {path}: {err}"),
                    "run mnd doctor as root",
                ));
                continue;
            }
            (Seen::Found(_), Some(m)) => {
                if m.kind != Kind::File {
                    problems.push(problem(
                        Status::Fail,
                        format!("the Epilog {path} is not a regular file"),
                        "correct Epilog= in slurm.conf",
                    ));
                    continue;
                }
                if m.mode & 0o111 == 0 {
                    problems.push(problem(
                        Status::Fail,
                        format!("the Epilog {path} is not executable (mode {:04o}): slurmd fails every job's end and drains the node", m.mode),
                        format!("chmod 0755 {path}"),
                    ));
                }
                if let Some(why) = not_roots_alone(&s.file, true) {
                    problems.push(problem(
                        Status::Fail,
                        format!("{why}: slurmd runs the Epilog as root at every job's end"),
                        format!("chown root:root {path}; chmod 0755 {path}; chmod go-w the folders above it"),
                    ));
                }
            }
        }
        match &s.text {
            Err(err) => unreadable.push(format!("{path} ({err})")),
            Ok(t) => {
                let texts = std::iter::once((s.file.path.as_path(), t.as_str()))
                    .chain(s.called.iter().map(|(p, t)| (p.as_path(), t.as_str())));
                for (p, t) in texts {
                    if runs_cleanup(t) && runs.is_none() {
                        runs = Some((s.file.path.clone(), p.to_path_buf()));
                    }
                    prunes |= prunes_pulled(t);
                }
            }
        }
    }
    let names: Vec<String> = e
        .scripts
        .iter()
        .map(|s| s.file.path.display().to_string())
        .collect();
    match &runs {
        None if !unreadable.is_empty() => problems.push(problem(
            Status::Warn,
            format!(
                "cannot read {} to tell whether it runs mnd's epilog",
                unreadable.join(", ")
            ),
            "run mnd doctor as root",
        )),
        None => problems.push(problem(
            Status::Fail,
            format!(
                "{} ({}) does not run mnd's epilog (no `mnd cleanup --job $SLURM_JOB_ID --all-users` in it, nor in an epilog script it names): {gone}",
                names.join(", "),
                e.from
            ),
            install,
        )),
        Some((_, p)) if !prunes => problems.push(problem(
            Status::Warn,
            format!(
                "{} runs mnd cleanup but not `mnd image prune --pulled --job`: images direct mode's root side pulled stay on the node",
                p.display()
            ),
            "install the current slurm/epilog.sh (scripts/install.sh)",
        )),
        Some(_) => {}
    }
    let ok = match &runs {
        Some((script, p)) if script != p => format!(
            "{} ({}) runs mnd's epilog {}; root's, executable",
            script.display(),
            e.from,
            p.display()
        ),
        Some((script, _)) => format!(
            "{} ({}) is mnd's epilog; root's, executable",
            script.display(),
            e.from
        ),
        None => String::new(),
    };
    finding("epilog", ok, problems)
}

fn site_config(f: &Facts, c: &ConfigFacts, id: &'static str) -> Finding {
    let path = c.path.display();
    let who = c
        .roles
        .iter()
        .map(|r| match r {
            Role::Flag => "given with --config",
            Role::Plugstack => "plugstack's config=, which the root helper enforces",
            Role::Default => "the default file, which mnd-srun reads",
        })
        .collect::<Vec<_>>()
        .join("; ");
    let make_root =
        format!("chown root:root {path}; chmod 0644 {path}; chmod go-w every folder above it");
    let problems = match &c.outcome {
        Outcome::Loaded(cfg) => {
            let p = &cfg.policy;
            return finding(
                id,
                format!(
                    "{path} ({who}): valid, root's alone; writable_layer_size {}, {} allowed_images rule(s), image_share {}",
                    p.writable_layer_size.as_deref().unwrap_or("unset"),
                    p.allowed_images.len(),
                    if cfg.defaults.image_share { "on" } else { "off" }
                ),
                Vec::new(),
            );
        }
        Outcome::Missing if c.roles == [Role::Default] => {
            return finding(
                id,
                format!("{path} ({who}) does not exist: the built-in defaults apply (the safe ones)"),
                Vec::new(),
            )
        }
        Outcome::Missing if c.roles.contains(&Role::Plugstack) => vec![problem(
            Status::Fail,
            format!("{path} ({who}) does not exist: the root helper refuses every --mnd-image step"),
            format!("create it (cp /opt/mnd-srun/etc/config.toml.example {path}), or drop config= from plugstack.conf"),
        )],
        Outcome::Missing => vec![problem(
            Status::Fail,
            format!("{path} ({who}) does not exist"),
            "name an existing file",
        )],
        Outcome::Untrusted(reason) => vec![problem(
            Status::Fail,
            format!("{path} ({who}) is not used: {reason}; every job stops with that reason (the policy is read only from files root alone can change)"),
            make_root,
        )],
        Outcome::Invalid(msg) => vec![problem(
            Status::Fail,
            format!("{msg} ({who}): every job stops with this"),
            format!("correct that key in {path} (README: Site config and policy; the installed etc/config.toml.example)"),
        )],
        Outcome::Unreadable(e) if f.caller.root() => vec![problem(
            Status::Fail,
            format!("cannot read {path} ({who}): {e}"),
            make_root,
        )],
        Outcome::Unreadable(e) if c.roles.contains(&Role::Default) => vec![problem(
            Status::Fail,
            format!("cannot read {path} ({who}) as {}: {e}; mnd-srun reads it as the user, so their jobs stop", f.caller.name),
            format!("chmod 0644 {path} (it holds no secret)"),
        )],
        Outcome::Unreadable(e) => vec![problem(
            Status::Warn,
            format!("cannot read {path} ({who}) as {}: {e}; the root helper reads it as root", f.caller.name),
            "run mnd doctor as root to check it",
        )],
    };
    finding(id, String::new(), problems)
}

/// Whether Docker keeps images in containerd's snapshotter (the rule `Engine::create`
/// applies to size limits).
fn containerd_store(e: &EngineInfo) -> bool {
    e.driver_status
        .iter()
        .any(|(k, v)| k.contains("containerd.snapshotter") || v.contains("containerd.snapshotter"))
}

fn backing_fs(e: &EngineInfo) -> Option<&str> {
    e.driver_status
        .iter()
        .find(|(k, _)| k == "Backing Filesystem")
        .map(|(_, v)| v.as_str())
}

fn store(e: &EngineInfo) -> String {
    if containerd_store(e) {
        format!("Docker's containerd image store ({} snapshotter)", e.driver)
    } else {
        match backing_fs(e) {
            Some(b) => format!("{} on {b}", e.driver),
            None => e.driver.clone(),
        }
    }
}

fn docker(f: &Facts) -> Finding {
    let d = &f.docker;
    let sock = d
        .socket
        .as_ref()
        .map_or_else(|| "DOCKER_HOST".to_string(), |s| s.display().to_string());
    let why = match &d.engine {
        Ok(e) => {
            return finding(
                "docker",
                format!(
                    "Docker {} (API {}) at {sock}; images: {}; root {}",
                    e.version,
                    e.api,
                    store(e),
                    e.root_dir.display()
                ),
                Vec::new(),
            )
        }
        Err(why) => why,
    };
    let start = "start dockerd on this node (systemctl start docker) and check its log";
    let p = if f.caller.root() {
        problem(
            Status::Fail,
            format!("cannot reach Docker as root at {sock}: {why}"),
            start,
        )
    } else {
        match &d.probe {
            Probe::Missing => problem(
                Status::Fail,
                format!("no Docker socket at {sock}: dockerd does not run on this node"),
                format!("admin: {start}"),
            ),
            Probe::Refused => problem(
                Status::Fail,
                format!("nothing answers at {sock}: dockerd is stopped"),
                format!("admin: {start}"),
            ),
            Probe::Denied => {
                let gid = d.socket_meta.map(|m| m.gid);
                let group = d
                    .socket_group
                    .clone()
                    .or(gid.map(|g| format!("gid {g}")))
                    .unwrap_or_else(|| "its group".into());
                let relogin = gid.is_some_and(|g| {
                    f.caller.member_of.contains(&g) && !f.caller.session_groups.contains(&g)
                });
                let mut what = format!(
                    "Docker is not reachable for {} ({sock} is group {group}'s, and {})",
                    f.caller.name,
                    if relogin {
                        "you joined that group after this login"
                    } else {
                        "you are not in that group"
                    }
                );
                if direct_mode(f).is_some() {
                    what.push_str(": expected for users outside group docker. Direct mode (srun --mnd-image=IMAGE) does not need it: its root helper talks to Docker; only the ssh mode on its own (mnd-srun --container) does");
                    problem(
                        Status::Warn,
                        what,
                        if relogin {
                            "log in again for mnd-srun --container (nothing to do for direct mode)"
                                .to_string()
                        } else {
                            format!("nothing for direct mode; for mnd-srun --container ask your admin for group {group}")
                        },
                    )
                } else {
                    what.push_str(", and direct mode is not set up here (see plugstack): you cannot run containers on this node");
                    problem(
                        Status::Fail,
                        what,
                        if relogin {
                            "log in again".to_string()
                        } else {
                            format!("ask your admin for group {group}, or to set up direct mode (the SPANK plugin)")
                        },
                    )
                }
            }
            Probe::NotUnix(host) => problem(
                Status::Fail,
                format!("cannot reach Docker at DOCKER_HOST={host}: {why}"),
                "unset DOCKER_HOST, or start the engine it names",
            ),
            Probe::Answers | Probe::Other(_) => problem(
                Status::Fail,
                format!("cannot reach Docker at {sock}: {why}"),
                format!("admin: {start}"),
            ),
        }
    };
    finding("docker", String::new(), vec![p])
}

fn size_limit(f: &Facts) -> Finding {
    let (cfg, name) = match site_policy(f) {
        Ok(p) => p,
        Err(why) => return skip("size-limit", why),
    };
    let Some(size) = &cfg.policy.writable_layer_size else {
        return finding(
            "size-limit",
            format!("policy.writable_layer_size is not set ({name}): no size limit to keep"),
            Vec::new(),
        );
    };
    let set = format!("policy.writable_layer_size = \"{size}\" ({name})");
    let fails = "Docker takes no size it cannot keep, and mnd-srun runs no container unlimited: every container on this node fails to start, saying so";
    let e = match &f.docker.engine {
        Ok(e) => e,
        Err(_) => {
            return finding(
                "size-limit",
                String::new(),
                vec![problem(
                    Status::Warn,
                    format!(
                    "{set}, and Docker cannot be asked whether its storage keeps it (see docker)"
                ),
                    if f.caller.root() {
                        "start dockerd, then run mnd doctor again"
                    } else {
                        "run mnd doctor as root"
                    },
                )],
            )
        }
    };
    let root = e.root_dir.display();
    let drop = "or drop writable_layer_size from the site config";
    if containerd_store(e) {
        return finding(
            "size-limit",
            String::new(),
            vec![problem(
                Status::Fail,
                format!("{set}, but Docker keeps images in its containerd image store ({}), which takes a size and ignores it: {fails}", e.driver),
                format!("run Docker on overlay2 over xfs with pquota (\"features\": {{\"containerd-snapshotter\": false}} in /etc/docker/daemon.json, {root} on xfs mounted with pquota), {drop}"),
            )],
        );
    }
    let problems = match e.driver.as_str() {
        "overlay2" => {
            let mount = f.docker.root_mount.as_ref();
            let fstype = backing_fs(e)
                .map(str::to_string)
                .or(mount.map(|m| m.fstype.clone()))
                .unwrap_or_else(|| "an unknown filesystem".into());
            let on_xfs = fstype == "xfs" || mount.is_some_and(|m| m.fstype == "xfs");
            let pquota = mount.is_some_and(|m| {
                m.super_options
                    .split(',')
                    .any(|o| o == "prjquota" || o == "pquota")
            });
            match (on_xfs, pquota) {
                (true, true) => Vec::new(),
                (true, false) => vec![problem(
                    Status::Fail,
                    format!(
                        "{set}, but {root} is on xfs mounted without project quotas ({}): {fails}",
                        mount.map_or("options unknown", |m| m.super_options.as_str())
                    ),
                    format!("mount that filesystem with pquota (its fstab options; for /, rootflags=pquota on the kernel command line), then restart dockerd, {drop}"),
                )],
                (false, _) => vec![problem(
                    Status::Fail,
                    format!("{set}, but overlay2 on {fstype} ({root}) cannot limit a container's size: {fails}"),
                    format!("put {root} on xfs mounted with pquota, {drop}"),
                )],
            }
        }
        "btrfs" | "zfs" | "devicemapper" => Vec::new(),
        other => vec![problem(
            Status::Fail,
            format!("{set}, but Docker's storage driver {other} cannot limit a container's size: {fails}"),
            format!("run Docker on overlay2 over xfs with pquota, btrfs or zfs, {drop}"),
        )],
    };
    finding(
        "size-limit",
        format!("{set}: {} keeps it", store(e)),
        problems,
    )
}

fn munge(f: &Facts) -> Finding {
    let m = &f.munge;
    let sock = m.socket.display();
    let share =
        direct_mode(f).is_some() && site_policy(f).map_or(true, |(c, _)| c.defaults.image_share);
    let auth = f
        .slurm
        .first("AuthType")
        .is_some_and(|a| a.contains("munge"));
    let mut needs = Vec::new();
    if auth {
        needs.push("Slurm's auth/munge");
    }
    if share {
        needs.push(
            "direct mode's image share (a node vouches for an image with a MUNGE credential)",
        );
    }
    let needs = needs.join(" and ");
    let fix = "start munged (systemctl start munge); /etc/munge/munge.key must be the same on every node (owner munge, mode 0400)";
    if let Err(e) = &m.answers {
        if needs.is_empty() {
            return skip(
                "munge",
                format!("munged does not answer at {sock} ({e}); nothing here needs it"),
            );
        }
        return finding(
            "munge",
            String::new(),
            vec![problem(
                Status::Fail,
                format!("munged does not answer at {sock} ({e}); {needs} needs it"),
                fix,
            )],
        );
    }
    let problems = match &m.round_trip {
        None if share => vec![problem(
            Status::Fail,
            "munge and unmunge are not installed: direct mode's image share runs them",
            "install the munge package",
        )],
        None => Vec::new(),
        Some(Err(e)) => vec![problem(
            Status::Fail,
            format!("munge -n | unmunge failed: {e}"),
            fix,
        )],
        Some(Ok(_)) => Vec::new(),
    };
    finding(
        "munge",
        format!(
            "munged answers at {sock}{}{}",
            match &m.round_trip {
                Some(Ok(_)) => "; munge -n | unmunge: Success",
                _ => "",
            },
            if needs.is_empty() {
                String::new()
            } else {
                format!("; needed by {needs}")
            }
        ),
        problems,
    )
}

/// How a home's filesystem is shared.
#[derive(Debug, PartialEq, Eq)]
enum Sharing {
    /// A network or cluster filesystem (its name).
    Network(String),
    /// A FUSE filesystem of unknown kind.
    Fuse(String),
    /// A folder of a local filesystem bind-mounted here (a container's volume, a site bind):
    /// shared only if every node mounts the same folder.
    Bind,
    /// A local filesystem.
    Local(String),
    /// Nothing known.
    Unknown,
}

const NETWORK_FS: [&str; 20] = [
    "nfs",
    "nfs4",
    "cifs",
    "smb3",
    "smbfs",
    "ceph",
    "lustre",
    "gpfs",
    "beegfs",
    "fhgfs",
    "glusterfs",
    "afs",
    "gfs2",
    "ocfs2",
    "pvfs2",
    "orangefs",
    "wekafs",
    "panfs",
    "cvfs",
    "vxfs",
];

const NETWORK_FUSE: [&str; 10] = [
    "glusterfs",
    "ceph",
    "ceph-fuse",
    "quobyte",
    "juicefs",
    "lizardfs",
    "mfs",
    "moosefs",
    "beegfs",
    "gcsfuse",
];

/// statfs magic numbers of network and cluster filesystems (linux/magic.h and the vendors').
const NETWORK_MAGIC: [(i64, &str); 13] = [
    (0x6969, "nfs"),
    (0x517b, "smb"),
    (0xff53_4d42, "cifs"),
    (0xfe53_4d42, "smb2"),
    (0x00c3_6400, "ceph"),
    (0x0bd0_0bd0, "lustre"),
    (0x4750_4653, "gpfs"),
    (0x1983_0326, "beegfs"),
    (0x5346_414f, "afs"),
    (0x6b41_4653, "afs"),
    (0x0116_1970, "gfs2"),
    (0x7461_636f, "ocfs2"),
    (0x2003_0528, "orangefs"),
];

const FUSE_MAGIC: i64 = 0x6573_5546;

fn sharing(h: &super::facts::HomeFacts) -> Sharing {
    if let Some(m) = &h.mount {
        let t = m.fstype.as_str();
        if NETWORK_FS.contains(&t) {
            return Sharing::Network(t.into());
        }
        if let Some(sub) = t.strip_prefix("fuse.").or(t.strip_prefix("fuseblk.")) {
            return if NETWORK_FUSE.contains(&sub) {
                Sharing::Network(t.into())
            } else {
                Sharing::Fuse(t.into())
            };
        }
        if t == "fuse" {
            return Sharing::Fuse(t.into());
        }
        return if m.root != "/" && t != "tmpfs" {
            Sharing::Bind
        } else {
            Sharing::Local(t.into())
        };
    }
    match h.magic {
        Some(FUSE_MAGIC) => Sharing::Fuse("fuse".into()),
        Some(x) => NETWORK_MAGIC
            .iter()
            .find(|(m, _)| *m == x)
            .map_or(Sharing::Unknown, |(_, n)| Sharing::Network((*n).into())),
        None => Sharing::Unknown,
    }
}

fn shared_home(f: &Facts) -> Finding {
    let h = &f.home;
    let Some(path) = &h.path else {
        return finding(
            "shared-home",
            String::new(),
            vec![problem(
                Status::Warn,
                format!("no home to check ({})", h.whose),
                "name one: --home DIR",
            )],
        );
    };
    let at = format!("{} ({})", path.display(), h.whose);
    let mount = h.mount.clone().unwrap_or_default();
    let mounted = format!(
        "{} from {}, mounted at {}",
        mount.fstype,
        mount.source,
        mount.mount_point.display()
    );
    let need = "the image share (~/.mnd/images) and the ssh material of hosts mode (~/.mnd/ssh) need a home every node sees";
    let fix = "look from two nodes (`touch ~/.mnd/probe` on one, `ls ~/.mnd/probe` on another); without a home every node sees, push images to a registry, or give --image-cache DIR on a shared filesystem";
    let (status, what) = match sharing(h) {
        Sharing::Network(kind) => {
            return finding(
                "shared-home",
                format!(
                    "{at} is on {kind} ({}): a network filesystem every node can mount",
                    if h.mount.is_some() { mounted } else { "statfs".into() }
                ),
                Vec::new(),
            )
        }
        Sharing::Fuse(kind) => (
            Status::Warn,
            format!("{at} is on a FUSE filesystem ({kind}): shared only if every node mounts the same one, which this node alone cannot tell; {need}"),
        ),
        Sharing::Bind => (
            Status::Warn,
            format!(
                "{at} is on {mounted}, which shows the folder {} of that filesystem (a bind mount, as of a container's volume): shared only if every node mounts that same folder, which this node alone cannot tell; {need}",
                mount.root
            ),
        ),
        Sharing::Local(kind) => (
            Status::Warn,
            format!("{at} is on a local filesystem ({kind} from {}, mounted at {}): other nodes do not see it; {need}", mount.source, mount.mount_point.display()),
        ),
        Sharing::Unknown => (
            Status::Warn,
            format!("cannot tell which filesystem {at} is on; {need}"),
        ),
    };
    finding(
        "shared-home",
        String::new(),
        vec![problem(status, what, fix)],
    )
}

fn cgroup(f: &Facts) -> Finding {
    let c = &f.cgroup;
    let root_v2 = c.v2.iter().find(|(p, _)| p == Path::new("/sys/fs/cgroup"));
    // Controllers Slurm's cgroup plugins use; others on the v2 side of a hybrid (hugetlb,
    // rdma, misc) take nothing from Slurm's cgroup/v1.
    let slurms = |ctl: &str| {
        ctl.split_whitespace()
            .any(|c| ["cpu", "cpuset", "memory", "pids", "io"].contains(&c))
    };
    let v2_controllers: Vec<&(std::path::PathBuf, String)> =
        c.v2.iter().filter(|(_, ctl)| slurms(ctl)).collect();
    let docker = f.docker.engine.as_ref().ok();
    let driver = docker
        .and_then(|e| e.cgroup_driver.as_deref())
        .map(|d| format!(" (driver {d})"))
        .unwrap_or_default();
    let meaning = format!(
        "Slurm's limits (--mem, CPU binding) hold direct mode's tasks, which stay in the step's cgroup; containers, and with them the ssh mode's programs, live in Docker's cgroups{driver}, outside Slurm's limits"
    );
    let slurm_cgroup = ["ProctrackType", "TaskPlugin"]
        .iter()
        .filter_map(|k| f.slurm.first(k))
        .filter(|v| v.contains("cgroup"))
        .collect::<Vec<_>>();
    let uses = if slurm_cgroup.is_empty() {
        String::new()
    } else {
        format!(" (Slurm uses it: {})", slurm_cgroup.join(", "))
    };
    let (version, status, what, fix) = if root_v2.is_some() && c.v1.is_empty() {
        (
            "2",
            Status::Ok,
            format!(
                "cgroup v2 (unified; controllers: {}){uses}: Slurm's cgroup/v2; {meaning}",
                root_v2.map_or("", |(_, ctl)| ctl.as_str())
            ),
            "",
        )
    } else if !c.v1.is_empty() && v2_controllers.is_empty() {
        let hybrid =
            c.v2.first()
                .map(|(p, ctl)| {
                    format!(
                        ", with a v2 tree at {} holding {}",
                        p.display(),
                        if ctl.is_empty() {
                            "no controller (systemd's)".to_string()
                        } else {
                            format!("{ctl}, none Slurm uses")
                        }
                    )
                })
                .unwrap_or_default();
        (
            "1",
            Status::Ok,
            format!(
                "cgroup v1 (legacy; controllers {}{hybrid}){uses}: Slurm's cgroup/v1, which Slurm deprecates; {meaning}",
                c.v1.join(",")
            ),
            "",
        )
    } else if !c.v1.is_empty() {
        (
            "",
            Status::Warn,
            format!(
                "cgroup v1 ({}) and v2 ({}) both hold controllers Slurm uses: Slurm does not support this hybrid",
                c.v1.join(","),
                v2_controllers
                    .iter()
                    .map(|(p, ctl)| format!("{}: {ctl}", p.display()))
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
            "boot with systemd.unified_cgroup_hierarchy=1 (v2), or give every controller to v1",
        )
    } else {
        (
            "",
            Status::Warn,
            "no cgroup hierarchy is mounted under /sys/fs/cgroup".to_string(),
            "mount cgroup2 at /sys/fs/cgroup (systemd does at boot)",
        )
    };
    let mut problems = Vec::new();
    if status != Status::Ok {
        problems.push(problem(status, what.clone(), fix));
    }
    if let Some(dv) = docker.and_then(|e| e.cgroup_version.as_deref()) {
        if !version.is_empty() && dv != version {
            problems.push(problem(
                Status::Warn,
                format!("Docker reports cgroup v{dv} but /sys/fs/cgroup here is v{version}: mnd doctor does not see the node as dockerd does"),
                "run mnd doctor on the node itself, not inside a container",
            ));
        }
    }
    finding("cgroup", what, problems)
}

fn user_mnd(f: &Facts) -> Finding {
    if f.caller.root() {
        return skip("user-mnd", "run as a user to check their ~/.mnd");
    }
    let Some(d) = &f.dot_mnd else {
        return finding(
            "user-mnd",
            String::new(),
            vec![problem(
                Status::Warn,
                format!("cannot look up the home of {}", f.caller.name),
                "check the user database on this node (getent passwd $USER)",
            )],
        );
    };
    let uid = f.caller.uid;
    let dir = d.dir.display();
    let mut problems = Vec::new();
    if let Some(h) = d.home_meta {
        if h.uid != uid && h.uid != 0 {
            problems.push(problem(
                Status::Fail,
                format!(
                    "your home {} is owned by uid {}: its owner could swap ~/.mnd",
                    d.home.display(),
                    h.uid
                ),
                "ask your admin to fix your home's owner",
            ));
        } else if h.mode & 0o022 != 0 {
            problems.push(problem(
                Status::Fail,
                format!("your home {} has mode {:04o}: others could swap ~/.mnd, and mnd refuses ssh material below it", d.home.display(), h.mode),
                format!("chmod go-w {}", d.home.display()),
            ));
        }
    }
    let own = match &d.own {
        Seen::Missing => {
            return finding(
                "user-mnd",
                format!("{dir} does not exist yet: the first job makes it (0700)"),
                problems,
            )
        }
        Seen::Hidden(e) => {
            problems.push(problem(
                Status::Warn,
                format!("cannot look at {dir}: {e}"),
                format!("check {dir}'s owner and mode"),
            ));
            return finding("user-mnd", String::new(), problems);
        }
        Seen::Found(m) => *m,
    };
    let redo = format!("remove {dir} (the next job makes it again; your image share goes with it) or fix it as said");
    match own.kind {
        Kind::Link => problems.push(problem(
            Status::Fail,
            format!("{dir} is a symbolic link: mnd refuses what it cannot open without following links"),
            "replace the link with a folder of yours; for another place use --ssh-dir DIR and --image-cache DIR",
        )),
        Kind::Dir => {}
        _ => problems.push(problem(
            Status::Fail,
            format!("{dir} is not a folder"),
            redo.clone(),
        )),
    }
    if own.uid != uid {
        problems.push(problem(
            Status::Fail,
            format!("{dir} is owned by uid {}, not by you (uid {uid})", own.uid),
            redo.clone(),
        ));
    } else if own.mode & 0o022 != 0 {
        problems.push(problem(
            Status::Fail,
            format!("{dir} has mode {:04o}: others can write it", own.mode),
            format!("chmod 700 {dir}"),
        ));
    } else if own.mode & 0o077 != 0 {
        problems.push(problem(
            Status::Warn,
            format!("{dir} has mode {:04o}: others can look into it", own.mode),
            format!("chmod 700 {dir}"),
        ));
    }
    let list = |pick: &dyn Fn(&std::path::Path, &Meta) -> bool| -> Vec<String> {
        d.entries
            .iter()
            .filter(|(p, m)| pick(p, m))
            .map(|(p, _)| p.display().to_string())
            .collect()
    };
    let links = list(&|_, m| m.kind == Kind::Link);
    if !links.is_empty() {
        problems.push(problem(
            Status::Fail,
            format!("symbolic links in {dir}: {} (mnd opens what is in it without following links, and refuses these)", links.join(", ")),
            "remove them (the next job makes what it needs); for another place use --ssh-dir DIR or --image-cache DIR",
        ));
    }
    let foreign = list(&|_, m| m.uid != uid && m.kind != Kind::Link);
    if !foreign.is_empty() {
        problems.push(problem(
            Status::Fail,
            format!("not yours, in {dir}: {}", foreign.join(", ")),
            redo.clone(),
        ));
    }
    let writable = list(&|_, m| m.mode & 0o022 != 0 && m.kind != Kind::Link);
    if !writable.is_empty() {
        problems.push(problem(
            Status::Fail,
            format!("others can write, in {dir}: {}", writable.join(", ")),
            format!("chmod -R go-w {dir}"),
        ));
    }
    let private = |p: &std::path::Path, m: &Meta| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let share_dir = m.kind == Kind::Dir
            && (p == Path::new("images") || p.parent() == Some(Path::new("images")));
        let key = m.kind == Kind::File
            && p.starts_with("ssh")
            && ["id_ed25519", "host_ed25519", "control_key"].contains(&name);
        (share_dir || key) && m.mode & 0o077 != 0
    };
    let open = list(&private);
    if !open.is_empty() {
        problems.push(problem(
            Status::Fail,
            format!("others can read, in {dir}: {} (keys and the image share must be yours alone; mnd refuses them)", open.join(", ")),
            format!("chmod -R go-rwx {dir}"),
        ));
    }
    finding(
        "user-mnd",
        format!(
            "{dir}: yours, mode {:04o}, {} entr{}{}, no links",
            own.mode,
            d.entries.len(),
            if d.entries.len() == 1 { "y" } else { "ies" },
            if d.truncated {
                " (more not listed)"
            } else {
                ""
            }
        ),
        problems,
    )
}

#[cfg(test)]
mod tests {
    use super::super::elf::Symbols;
    use super::super::facts::*;
    use super::super::plugstack::{self, tests::MemFs};
    use super::*;
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    fn meta(kind: Kind, uid: u32, mode: u32) -> Meta {
        Meta {
            kind,
            uid,
            gid: 0,
            mode,
        }
    }

    /// A root-owned path with root-owned 0755 folders above it.
    fn owned(path: &str, kind: Kind, uid: u32, mode: u32) -> PathFacts {
        let m = meta(kind, uid, mode);
        PathFacts {
            path: PathBuf::from(path),
            own: Seen::Found(m),
            target: Some(m),
            folders: Path::new(path)
                .ancestors()
                .skip(1)
                .map(|p| (p.to_path_buf(), Some(meta(Kind::Dir, 0, 0o755))))
                .collect(),
        }
    }

    fn missing(path: &str) -> PathFacts {
        PathFacts {
            path: PathBuf::from(path),
            own: Seen::Missing,
            target: None,
            folders: Vec::new(),
        }
    }

    const PLUGIN: &str = "/opt/mnd-srun/lib/mnd_spank.so";
    const EPILOG: &str = "/opt/mnd-srun/slurm/epilog.sh";
    const EPILOG_TEXT: &str = "#!/bin/sh\ntimeout 60 \"$mnd\" cleanup --job \"$SLURM_JOB_ID\" --all-users || true\ntimeout 60 \"$mnd\" image prune --pulled --job \"$SLURM_JOB_ID\"\n";

    fn stack_of(files: &[(&str, &str)]) -> plugstack::Stack {
        let mut all = files.to_vec();
        all.push((PLUGIN, ""));
        plugstack::load(
            Path::new("/etc/slurm/plugstack.conf"),
            &[PathBuf::from("/usr/lib/x86_64-linux-gnu/slurm-wlm")],
            &MemFs::with(&all),
        )
    }

    fn mnd_symbols(version: u32) -> Result<Symbols, String> {
        Ok(Symbols {
            name: Some("mnd_spank".into()),
            version: Some(version),
            task_init_privileged: true,
        })
    }

    /// A node as `vcluster up` makes it (22.05, the install script's layout), all well.
    fn healthy() -> Facts {
        let stack = stack_of(&[(
            "/etc/slurm/plugstack.conf",
            "required /opt/mnd-srun/lib/mnd_spank.so helper=/opt/mnd-srun/bin/mnd\n",
        )]);
        let mut plugins = BTreeMap::new();
        plugins.insert(
            PathBuf::from(PLUGIN),
            PluginFile {
                file: owned(PLUGIN, Kind::File, 0, 0o755),
                symbols: mnd_symbols(0x160500),
            },
        );
        Facts {
            caller: Caller {
                uid: 0,
                name: "root".into(),
                host: "node1".into(),
                home: Some("/root".into()),
                session_groups: vec![0],
                member_of: vec![0],
            },
            slurm: SlurmFacts {
                version: Ok("22.05.8".into()),
                version_from: "scontrol --version".into(),
                settings: vec![
                    ("Epilog".into(), EPILOG.into()),
                    ("PlugStackConfig".into(), "/etc/slurm/plugstack.conf".into()),
                    ("AuthType".into(), "auth/munge".into()),
                    ("ProctrackType".into(), "proctrack/cgroup".into()),
                ],
                settings_from: Ok("scontrol show config".into()),
            },
            plugstack: PlugstackFacts {
                path: "/etc/slurm/plugstack.conf".into(),
                from: "Slurm's PlugStackConfig".into(),
                stack,
                dropin_dir: "/etc/slurm/plugstack.conf.d".into(),
                dropins: Vec::new(),
            },
            plugins,
            helper: Some(owned("/opt/mnd-srun/bin/mnd", Kind::File, 0, 0o755)),
            runtime_dir: Some(owned("/run/mnd-spank", Kind::Dir, 0, 0o700)),
            epilog: EpilogFacts {
                from: "Slurm's Epilog".into(),
                scripts: vec![EpilogScript {
                    file: owned(EPILOG, Kind::File, 0, 0o755),
                    text: Ok(EPILOG_TEXT.into()),
                    called: Vec::new(),
                }],
            },
            configs: vec![ConfigFacts {
                path: "/etc/mnd-srun/config.toml".into(),
                roles: vec![Role::Default],
                outcome: Outcome::Missing,
            }],
            docker: DockerFacts {
                socket: Some("/var/run/docker.sock".into()),
                socket_meta: Some(Meta {
                    kind: Kind::Other,
                    uid: 0,
                    gid: 998,
                    mode: 0o660,
                }),
                socket_group: Some("docker".into()),
                probe: Probe::Answers,
                engine: Ok(EngineInfo {
                    version: "20.10.24".into(),
                    api: "1.41".into(),
                    driver: "overlay2".into(),
                    driver_status: vec![("Backing Filesystem".into(), "extfs".into())],
                    root_dir: "/var/lib/docker".into(),
                    cgroup_version: Some("1".into()),
                    cgroup_driver: Some("cgroupfs".into()),
                }),
                root_mount: Some(Mount {
                    mount_point: "/var/lib/docker".into(),
                    root: "/".into(),
                    fstype: "ext4".into(),
                    source: "/dev/vda".into(),
                    super_options: "rw".into(),
                }),
            },
            munge: MungeFacts {
                socket: "/run/munge/munge.socket.2".into(),
                answers: Ok(()),
                round_trip: Some(Ok(0)),
            },
            home: HomeFacts {
                path: Some("/home/alice".into()),
                whose: "alice's home".into(),
                magic: Some(0x6969),
                mount: Some(Mount {
                    mount_point: "/home".into(),
                    root: "/".into(),
                    fstype: "nfs4".into(),
                    source: "nas:/home".into(),
                    super_options: "rw,vers=4.2".into(),
                }),
            },
            cgroup: CgroupFacts {
                v1: vec!["cpu".into(), "memory".into()],
                v2: vec![("/sys/fs/cgroup/unified".into(), String::new())],
            },
            dot_mnd: None,
        }
    }

    /// The same node seen by dave (uid 1004, not in group docker), with a sane ~/.mnd.
    fn as_dave(mut f: Facts) -> Facts {
        f.caller = Caller {
            uid: 1004,
            name: "dave".into(),
            host: "node1".into(),
            home: Some("/home/dave".into()),
            session_groups: vec![1004],
            member_of: vec![1004],
        };
        f.docker.probe = Probe::Denied;
        f.docker.engine = Err("cannot reach the Docker engine: client error (Connect)".into());
        f.docker.root_mount = None;
        f.dot_mnd = Some(DotMndFacts {
            home: "/home/dave".into(),
            home_meta: Some(meta(Kind::Dir, 1004, 0o750)),
            dir: "/home/dave/.mnd".into(),
            own: Seen::Found(meta(Kind::Dir, 1004, 0o700)),
            entries: vec![
                ("images".into(), meta(Kind::Dir, 1004, 0o700)),
                ("images/tags".into(), meta(Kind::Dir, 1004, 0o700)),
                ("ssh".into(), meta(Kind::Dir, 1004, 0o700)),
                ("ssh/v1".into(), meta(Kind::Dir, 1004, 0o700)),
                ("ssh/v1/id_ed25519".into(), meta(Kind::File, 1004, 0o600)),
                (
                    "ssh/v1/authorized_keys".into(),
                    meta(Kind::File, 1004, 0o600),
                ),
            ],
            truncated: false,
        });
        f
    }

    fn one<'a>(all: &'a [Finding], id: &str) -> &'a Finding {
        all.iter()
            .find(|x| x.id == id)
            .unwrap_or_else(|| panic!("no {id}"))
    }

    /// The check `id` on `f`: its status, and detail and fix in one text.
    fn run(f: &Facts, id: &str) -> (Status, String) {
        let all = check(f);
        let x = one(&all, id);
        (
            x.status,
            format!("{} | Fix: {}", x.detail, x.fix.as_deref().unwrap_or("-")),
        )
    }

    #[test]
    fn a_healthy_node_is_all_ok_and_skips_the_user_check_as_root() {
        let all = check(&healthy());
        for x in &all {
            let want = if x.id == "user-mnd" {
                Status::Skip
            } else {
                Status::Ok
            };
            assert_eq!(x.status, want, "{x:?}");
            assert_eq!(
                x.fix.is_some(),
                x.status != Status::Ok && x.status != Status::Skip
            );
        }
        assert_eq!(super::super::exit_code(&all, true), 0);
        let ids: Vec<&str> = all.iter().map(|x| x.id).collect();
        assert_eq!(
            ids,
            [
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
                "shared-home",
                "cgroup",
                "user-mnd"
            ]
        );
        let (_, text) = run(&healthy(), "plugin");
        assert!(
            text.contains("built for Slurm 22.05, and this node runs 22.05.8"),
            "{text}"
        );
    }

    #[test]
    fn slurm_without_scontrol_warns() {
        let mut f = healthy();
        f.slurm.version = Err("cannot run scontrol: No such file".into());
        f.slurm.settings_from = Err("cannot run scontrol".into());
        let (s, text) = run(&f, "slurm");
        assert_eq!(s, Status::Warn);
        assert!(
            text.contains("no Slurm release") && text.contains("--plugstack FILE"),
            "{text}"
        );
        // The plugin's Slurm is then unknown: said, not failed.
        let (s, text) = run(&f, "plugin");
        assert_eq!(s, Status::Warn, "{text}");
        assert!(text.contains("built for Slurm 22.05"), "{text}");
    }

    #[test]
    fn a_drop_in_that_plugstack_does_not_include_fails_with_the_include_line() {
        let mut f = healthy();
        f.plugstack.stack =
            stack_of(&[("/etc/slurm/plugstack.conf", "optional /usr/lib/other.so\n")]);
        f.plugstack.dropins = vec!["/etc/slurm/plugstack.conf.d/mnd-srun.conf".into()];
        let (s, text) = run(&f, "plugstack");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("/etc/slurm/plugstack.conf.d/mnd-srun.conf loads mnd_spank.so")
                && text.contains("it has no include line")
                && text.contains("include /etc/slurm/plugstack.conf.d/*.conf"),
            "{text}"
        );
        // The plugin's own checks then have nothing to look at.
        for id in ["plugin", "plugin-args", "helper"] {
            assert_eq!(run(&f, id).0, Status::Skip, "{id}");
        }
        // An include line that matches other names.
        f.plugstack.stack = stack_of(&[
            (
                "/etc/slurm/plugstack.conf",
                "include /etc/slurm/plugstack.conf.d/*.cfg\n",
            ),
            (
                "/etc/slurm/plugstack.conf.d/mnd-srun.conf",
                "required /x/mnd_spank.so\n",
            ),
        ]);
        let (s, text) = run(&f, "plugstack");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("its include lines /etc/slurm/plugstack.conf.d/*.cfg match none of it"),
            "{text}"
        );
        // Included: fine.
        f.plugstack.stack = stack_of(&[
            (
                "/etc/slurm/plugstack.conf",
                "include /etc/slurm/plugstack.conf.d/*.conf\n",
            ),
            (
                "/etc/slurm/plugstack.conf.d/mnd-srun.conf",
                "required /opt/mnd-srun/lib/mnd_spank.so\n",
            ),
        ]);
        let (s, text) = run(&f, "plugstack");
        assert_eq!(s, Status::Ok, "{text}");
        assert!(
            text.contains("included by /etc/slurm/plugstack.conf"),
            "{text}"
        );
    }

    #[test]
    fn no_plugin_at_all_is_a_warning_that_direct_mode_is_off() {
        let mut f = healthy();
        f.plugstack.stack = stack_of(&[("/etc/slurm/other", "")]);
        let (s, text) = run(&f, "plugstack");
        assert_eq!(s, Status::Warn);
        assert!(
            text.contains("does not exist") && text.contains("direct mode"),
            "{text}"
        );
        f.plugstack.stack = stack_of(&[("/etc/slurm/plugstack.conf", "# nothing\n")]);
        let (s, text) = run(&f, "plugstack");
        assert_eq!(s, Status::Warn);
        assert!(
            text.contains("loads no mnd_spank.so") && text.contains("scripts/install.sh --plugin"),
            "{text}"
        );
    }

    #[test]
    fn a_plugin_after_ours_with_a_privileged_callback_fails_and_without_one_warns() {
        let mut f = healthy();
        f.plugstack.stack = stack_of(&[
            (
                "/etc/slurm/plugstack.conf",
                "required /opt/mnd-srun/lib/mnd_spank.so\nrequired /usr/lib/site.so\nbogus line\n",
            ),
            ("/usr/lib/site.so", ""),
        ]);
        let site = |privileged| PluginFile {
            file: owned("/usr/lib/site.so", Kind::File, 0, 0o755),
            symbols: Ok(Symbols {
                name: Some("site".into()),
                version: Some(0x160500),
                task_init_privileged: privileged,
            }),
        };
        f.plugins.insert("/usr/lib/site.so".into(), site(true));
        let (s, text) = run(&f, "plugstack");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("/usr/lib/site.so (/etc/slurm/plugstack.conf:2) is loaded after mnd_spank.so and has a task_init_privileged callback")
                && text.contains("Slurm ignores 'bogus line'")
                && text.contains("put mnd_spank.so's line"),
            "{text}"
        );
        f.plugins.insert("/usr/lib/site.so".into(), site(false));
        let (s, text) = run(&f, "plugstack");
        assert_eq!(s, Status::Warn, "{text}");
    }

    #[test]
    fn a_plugin_built_for_another_slurm_fails_with_the_rebuild() {
        let mut f = healthy();
        f.slurm.version = Ok("24.11.5".into());
        let (s, text) = run(&f, "plugin");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("built for Slurm 22.05 but this node runs Slurm 24.11.5")
                && text.contains("every step on this node fails")
                && text.contains("mnd-srun-slurm-24.11"),
            "{text}"
        );
    }

    #[test]
    fn a_missing_or_writable_plugin_fails() {
        let mut f = healthy();
        f.plugins.get_mut(Path::new(PLUGIN)).unwrap().file = missing(PLUGIN);
        let (s, text) = run(&f, "plugin");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("does not exist") && text.contains("plugstack.conf:1"),
            "{text}"
        );
        let mut f = healthy();
        f.plugins.get_mut(Path::new(PLUGIN)).unwrap().file = owned(PLUGIN, Kind::File, 1001, 0o755);
        let (s, text) = run(&f, "plugin");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("owned by uid 1001") && text.contains("chown root:root"),
            "{text}"
        );
        let mut f = healthy();
        f.plugins.get_mut(Path::new(PLUGIN)).unwrap().symbols = Err("it is not an ELF file".into());
        assert_eq!(run(&f, "plugin").0, Status::Warn);
    }

    #[test]
    fn plugin_arguments_the_plugin_refuses_fail() {
        let mut f = healthy();
        f.plugstack.stack = stack_of(&[(
            "/etc/slurm/plugstack.conf",
            "required /opt/mnd-srun/lib/mnd_spank.so helper=mnd colour=blue\n",
        )]);
        let (s, text) = run(&f, "plugin-args");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("'helper=mnd' needs an absolute path")
                && text.contains("plugstack.conf:1"),
            "{text}"
        );
    }

    #[test]
    fn a_helper_others_can_change_is_refused_as_the_plugin_would() {
        let mut f = healthy();
        let mut h = owned("/opt/mnd-srun/bin/mnd", Kind::File, 0, 0o755);
        h.folders[0].1 = Some(meta(Kind::Dir, 0, 0o1777));
        f.helper = Some(h);
        let (s, text) = run(&f, "helper");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("its folder /opt/mnd-srun/bin has mode 1777")
                && text.contains("must be root's and writable by nobody else"),
            "{text}"
        );
        f.helper = Some(missing("/opt/mnd-srun/bin/mnd"));
        assert!(run(&f, "helper").1.contains("does not exist"));
        let mut f = healthy();
        f.runtime_dir = Some(owned("/run/mnd-spank", Kind::Dir, 1001, 0o700));
        let (s, text) = run(&f, "helper");
        assert_eq!(s, Status::Fail);
        assert!(text.contains("runtime_dir /run/mnd-spank"), "{text}");
    }

    #[test]
    fn an_epilog_that_is_not_mnds_fails_and_one_calling_it_passes() {
        let mut f = healthy();
        f.epilog.scripts[0].text =
            Ok("#!/bin/sh\n# mnd cleanup --job x --all-users\nexit 0\n".into());
        let (s, text) = run(&f, "epilog");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("does not run mnd's epilog")
                && text.contains("Epilog=/opt/mnd-srun/slurm/epilog.sh"),
            "{text}"
        );
        f.epilog.scripts[0].called = vec![(EPILOG.into(), EPILOG_TEXT.into())];
        f.epilog.scripts[0].file = owned("/etc/slurm/epilog.site", Kind::File, 0, 0o755);
        let (s, text) = run(&f, "epilog");
        assert_eq!(s, Status::Ok, "{text}");
        assert!(
            text.contains("runs mnd's epilog /opt/mnd-srun/slurm/epilog.sh"),
            "{text}"
        );
    }

    #[test]
    fn no_epilog_a_missing_one_or_a_writable_one_fails_and_an_old_one_warns() {
        let mut f = healthy();
        f.epilog.scripts.clear();
        let (s, text) = run(&f, "epilog");
        assert_eq!(s, Status::Fail);
        assert!(text.contains("Slurm runs no Epilog"), "{text}");
        let mut f = healthy();
        f.epilog.scripts[0].file = missing(EPILOG);
        assert!(run(&f, "epilog").1.contains("drains it"));
        let mut f = healthy();
        f.epilog.scripts[0].file = owned(EPILOG, Kind::File, 0, 0o775);
        let (s, text) = run(&f, "epilog");
        assert_eq!(s, Status::Fail);
        assert!(text.contains("mode 0775: others can change it"), "{text}");
        let mut f = healthy();
        f.epilog.scripts[0].text =
            Ok("\"$mnd\" cleanup --job \"$SLURM_JOB_ID\" --all-users\n".into());
        assert_eq!(run(&f, "epilog").0, Status::Warn);
    }

    #[test]
    fn a_site_config_others_can_change_or_a_broken_one_fails() {
        let mut f = healthy();
        f.configs[0] = ConfigFacts {
            path: "/tmp/x/config.toml".into(),
            roles: vec![Role::Flag],
            outcome: Outcome::Untrusted(
                "it /tmp/x/config.toml has mode 0664: others can change it".into(),
            ),
        };
        let (s, text) = run(&f, "site-config");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("mode 0664") && text.contains("chmod 0644 /tmp/x/config.toml"),
            "{text}"
        );
        f.configs[0].outcome = Outcome::Invalid(
            "site config /tmp/x/config.toml, line 3: unknown field `wait_timeot`".into(),
        );
        let (s, text) = run(&f, "site-config");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("line 3") && text.contains("wait_timeot"),
            "{text}"
        );
        // plugstack's config= must exist; the default file need not.
        f.configs = vec![
            ConfigFacts {
                path: "/etc/mnd-srun/direct.toml".into(),
                roles: vec![Role::Plugstack],
                outcome: Outcome::Missing,
            },
            ConfigFacts {
                path: "/etc/mnd-srun/config.toml".into(),
                roles: vec![Role::Default],
                outcome: Outcome::Missing,
            },
        ];
        let all = check(&f);
        assert_eq!(one(&all, "site-config").status, Status::Fail);
        assert_eq!(one(&all, "site-config-default").status, Status::Ok);
        // A user who cannot read the launcher's config cannot run jobs.
        let mut f = as_dave(healthy());
        f.configs[0].outcome = Outcome::Unreadable("Permission denied (os error 13)".into());
        let (s, text) = run(&f, "site-config");
        assert_eq!(s, Status::Fail);
        assert!(text.contains("as dave"), "{text}");
    }

    #[test]
    fn docker_out_of_reach_fails_for_root_and_is_expected_for_a_user_outside_the_group() {
        let mut f = healthy();
        f.docker.engine = Err("cannot reach the Docker engine: no answer within 10 s".into());
        let (s, text) = run(&f, "docker");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("as root") && text.contains("start dockerd"),
            "{text}"
        );
        let f = as_dave(healthy());
        let (s, text) = run(&f, "docker");
        assert_eq!(s, Status::Warn);
        assert!(
            text.contains("not reachable for dave")
                && text.contains("group docker's")
                && text.contains("expected")
                && text.contains("Direct mode (srun --mnd-image=IMAGE) does not need it"),
            "{text}"
        );
        // Without direct mode he can run nothing.
        let mut f = as_dave(healthy());
        f.plugstack.stack = stack_of(&[("/etc/slurm/plugstack.conf", "")]);
        assert_eq!(run(&f, "docker").0, Status::Fail);
        // A stopped dockerd is no permission matter.
        let mut f = as_dave(healthy());
        f.docker.probe = Probe::Refused;
        assert!(run(&f, "docker").1.contains("dockerd is stopped"));
    }

    #[test]
    fn a_size_limit_the_storage_cannot_keep_fails() {
        let mut f = healthy();
        let mut cfg = SiteConfig::default();
        cfg.policy.writable_layer_size = Some("20G".into());
        f.configs[0].outcome = Outcome::Loaded(Box::new(cfg));
        let (s, text) = run(&f, "size-limit");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("overlay2 on extfs") && text.contains("pquota"),
            "{text}"
        );
        // xfs without pquota.
        let engine = f.docker.engine.as_mut().unwrap();
        engine.driver_status = vec![("Backing Filesystem".into(), "xfs".into())];
        let mount = f.docker.root_mount.as_mut().unwrap();
        mount.fstype = "xfs".into();
        mount.super_options = "rw,attr2,noquota".into();
        let (s, text) = run(&f, "size-limit");
        assert_eq!(s, Status::Fail);
        assert!(text.contains("without project quotas"), "{text}");
        f.docker.root_mount.as_mut().unwrap().super_options = "rw,attr2,prjquota".into();
        assert_eq!(run(&f, "size-limit").0, Status::Ok);
        // Docker's containerd image store.
        let engine = f.docker.engine.as_mut().unwrap();
        engine.driver = "overlayfs".into();
        engine.driver_status = vec![("driver-type".into(), "io.containerd.snapshotter.v1".into())];
        let (s, text) = run(&f, "size-limit");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("containerd image store") && text.contains("containerd-snapshotter"),
            "{text}"
        );
        // Unset: nothing to keep.
        assert_eq!(run(&healthy(), "size-limit").0, Status::Ok);
    }

    #[test]
    fn munge_not_answering_fails_where_it_is_needed() {
        let mut f = healthy();
        f.munge.answers = Err("No such file or directory (os error 2)".into());
        let (s, text) = run(&f, "munge");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("auth/munge")
                && text.contains("image share")
                && text.contains("start munged"),
            "{text}"
        );
        let mut f = healthy();
        f.munge.round_trip = Some(Err("unmunge: Invalid credential (6)".into()));
        assert_eq!(run(&f, "munge").0, Status::Fail);
        let mut f = healthy();
        f.munge.round_trip = None;
        assert!(run(&f, "munge").1.contains("not installed"));
        // Nobody needs it: skipped.
        let mut f = healthy();
        f.slurm.settings.retain(|(k, _)| k != "AuthType");
        f.plugstack.stack = stack_of(&[("/etc/slurm/plugstack.conf", "")]);
        f.munge.answers = Err("refused".into());
        assert_eq!(run(&f, "munge").0, Status::Skip);
    }

    #[test]
    fn a_home_that_is_not_on_a_network_filesystem_warns_saying_why() {
        let mut f = healthy();
        f.home.mount = Some(Mount {
            mount_point: "/shared".into(),
            root: "/var/lib/mnd-vcluster/shared".into(),
            fstype: "ext4".into(),
            source: "/dev/vda".into(),
            super_options: "rw".into(),
        });
        let (s, text) = run(&f, "shared-home");
        assert_eq!(s, Status::Warn);
        assert!(
            text.contains("bind mount")
                && text.contains("/var/lib/mnd-vcluster/shared")
                && text.contains("cannot tell"),
            "{text}"
        );
        f.home.mount.as_mut().unwrap().root = "/".into();
        let (s, text) = run(&f, "shared-home");
        assert_eq!(s, Status::Warn);
        assert!(text.contains("local filesystem"), "{text}");
        f.home.mount.as_mut().unwrap().fstype = "fuse.sshfs".into();
        assert!(run(&f, "shared-home").1.contains("FUSE"));
        f.home.mount.as_mut().unwrap().fstype = "fuse.glusterfs".into();
        assert_eq!(run(&f, "shared-home").0, Status::Ok);
        f.home.mount = None;
        f.home.magic = Some(0x0bd0_0bd0);
        assert!(run(&f, "shared-home").1.contains("lustre"));
        f.home.path = None;
        assert!(run(&f, "shared-home").1.contains("--home DIR"));
    }

    #[test]
    fn cgroup_versions_are_named_and_a_mixed_hybrid_warns() {
        let (s, text) = run(&healthy(), "cgroup");
        assert_eq!(s, Status::Ok);
        assert!(
            text.contains("cgroup v1")
                && text.contains("proctrack/cgroup")
                && text.contains("outside Slurm's limits"),
            "{text}"
        );
        let mut f = healthy();
        f.cgroup = CgroupFacts {
            v1: Vec::new(),
            v2: vec![("/sys/fs/cgroup".into(), "cpuset cpu io memory pids".into())],
        };
        let (s, text) = run(&f, "cgroup");
        assert_eq!(s, Status::Warn, "Docker says v1: {text}");
        f.docker.engine.as_mut().unwrap().cgroup_version = Some("2".into());
        let (s, text) = run(&f, "cgroup");
        assert_eq!(s, Status::Ok);
        assert!(text.contains("cgroup v2"), "{text}");
        f.cgroup.v1 = vec!["memory".into()];
        assert_eq!(run(&f, "cgroup").0, Status::Warn);
        // A hybrid whose v2 side holds only what Slurm does not use is v1 (the test
        // cluster's host: hugetlb on v2).
        let mut f = healthy();
        f.cgroup.v2[0].1 = "hugetlb".into();
        let (s, text) = run(&f, "cgroup");
        assert_eq!(s, Status::Ok);
        assert!(text.contains("holding hugetlb, none Slurm uses"), "{text}");
        f.cgroup = CgroupFacts::default();
        assert_eq!(run(&f, "cgroup").0, Status::Warn);
    }

    #[test]
    fn a_users_mnd_folder_with_links_or_open_modes_fails() {
        let f = as_dave(healthy());
        let (s, text) = run(&f, "user-mnd");
        assert_eq!(s, Status::Ok, "{text}");
        let mut f = as_dave(healthy());
        let d = f.dot_mnd.as_mut().unwrap();
        d.entries
            .push(("images/words".into(), meta(Kind::Link, 1004, 0o777)));
        d.entries[4].1.mode = 0o644;
        let (s, text) = run(&f, "user-mnd");
        assert_eq!(s, Status::Fail);
        assert!(
            text.contains("symbolic links in /home/dave/.mnd: images/words")
                && text.contains("ssh/v1/id_ed25519"),
            "{text}"
        );
        let mut f = as_dave(healthy());
        f.dot_mnd.as_mut().unwrap().own = Seen::Found(meta(Kind::Dir, 1004, 0o755));
        let (s, text) = run(&f, "user-mnd");
        assert_eq!(s, Status::Warn);
        assert!(text.contains("chmod 700"), "{text}");
        let mut f = as_dave(healthy());
        f.dot_mnd.as_mut().unwrap().own = Seen::Found(meta(Kind::Link, 1004, 0o777));
        assert_eq!(run(&f, "user-mnd").0, Status::Fail);
        let mut f = as_dave(healthy());
        f.dot_mnd.as_mut().unwrap().own = Seen::Missing;
        assert!(run(&f, "user-mnd").1.contains("first job makes it"));
    }
}
