//! `--mnd-remap-root`'s seccomp filter, as pyxis and enroot have it: in a user namespace
//! where root is the user and nothing else is mapped, package managers still change owners
//! (`chown _apt`) and drop privileges (`setresuid`), and fail at once. The filter makes
//! those calls succeed without doing anything: nothing changes owner, and no identity is
//! taken that the user does not already have. It narrows what the task can do, never
//! widens it (a seccomp filter can only refuse or fake calls), and needs `no_new_privs`,
//! which the task has by then.

/// What the filter returns for a faked call: "errno 0", that is success, done nothing.
const FAKE: u32 = libc::SECCOMP_RET_ERRNO;
const ALLOW: u32 = libc::SECCOMP_RET_ALLOW;

/// The architecture the calls below are numbered for (`AUDIT_ARCH_*`).
#[cfg(target_arch = "x86_64")]
const ARCH: u32 = 0xC000_003E;
#[cfg(target_arch = "aarch64")]
const ARCH: u32 = 0xC000_00B7;

/// The calls faked: owner changes and identity changes.
#[cfg(target_arch = "x86_64")]
const FAKED: [libc::c_long; 13] = [
    libc::SYS_chown,
    libc::SYS_fchown,
    libc::SYS_lchown,
    libc::SYS_fchownat,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
];
#[cfg(target_arch = "aarch64")]
const FAKED: [libc::c_long; 11] = [
    libc::SYS_fchown,
    libc::SYS_fchownat,
    libc::SYS_setuid,
    libc::SYS_setgid,
    libc::SYS_setreuid,
    libc::SYS_setregid,
    libc::SYS_setresuid,
    libc::SYS_setresgid,
    libc::SYS_setgroups,
    libc::SYS_setfsuid,
    libc::SYS_setfsgid,
];

fn stmt(code: u32, k: u32) -> libc::sock_filter {
    libc::sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump_if_equal(k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter {
        code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
        jt,
        jf,
        k,
    }
}

/// The program: another architecture's calls (a 32-bit program) pass untouched; each call
/// of [`FAKED`] returns success; everything else passes.
fn program() -> Vec<libc::sock_filter> {
    let load = libc::BPF_LD | libc::BPF_W | libc::BPF_ABS;
    let ret = libc::BPF_RET | libc::BPF_K;
    let n = FAKED.len() as u8;
    let mut p = vec![
        stmt(load, 4), // seccomp_data.arch
        jump_if_equal(ARCH, 1, 0),
        stmt(ret, ALLOW),
        stmt(load, 0), // seccomp_data.nr
    ];
    for (i, nr) in FAKED.iter().enumerate() {
        // Equal: jump over the calls left and the ALLOW, to FAKE.
        p.push(jump_if_equal(*nr as u32, n - i as u8, 0));
    }
    p.push(stmt(ret, ALLOW));
    p.push(stmt(ret, FAKE));
    p
}

/// Installs the filter on this task (kept across its exec and by its children).
pub fn install() -> Result<(), String> {
    let mut filter = program();
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, alive for the call; the kernel copies it.
    let r = unsafe {
        libc::prctl(
            libc::PR_SET_SECCOMP,
            libc::SECCOMP_MODE_FILTER,
            &prog as *const libc::sock_fprog,
        )
    };
    match r {
        0 => Ok(()),
        _ => Err(format!(
            "--mnd-remap-root: the seccomp filter: {}",
            std::io::Error::last_os_error()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_faked_call_jumps_to_fake_and_the_rest_falls_to_allow() {
        let p = program();
        let fake_at = p.len() - 1;
        assert_eq!(p[fake_at].k, FAKE);
        assert_eq!(p[fake_at - 1].k, ALLOW);
        for (i, nr) in FAKED.iter().enumerate() {
            let at = 4 + i;
            assert_eq!(p[at].k, *nr as u32);
            assert_eq!(at + 1 + p[at].jt as usize, fake_at, "call {nr}");
            assert_eq!(p[at].jf, 0);
        }
        // Another architecture: straight to ALLOW.
        assert_eq!(p[1].k, ARCH);
        assert_eq!(2 + p[1].jf as usize, 2);
        assert_eq!(p[2].k, ALLOW);
    }

    /// In a child (the filter stays with the process): a faked chown "succeeds" on a file
    /// it could not give away, and the file keeps its owner.
    #[test]
    fn a_faked_chown_succeeds_and_changes_nothing() {
        let file = std::env::temp_dir().join(format!("mnd-fakeroot-{}", std::process::id()));
        std::fs::write(&file, b"x").unwrap();
        let before = std::fs::metadata(&file).unwrap();
        let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: fork in a test; the child makes plain calls and exits.
        match unsafe { libc::fork() } {
            0 => {
                let code = unsafe {
                    libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                    let uid = libc::getuid();
                    let ok = install().is_ok()
                        && libc::chown(path.as_ptr(), 4242, 4242) == 0
                        && libc::setresuid(4242, 4242, 4242) == 0
                        && libc::getuid() == uid;
                    i32::from(!ok)
                };
                unsafe { libc::_exit(code) };
            }
            child => {
                let mut status = 0;
                unsafe { libc::waitpid(child, &mut status, 0) };
                assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
            }
        }
        let after = std::fs::metadata(&file).unwrap();
        let _ = std::fs::remove_file(&file);
        use std::os::unix::fs::MetadataExt;
        assert_eq!((after.uid(), after.gid()), (before.uid(), before.gid()));
    }
}
