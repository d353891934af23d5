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

impl Identity {
    /// Looks up the real user of this process and all their groups.
    pub fn current() -> Result<Self, IdentityError> {
        use nix::unistd::{getgrouplist, getuid, Gid, Group as NixGroup, User};
        let uid = getuid();
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

    /// The user's `/etc/passwd` line.
    pub fn passwd_line(&self) -> String {
        format!(
            "{}:x:{}:{}:{}:{}:{}",
            self.name,
            self.uid,
            self.gid,
            self.name,
            self.home.display(),
            self.shell
        )
    }

    /// The image's `/etc/passwd` with the user's entry in place of any same name or uid.
    pub fn merge_passwd(&self, image_passwd: &str) -> String {
        let mut out: String = image_passwd
            .lines()
            .filter(|l| {
                let mut f = l.split(':');
                let (name, uid) = (f.next(), f.nth(1));
                name != Some(self.name.as_str()) && uid != Some(self.uid.to_string().as_str())
            })
            .map(|l| format!("{l}\n"))
            .collect();
        out.push_str(&self.passwd_line());
        out.push('\n');
        out
    }

    /// The image's `/etc/group` with the user's groups (user as member) in place of any same
    /// name or gid.
    pub fn merge_group(&self, image_group: &str) -> String {
        let ours = |name: &str, gid: &str| {
            self.groups
                .iter()
                .any(|g| g.name == name || g.gid.to_string() == gid)
        };
        let mut out: String = image_group
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split(':').collect();
                f.len() < 3 || !ours(f[0], f[2])
            })
            .map(|l| format!("{l}\n"))
            .collect();
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
        let merged = test_user().merge_passwd(image);
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
    fn current_user_resolves() {
        let me = Identity::current().unwrap();
        assert_eq!(me.uid, nix::unistd::getuid().as_raw());
        assert_eq!(me.groups[0].gid, me.gid);
    }
}
