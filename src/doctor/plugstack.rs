//! plugstack.conf as Slurm reads it (`src/common/plugstack.c`): each line is `required
//! PATH ARGS...`, `optional PATH ARGS...` or `include PATTERN`, `#` starts a comment; an
//! include pattern that is not absolute is taken from the including file's folder and
//! expanded with glob(3) (sorted, names starting with `.` only when the pattern says so; no
//! match is no error); a missing file is an empty one; a relative plugin path is looked up
//! in `PluginDir`. Plugins load (and run) in the order of this expansion.
//!
//! The file system is reached through [`Fs`], so the rules are tested on files in memory.

use std::path::{Path, PathBuf};

/// A `required`/`optional` line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PluginLine {
    /// The file the line is in.
    pub file: PathBuf,
    /// Its line number (1-based).
    pub line: usize,
    /// `required` (else `optional`).
    pub required: bool,
    /// The plugin as written.
    pub written: String,
    /// The plugin's file (a relative name looked up in `PluginDir`).
    pub path: PathBuf,
    /// The plugin's arguments.
    pub args: Vec<String>,
}

impl PluginLine {
    /// `FILE:LINE`.
    pub fn place(&self) -> String {
        format!("{}:{}", self.file.display(), self.line)
    }

    /// Whether this line loads mnd's plugin, by its file name.
    pub fn named_mnd(&self) -> bool {
        is_mnd_name(&self.written)
    }
}

/// Whether a plugin path names mnd's plugin (`mnd_spank.so`, or a renamed `mnd_spank*`).
pub fn is_mnd_name(written: &str) -> bool {
    Path::new(written)
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("mnd_spank"))
}

/// One line that means something, in the order Slurm reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Entry {
    /// A plugin.
    Plugin(PluginLine),
    /// An `include`: its (absolute) pattern and the files it matched, read right after.
    Include {
        /// The file the line is in.
        file: PathBuf,
        /// Its line number.
        line: usize,
        /// The pattern, made absolute.
        pattern: String,
        /// What it matched.
        matched: Vec<PathBuf>,
    },
    /// A line Slurm ignores with an error (`spank: FILE:LINE: Invalid line. Ignoring.`).
    Invalid {
        /// The file the line is in.
        file: PathBuf,
        /// Its line number.
        line: usize,
        /// The line.
        text: String,
    },
}

/// A file the stack read or tried to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRead {
    /// The file.
    pub path: PathBuf,
    /// Why it could not be read (a missing file is read as empty, as Slurm does).
    pub error: Option<String>,
    /// It does not exist.
    pub missing: bool,
}

/// The whole stack: every file and line, in Slurm's order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stack {
    /// Files, in the order read.
    pub files: Vec<FileRead>,
    /// Lines, in the order read.
    pub entries: Vec<Entry>,
}

impl Stack {
    /// Every plugin line, in load order.
    pub fn plugins(&self) -> impl Iterator<Item = &PluginLine> {
        self.entries.iter().filter_map(|e| match e {
            Entry::Plugin(p) => Some(p),
            _ => None,
        })
    }

    /// Whether `path` was read as part of the stack.
    pub fn reads(&self, path: &Path) -> bool {
        let want = normal(path);
        self.files.iter().any(|f| normal(&f.path) == want)
    }
}

/// `path` with repeated separators and `.` dropped (as glob and Path spell them differently).
pub fn normal(path: &Path) -> PathBuf {
    path.components().collect()
}

/// How the loader reaches files.
pub trait Fs {
    /// A file's text.
    fn read(&self, path: &Path) -> std::io::Result<String>;
    /// The names in a folder.
    fn list(&self, dir: &Path) -> std::io::Result<Vec<String>>;
    /// Whether the path exists (not following a final link, as glob's lstat).
    fn exists(&self, path: &Path) -> bool;
}

/// Includes deeper than this are not followed (Slurm would follow a loop until it runs out
/// of descriptors).
const MAX_DEPTH: usize = 8;

