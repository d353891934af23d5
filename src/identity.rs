//! The calling user from the system user database (through NSS, so LDAP/sssd users work),
//! and the `/etc/passwd` and `/etc/group` text the container gets.

use std::path::PathBuf;
use thiserror::Error;

/// A group the user belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
}

/// The user the container runs as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home folder.
    pub home: PathBuf,
    /// Login shell.
    pub shell: String,
    /// Every group, primary first.
    pub groups: Vec<Group>,
}

/// The user database does not know the caller.
#[derive(Debug, Error)]
#[error("cannot look up {what} in the user database: {reason}")]
pub struct IdentityError {
    what: String,
    reason: String,
}

/// Drops this process to a user's ids: their groups, then their group, then their uid. Raw
/// system calls only, so it also serves between `fork` and `exec`; the root side runs the
/// user's file work this way (never root's rights on a path the user chose).
pub fn become_user(uid: u32, gid: u32, gids: &[u32]) -> std::io::Result<()> {
    // SAFETY: plain system calls on values the caller owns.
    let failed = unsafe {
        libc::setgroups(gids.len(), gids.as_ptr()) != 0
            || libc::setgid(gid) != 0
            || libc::setuid(uid) != 0
    };
    match failed {
        true => Err(std::io::Error::last_os_error()),
        false => Ok(()),
    }
}

impl Identity {
    /// Looks up the real user of this process and all their groups.
    pub fn current() -> Result<Self, IdentityError> {
        Self::of_uid(nix::unistd::getuid().as_raw())
    }

    /// Looks up the user with this uid and all their groups (the root helper acting for a job).
    pub fn of_uid(uid: u32) -> Result<Self, IdentityError> {
        use nix::unistd::{getgrouplist, Gid, Group as NixGroup, Uid, User};
        let uid = Uid::from_raw(uid);
        let fail = |what: String, reason: String| IdentityError { what, reason };
        let user = User::from_uid(uid)
            .map_err(|e| fail(format!("uid {uid}"), e.to_string()))?
            .ok_or_else(|| {
                fail(
                    format!("uid {uid}"),
                    "no such user (check NSS/sssd on this node)".into(),
                )
            })?;
        let cname = std::ffi::CString::new(user.name.clone())
            .map_err(|e| fail(user.name.clone(), e.to_string()))?;
        let gids = getgrouplist(&cname, user.gid)
            .map_err(|e| fail(format!("groups of {}", user.name), e.to_string()))?;
        let mut groups = Vec::new();
        for gid in std::iter::once(user.gid).chain(gids.into_iter().filter(|g| *g != user.gid)) {
            let name = NixGroup::from_gid(gid)
                .ok()
                .flatten()
                .map_or_else(|| format!("g{}", gid.as_raw()), |g| g.name);
            groups.push(Group {
                name,
                gid: Gid::as_raw(gid),
            });
        }
        Ok(Identity {
            name: user.name,
            uid: uid.as_raw(),
            gid: user.gid.as_raw(),
            home: user.dir,
            shell: user.shell.to_string_lossy().into_owned(),
            groups,
        })
    }

    /// The user's `/etc/passwd` line in a container, with `shell` as login shell.
    pub fn passwd_line(&self, shell: &str) -> String {
        format!(
            "{}:x:{}:{}:{}:{}:{}",
            self.name,
            self.uid,
            self.gid,
            self.name,
            self.home.display(),
            shell
        )
    }

    /// The login shell the container account gets: the user's own when the image lists it
    /// in its `/etc/shells`, else bash, else sh (a shell the image lacks would make every
    /// ssh login into the container fail).
    pub fn container_shell(&self, image_shells: &str) -> String {
        let listed = |s: &str| image_shells.lines().any(|l| l.trim() == s);
        if listed(&self.shell) || (image_shells.trim().is_empty() && self.shell == "/bin/sh") {
            self.shell.clone()
        } else if listed("/bin/bash") || listed("/usr/bin/bash") {
            "/bin/bash".into()
        } else {
            "/bin/sh".into()
        }
    }

    /// The container's `/etc/passwd`: the image's accounts, then the user's entry (which
    /// replaces any of the same name or uid). The image's text is anyone's (an image
    /// pulled as-is), so nothing in it may grant anything: a uid 0 account other than `root` is
    /// dropped and every password field becomes `x` (no passwordless account).
    pub fn merge_passwd(&self, image_passwd: &str, shell: &str) -> String {
        let uid = self.uid.to_string();
        let mut out = String::new();
        for line in image_passwd.lines() {
            let mut f: Vec<&str> = line.split(':').collect();
            if f.len() != 7 || f[0] == self.name || f[2] == uid || (f[2] == "0" && f[0] != "root") {
                continue;
            }
            f[1] = "x";
            out.push_str(&f.join(":"));
            out.push('\n');
        }
        out.push_str(&self.passwd_line(shell));
        out.push('\n');
        out
    }

