//! A direct-mode container's main process: waits, and nothing else, until a signal ends
//! it. Built by `build.rs` as a static program with no library (no libc, no loader), so it
//! runs in any image, and mounted read-only from root's folder: the container's init is
//! never a program of the image's (which would be the user's code running outside the
//! job's limits).
#![no_std]
#![no_main]

#[panic_handler]
fn panic(_: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// Entry point: `pause(2)` (x86_64) or `ppoll(NULL, 0, NULL, NULL)` (aarch64) for ever; the
/// default action of SIGTERM and SIGKILL ends the process.
#[no_mangle]
pub extern "C" fn _start() -> ! {
    loop {
        // SAFETY: a system call with no memory arguments.
        unsafe { wait_for_signal() }
    }
}

#[cfg(target_arch = "x86_64")]
unsafe fn wait_for_signal() {
    core::arch::asm!("syscall", inlateout("rax") 34usize => _, lateout("rcx") _,
        lateout("r11") _, options(nostack));
}

#[cfg(target_arch = "aarch64")]
unsafe fn wait_for_signal() {
    core::arch::asm!("svc 0", in("x8") 73usize, inlateout("x0") 0usize => _,
        in("x1") 0usize, in("x2") 0usize, in("x3") 0usize, options(nostack));
}