/// Reads `top` and everything it includes, as Slurm does.
pub fn load(top: &Path, plugin_dirs: &[PathBuf], fs: &dyn Fs) -> Stack {
    let mut stack = Stack::default();
    load_file(top, plugin_dirs, fs, 0, &mut stack);
    stack
}

fn load_file(path: &Path, plugin_dirs: &[PathBuf], fs: &dyn Fs, depth: usize, stack: &mut Stack) {
    let text = match fs.read(path) {
        Ok(t) => t,
        Err(e) => {
            let missing = e.kind() == std::io::ErrorKind::NotFound;
            stack.files.push(FileRead {
                path: path.to_path_buf(),
                error: (!missing).then(|| e.to_string()),
                missing,
            });
            return;
        }
    };
    stack.files.push(FileRead {
        path: path.to_path_buf(),
        error: None,
        missing: false,
    });
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        match parse_line(raw) {
            Line::Empty => {}
            Line::Invalid => stack.entries.push(Entry::Invalid {
                file: path.to_path_buf(),
                line,
                text: raw.trim().to_string(),
            }),
            Line::Include(pattern) => {
                let pattern = if pattern.starts_with('/') {
                    pattern
                } else {
                    let dir = path.parent().unwrap_or(Path::new("/"));
                    format!("{}/{pattern}", dir.display())
                };
                let matched = if depth < MAX_DEPTH {
                    glob(&pattern, fs)
                } else {
                    Vec::new()
                };
                stack.entries.push(Entry::Include {
                    file: path.to_path_buf(),
                    line,
                    pattern,
                    matched: matched.clone(),
                });
                for m in matched {
                    load_file(&m, plugin_dirs, fs, depth + 1, stack);
                }
            }
            Line::Plugin {
                required,
                written,
                args,
            } => {
                let path_of = resolve(&written, plugin_dirs, fs);
                stack.entries.push(Entry::Plugin(PluginLine {
                    file: path.to_path_buf(),
                    line,
                    required,
                    written,
                    path: path_of,
                    args,
                }));
            }
        }
    }
}

/// What one line says.
#[derive(Debug, PartialEq, Eq)]
pub enum Line {
    /// Blank or a comment.
    Empty,
    /// Not `required`/`optional`/`include` followed by a path.
    Invalid,
    /// `include PATTERN`.
    Include(String),
    /// `required|optional PATH ARGS...`.
    Plugin {
        /// `required`.
        required: bool,
        /// The plugin.
        written: String,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// One line, as `_plugin_stack_parse_line` splits it (comment cut at `#`, words split at
/// spaces, tabs and newlines).
pub fn parse_line(raw: &str) -> Line {
    let code = raw.split('#').next().unwrap_or_default();
    let mut words = code.split([' ', '\t', '\n']).filter(|w| !w.is_empty());
    let Some(kind) = words.next() else {
        return Line::Empty;
    };
    let Some(path) = words.next() else {
        return Line::Invalid;
    };
    match kind {
        "include" => Line::Include(path.to_string()),
        "required" | "optional" => Line::Plugin {
            required: kind == "required",
            written: path.to_string(),
            args: words.map(str::to_string).collect(),
        },
        _ => Line::Invalid,
    }
}

/// A plugin's file: an absolute path as it is, a relative one in the first `PluginDir` that
/// has it (else as written).
fn resolve(written: &str, plugin_dirs: &[PathBuf], fs: &dyn Fs) -> PathBuf {
    if written.starts_with('/') {
        return PathBuf::from(written);
    }
    plugin_dirs
        .iter()
        .map(|d| d.join(written))
        .find(|p| fs.exists(p))
        .unwrap_or_else(|| PathBuf::from(written))
}

fn has_magic(component: &str) -> bool {
    component.contains(['*', '?', '['])
}

/// glob(3) of an absolute pattern without flags: every match, sorted.
pub fn glob(pattern: &str, fs: &dyn Fs) -> Vec<PathBuf> {
    let mut paths = vec![PathBuf::from("/")];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        if !has_magic(comp) {
            let literal = comp.replace('\\', "");
            paths = paths.into_iter().map(|p| p.join(&literal)).collect();
            continue;
        }
        let mut next = Vec::new();
        for p in &paths {
            let Ok(mut names) = fs.list(p) else {
                continue;
            };
            names.sort();
            next.extend(
                names
                    .into_iter()
                    .filter(|n| fnmatch(comp, n))
                    .map(|n| p.join(n)),
            );
        }
        paths = next;
    }
    let mut found: Vec<PathBuf> = paths.into_iter().filter(|p| fs.exists(p)).collect();
    found.sort();
    found
}

/// fnmatch(3) of one file name (no `/` in either): `*`, `?`, `[...]` (`!` or `^` negates,
/// ranges), `\` escapes; a leading `.` is matched only by a leading `.` in the pattern.
pub fn fnmatch(pattern: &str, name: &str) -> bool {
    if name.starts_with('.') && !pattern.starts_with('.') {
        return false;
    }
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    matches_from(&p, &n)
}

fn matches_from(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| matches_from(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && matches_from(&p[1..], &n[1..]),
        Some('[') => match (n.first(), bracket(&p[1..])) {
            (Some(c), Some((set, rest))) => set.matches(*c) && matches_from(rest, &n[1..]),
            // An unclosed bracket is a literal '['.
            (Some('['), None) => matches_from(&p[1..], &n[1..]),
            _ => false,
        },
        Some('\\') if p.len() > 1 => n.first() == Some(&p[1]) && matches_from(&p[2..], &n[1..]),
        Some(c) => n.first() == Some(c) && matches_from(&p[1..], &n[1..]),
    }
}

struct Set {
    negated: bool,
    ranges: Vec<(char, char)>,
}

impl Set {
    fn matches(&self, c: char) -> bool {
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&c)) != self.negated
    }
}