    /// The container's `/etc/group`: the image's groups, then the user's groups with the
    /// user as member (replacing any of the same name or gid). From the image's groups the
    /// user's name is removed (no membership the user does not have on the host), a gid 0
    /// group other than `root` is dropped, and group passwords become `x`.
    pub fn merge_group(&self, image_group: &str) -> String {
        let ours = |name: &str, gid: &str| {
            self.groups
                .iter()
                .any(|g| g.name == name || g.gid.to_string() == gid)
        };
        let mut out = String::new();
        for line in image_group.lines() {
            let mut f: Vec<&str> = line.split(':').collect();
            if f.len() != 4 || ours(f[0], f[2]) || (f[2] == "0" && f[0] != "root") {
                continue;
            }
            let members: Vec<&str> = f[3]
                .split(',')
                .filter(|m| !m.is_empty() && *m != self.name)
                .collect();
            let members = members.join(",");
            f[1] = "x";
            f[3] = &members;
            out.push_str(&f.join(":"));
            out.push('\n');
        }
        for g in &self.groups {
            out.push_str(&format!("{}:x:{}:{}\n", g.name, g.gid, self.name));
        }
        out
    }
}

/// The test user alice (uid 1001, groups docker and mlteam) for unit tests.
#[cfg(test)]
pub fn test_user() -> Identity {
    Identity {
        name: "alice".into(),
        uid: 1001,
        gid: 1001,
        home: "/shared/home/alice".into(),
        shell: "/bin/bash".into(),
        groups: vec![
            Group {
                name: "alice".into(),
                gid: 1001,
            },
            Group {
                name: "docker".into(),
                gid: 998,
            },
            Group {
                name: "mlteam".into(),
                gid: 1500,
            },
        ],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_replaces_clashing_entries_and_keeps_the_images() {
        let image = "root:x:0:0:root:/root:/bin/bash\nubuntu:x:1001:1001::/home/ubuntu:/bin/sh\n";
        let merged = test_user().merge_passwd(image, "/bin/bash");
        assert_eq!(
            merged,
            "root:x:0:0:root:/root:/bin/bash\nalice:x:1001:1001:alice:/shared/home/alice:/bin/bash\n"
        );
    }

    #[test]
    fn group_lists_every_group_with_the_user_as_member() {
        let image = "root:x:0:\ndocker:x:999:\nvideo:x:44:\n";
        let merged = test_user().merge_group(image);
        assert_eq!(
            merged,
            "root:x:0:\nvideo:x:44:\nalice:x:1001:alice\ndocker:x:998:alice\nmlteam:x:1500:alice\n"
        );
    }

    #[test]
    fn a_hostile_images_accounts_grant_nothing() {
        // What a hostile image could carry: a second uid 0 account without a
        // password, a password for root, and themselves as member of sudo and root.
        let passwd = "root::0:0:root:/root:/bin/bash\ntoor::0:0::/root:/bin/bash\nalice::0:0::/:/bin/sh\ndaemon:x:1:1::/:/bin/false\nbroken line\n";
        let merged = test_user().merge_passwd(passwd, "/bin/bash");
        assert_eq!(
            merged,
            "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1::/:/bin/false\nalice:x:1001:1001:alice:/shared/home/alice:/bin/bash\n"
        );
        let group = "root:pw:0:alice\nwheel:x:0:alice\nsudo:x:27:bob,alice\ndisk:x:6:alice\n";
        let merged = test_user().merge_group(group);
        assert_eq!(
            merged,
            "root:x:0:\nsudo:x:27:bob\ndisk:x:6:\nalice:x:1001:alice\ndocker:x:998:alice\nmlteam:x:1500:alice\n"
        );
    }

    #[test]
    fn login_shell_is_one_the_image_has() {
        let mut u = test_user();
        u.shell = "/usr/bin/zsh".into();
        assert_eq!(u.container_shell("/bin/sh\n/bin/bash\n"), "/bin/bash");
        assert_eq!(u.container_shell("/bin/sh\n"), "/bin/sh");
        assert_eq!(
            u.container_shell("# comment\n/bin/sh\n/usr/bin/zsh\n"),
            "/usr/bin/zsh"
        );
        assert_eq!(u.container_shell(""), "/bin/sh");
        u.shell = "/bin/bash".into();
        assert_eq!(u.container_shell("/bin/sh\n/bin/bash\n"), "/bin/bash");
    }

    #[test]
    fn current_user_resolves() {
        let me = Identity::current().unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert_eq!(me.groups[0].gid, me.gid);
    }
}
