//! The seccomp filter: system calls sandboxed code never needs are refused with `EPERM` —
//! mounting, tracing other processes, loading kernel code, keyrings, BPF, new namespaces,
//! rebooting, changing the clock, pushing keystrokes into a terminal (`TIOCSTI`), and, unless a
//! setting opts in, `io_uring` (a second system-call path the filter cannot see into) and
//! `AF_VSOCK` sockets (not namespaced: a path toward the hypervisor) — and `clone3` says it does
//! not exist, so C libraries fall back to `clone`, whose flags the filter can read (no new user
//! namespace).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

const DENIED: &[i64] = &[
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_bpf,
    libc::SYS_perf_event_open,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_reboot,
    libc::SYS_acct,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_quotactl,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_userfaultfd,
    libc::SYS_fanotify_init,
    libc::SYS_lookup_dcookie,
];

fn arch() -> Result<TargetArch, String> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        other => Err(format!("seccomp: no filter for {other}")),
    }
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: u32) -> Result<BpfProgram, String> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch()?,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    filter.try_into().map_err(|e| format!("seccomp: {e:?}"))
}

const IO_URING: &[i64] = &[
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
];

/// A rule matching argument `arg` equal to `value`.
fn arg_is(arg: u8, len: SeccompCmpArgLen, value: u64) -> Result<SeccompRule, String> {
    let c = SeccompCondition::new(arg, len, SeccompCmpOp::Eq, value)
        .map_err(|e| format!("seccomp: {e}"))?;
    SeccompRule::new(vec![c]).map_err(|e| format!("seccomp: {e}"))
}

/// Installs the filter on the calling thread (inherited across fork and exec).
pub(crate) fn apply(allow_io_uring: bool, allow_vsock: bool) -> Result<(), String> {
    let mut deny: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|&n| (n, Vec::new())).collect();
    if !allow_io_uring {
        deny.extend(IO_URING.iter().map(|&n| (n, Vec::new())));
    }
    let new_user_ns = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_NEWUSER as u64),
        libc::CLONE_NEWUSER as u64,
    )
    .map_err(|e| format!("seccomp: {e}"))?;
    deny.insert(
        libc::SYS_clone,
        vec![SeccompRule::new(vec![new_user_ns]).map_err(|e| format!("seccomp: {e}"))?],
    );
    // Faking terminal input, whatever terminal a descriptor might reach.
    deny.insert(
        libc::SYS_ioctl,
        vec![
            arg_is(1, SeccompCmpArgLen::Dword, libc::TIOCSTI)?,
            arg_is(1, SeccompCmpArgLen::Dword, libc::TIOCLINUX)?,
        ],
    );
    if !allow_vsock {
        for call in [libc::SYS_socket, libc::SYS_socketpair] {
            deny.insert(
                call,
                vec![arg_is(0, SeccompCmpArgLen::Dword, libc::AF_VSOCK as u64)?],
            );
        }
    }
    let no_clone3: BTreeMap<i64, Vec<SeccompRule>> =
        BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    for program in [
        compile(deny, libc::EPERM as u32)?,
        compile(no_clone3, libc::ENOSYS as u32)?,
    ] {
        seccompiler::apply_filter(&program).map_err(|e| format!("seccomp: {e}"))?;
    }
    Ok(())
}