/// The bracket expression after `[`: the set and the pattern after its `]`.
fn bracket(p: &[char]) -> Option<(Set, &[char])> {
    let mut i = 0;
    let negated = matches!(p.first(), Some('!') | Some('^'));
    if negated {
        i += 1;
    }
    let mut ranges = Vec::new();
    let mut first = true;
    while i < p.len() {
        let c = p[i];
        if c == ']' && !first {
            return Some((Set { negated, ranges }, &p[i + 1..]));
        }
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            ranges.push((c, p[i + 2]));
            i += 3;
        } else {
            ranges.push((c, c));
            i += 1;
        }
    }
    None
}

/// The paths mnd's plugin takes from its plugstack arguments (`None`: its default).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MndArgs {
    /// `helper=`.
    pub helper: Option<PathBuf>,
    /// `config=`.
    pub config: Option<PathBuf>,
    /// `runtime_dir=`.
    pub runtime_dir: Option<PathBuf>,
}

/// mnd's plugin arguments, by the rules of the plugin's own parser (`PluginArgs::parse` in
/// slurm/spank/src/options.rs; the plugin's crate depends on this one, so they are repeated
/// here): the paths, and every argument the plugin refuses (it then does not load).
pub fn mnd_args(words: &[String]) -> (MndArgs, Vec<String>) {
    let mut args = MndArgs::default();
    let mut refused = Vec::new();
    let boolean = |v: &str| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "true" | "yes" | "y" | "on" | "0" | "false" | "no" | "n" | "off"
        )
    };
    for w in words {
        let (key, value) = w.split_once('=').unwrap_or((w, ""));
        match (key, value) {
            ("sbatch_support" | "mount_home", v) if boolean(v) => continue,
            ("sbatch_support" | "mount_home", _) => {
                refused.push(format!("'{w}' needs 1 or 0"));
                continue;
            }
            ("container_scope", "job" | "global") | ("execute_entrypoint", "0") => continue,
            ("container_scope", _) => {
                refused.push(format!("'{w}' needs job or global"));
                continue;
            }
            ("execute_entrypoint", _) => {
                refused.push(format!(
                    "'{w}' cannot be honoured (no entrypoint runs: execute_entrypoint=0 or nothing)"
                ));
                continue;
            }
            _ => {}
        }
        let path = PathBuf::from(value);
        if !path.is_absolute() {
            refused.push(format!(
                "'{w}' needs an absolute path (helper=, config=, runtime_dir=)"
            ));
            continue;
        }
        match key {
            "helper" => args.helper = Some(path),
            "config" => args.config = Some(path),
            "runtime_dir" => args.runtime_dir = Some(path),
            _ => refused.push(format!(
                "unknown argument '{w}' (known: helper=, config=, runtime_dir=, sbatch_support=, mount_home=, container_scope=, execute_entrypoint=0)"
            )),
        }
    }
    (args, refused)
}

/// Whether a file's text has a plugin line naming mnd's plugin (a drop-in of ours).
pub fn names_mnd(text: &str) -> bool {
    text.lines().any(|l| match parse_line(l) {
        Line::Plugin { written, .. } => is_mnd_name(&written),
        _ => false,
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// Files in memory: path -> text (a folder is any prefix of a path).
    #[derive(Default)]
    pub(crate) struct MemFs(pub BTreeMap<PathBuf, String>);

    impl MemFs {
        pub(crate) fn with(files: &[(&str, &str)]) -> Self {
            MemFs(
                files
                    .iter()
                    .map(|(p, t)| (PathBuf::from(p), t.to_string()))
                    .collect(),
            )
        }
    }

    impl Fs for MemFs {
        fn read(&self, path: &Path) -> std::io::Result<String> {
            self.0
                .get(path)
                .cloned()
                .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::NotFound))
        }
        fn list(&self, dir: &Path) -> std::io::Result<Vec<String>> {
            let mut names: Vec<String> = self
                .0
                .keys()
                .filter_map(|p| p.strip_prefix(dir).ok())
                .filter_map(|rest| rest.components().next())
                .map(|c| c.as_os_str().to_string_lossy().into_owned())
                .collect();
            names.dedup();
            Ok(names)
        }
        fn exists(&self, path: &Path) -> bool {
            self.0.keys().any(|p| p.starts_with(path))
        }
    }

    #[test]
    fn lines_are_split_as_slurm_does() {
        assert_eq!(parse_line("  # a comment"), Line::Empty);
        assert_eq!(parse_line(""), Line::Empty);
        assert_eq!(
            parse_line("required\t/opt/x.so helper=/a # trailing"),
            Line::Plugin {
                required: true,
                written: "/opt/x.so".into(),
                args: vec!["helper=/a".into()],
            }
        );
        assert_eq!(
            parse_line("include plugstack.conf.d/*"),
            Line::Include("plugstack.conf.d/*".into())
        );
        assert_eq!(parse_line("required"), Line::Invalid);
        assert_eq!(parse_line("requird /opt/x.so"), Line::Invalid);
    }

    #[test]
    fn fnmatch_knows_stars_brackets_and_hidden_names() {
        assert!(fnmatch("*.conf", "mnd-srun.conf"));
        assert!(!fnmatch("*.conf", "mnd-srun.conf.disabled"));
        assert!(!fnmatch("*", ".hidden.conf"));
        assert!(fnmatch(".*", ".hidden.conf"));
        assert!(fnmatch("[a-m]*", "mnd"));
        assert!(!fnmatch("[!a-m]*", "mnd"));
        assert!(fnmatch("node?", "node1"));
        assert!(!fnmatch("node?", "node12"));
        assert!(fnmatch("a\\*", "a*"));
        assert!(!fnmatch("a\\*", "ab"));
        assert!(fnmatch("[]x]", "]"));
        assert!(fnmatch("x[", "x["));
    }

    #[test]
    fn includes_are_relative_to_their_file_sorted_and_read_in_place() {
        let fs = MemFs::with(&[
            (
                "/etc/slurm/plugstack.conf",
                "optional /usr/lib/a.so\ninclude plugstack.conf.d/*.conf\nrequired last.so x=1\n",
            ),
            (
                "/etc/slurm/plugstack.conf.d/b.conf",
                "required /usr/lib/mnd-srun/mnd_spank.so helper=/usr/bin/mnd\n",
            ),
            (
                "/etc/slurm/plugstack.conf.d/a.conf",
                "required /usr/lib/pyxis.so\n",
            ),
            (
                "/etc/slurm/plugstack.conf.d/.hidden.conf",
                "required /x.so\n",
            ),
            ("/etc/slurm/plugstack.conf.d/c.conf.off", "required /y.so\n"),
            ("/usr/lib/slurm/last.so", ""),
        ]);
        let stack = load(
            Path::new("/etc/slurm/plugstack.conf"),
            &[PathBuf::from("/usr/lib/slurm")],
            &fs,
        );
        let order: Vec<String> = stack
            .plugins()
            .map(|p| p.path.display().to_string())
            .collect();
        assert_eq!(
            order,
            [
                "/usr/lib/a.so",
                "/usr/lib/pyxis.so",
                "/usr/lib/mnd-srun/mnd_spank.so",
                "/usr/lib/slurm/last.so"
            ]
        );
        let mnd = stack.plugins().find(|p| p.named_mnd()).unwrap();
        assert_eq!(mnd.place(), "/etc/slurm/plugstack.conf.d/b.conf:1");
        assert_eq!(mnd.args, ["helper=/usr/bin/mnd"]);
        assert!(stack.reads(Path::new("/etc/slurm//plugstack.conf.d/b.conf")));
        assert!(!stack.reads(Path::new("/etc/slurm/plugstack.conf.d/c.conf.off")));
        match &stack.entries[1] {
            Entry::Include {
                pattern, matched, ..
            } => {
                assert_eq!(pattern, "/etc/slurm/plugstack.conf.d/*.conf");
                assert_eq!(matched.len(), 2);
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn a_missing_stack_is_empty_and_an_include_of_nothing_is_no_error() {
        let fs = MemFs::with(&[("/etc/slurm/plugstack.conf", "include /nowhere/*.conf\n")]);
        let stack = load(Path::new("/etc/slurm/plugstack.conf"), &[], &fs);
        assert_eq!(stack.plugins().count(), 0);
        assert!(matches!(&stack.entries[0], Entry::Include { matched, .. } if matched.is_empty()));
        let stack = load(Path::new("/etc/slurm/other.conf"), &[], &fs);
        assert!(stack.files[0].missing && stack.entries.is_empty());
    }

    #[test]
    fn an_include_loop_stops() {
        let fs = MemFs::with(&[("/e/p.conf", "include /e/p.conf\n")]);
        let stack = load(Path::new("/e/p.conf"), &[], &fs);
        assert_eq!(stack.files.len(), MAX_DEPTH + 1);
    }

    #[test]
    fn plugin_arguments_follow_the_plugins_rules() {
        let words = |w: &[&str]| w.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (a, refused) = mnd_args(&words(&[
            "helper=/usr/bin/mnd",
            "config=/etc/mnd-srun/direct.toml",
            "sbatch_support=0",
            "container_scope=job",
        ]));
        assert!(refused.is_empty(), "{refused:?}");
        assert_eq!(a.helper.as_deref(), Some(Path::new("/usr/bin/mnd")));
        assert_eq!(
            a.config.as_deref(),
            Some(Path::new("/etc/mnd-srun/direct.toml"))
        );
        assert_eq!(a.runtime_dir, None);
        let (_, refused) = mnd_args(&words(&[
            "helper=mnd",
            "colour=/x",
            "mount_home=maybe",
            "container_scope=node",
        ]));
        assert_eq!(refused.len(), 4, "{refused:?}");
        assert!(refused[0].contains("absolute") && refused[1].contains("unknown"));
    }

    #[test]
    fn drop_ins_of_ours_are_recognised() {
        assert!(names_mnd(
            "# comment mnd_spank.so\nrequired /usr/lib/mnd-srun/mnd_spank.so helper=/usr/bin/mnd\n"
        ));
        assert!(!names_mnd("# required /usr/lib/mnd-srun/mnd_spank.so\n"));
        assert!(!names_mnd("required /usr/lib/pyxis/spank_pyxis.so\n"));
    }
}
