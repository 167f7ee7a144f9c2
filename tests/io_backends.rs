//! sluice where io_uring is refused (a default container: Docker's seccomp profile,
//! Kubernetes' `RuntimeDefault`, gVisor): under a seccomp filter answering EPERM to the three
//! io_uring calls, `io-backend auto` (the default) runs the shards on epoll and relays every
//! message; `io-backend io_uring` refuses to start and says why. `scripts/test` also runs the
//! relay tests a second time with `SLUICE_TEST_IO_BACKEND=epoll`.

mod common;
use common::*;
use std::process::{Command, Stdio};
use std::time::Duration;

const MESSAGES: u64 = 3_000;

#[test]
fn refused_io_uring_relays_every_message_on_epoll() {
    let sink = SluiceSink::start(&[], MESSAGES);
    // `auto` (the default) said outright: whatever backend the other relay tests are run on.
    let body = format!(
        "io-backend auto\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n max-smtp-out 20\n</domain>\n",
        sink.port
    );
    let mut relay = Relay::prepare(&body, Some(2), &[]);
    relay.seccomp = Some(io_uring_refused());
    relay.spawn();
    // The load generator is confined too: it falls back the same way.
    let (code, out) = run(deny_io_uring(&mut Command::new(BIN))
        .args(["loadgen", "--quiet", "--json", "-", "--messages", &MESSAGES.to_string(), "--connections", "20"])
        .args(["--size", "1K:6,20K:3,200K:1", "--domains", "40", "--target", &relay.addr().to_string()]));
    assert_eq!(code, 0, "{out}");
    assert_eq!(json_u64(&out, "messages_ok"), MESSAGES, "{out}");
    let st = sink.finish();
    assert_eq!(
        (json_u64(&st, "messages"), json_u64(&st, "corrupt"), json_u64(&st, "duplicates")),
        (MESSAGES, 0, 0),
        "every message delivered once, intact: {st}"
    );
    let rows = relay.wait_rows("d", MESSAGES as usize, Duration::from_secs(30));
    let ids: std::collections::HashSet<&str> = rows.iter().map(|r| r["rcpt"].as_str()).collect();
    assert_eq!((rows.len(), ids.len()), (MESSAGES as usize, MESSAGES as usize), "one delivery row per message");
    let log = relay.log();
    assert_eq!(log.matches("io_uring is refused here").count(), 1, "said once, with the reason:\n{}", tail(&log, 20));
    assert!(log.contains("backend=\"epoll\""), "{}", tail(&log, 20));
}

#[test]
fn io_uring_by_name_where_it_is_refused_fails_with_the_reason() {
    let dir = TempDir::new("io-uring-named");
    let config = dir.path().join("sluice.conf");
    let port = free_port("127.0.0.1");
    std::fs::write(
        &config,
        format!("io-backend io_uring\nsmtp-listener 127.0.0.1:{port}\nspool {}\n", dir.path().join("spool").display()),
    )
    .unwrap();
    let child = deny_io_uring(&mut Command::new(BIN))
        .args(["run", "-c"])
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{text}");
    assert!(text.contains("io_uring is not available") && text.contains("io-backend auto"), "{text}");
}

/// The number of each system call `packaging/seccomp.json` may name (x86_64).
#[cfg(target_arch = "x86_64")]
fn syscall_numbers() -> std::collections::HashMap<&'static str, i64> {
    macro_rules! numbers {
        ($($name:ident),* $(,)?) => { [$((stringify!($name).trim_start_matches("SYS_"), libc::$name)),*] };
    }
    numbers!(
        SYS_accept,
        SYS_accept4,
        SYS_access,
        SYS_arch_prctl,
        SYS_bind,
        SYS_brk,
        SYS_chdir,
        SYS_clock_getres,
        SYS_clock_gettime,
        SYS_clock_nanosleep,
        SYS_clone,
        SYS_clone3,
        SYS_close,
        SYS_close_range,
        SYS_connect,
        SYS_dup,
        SYS_dup2,
        SYS_dup3,
        SYS_epoll_create,
        SYS_epoll_create1,
        SYS_epoll_ctl,
        SYS_epoll_pwait,
        SYS_epoll_pwait2,
        SYS_epoll_wait,
        SYS_eventfd,
        SYS_eventfd2,
        SYS_execve,
        SYS_exit,
        SYS_exit_group,
        SYS_faccessat,
        SYS_faccessat2,
        SYS_fadvise64,
        SYS_fallocate,
        SYS_fchmod,
        SYS_fcntl,
        SYS_fdatasync,
        SYS_flock,
        SYS_fstat,
        SYS_fstatfs,
        SYS_fsync,
        SYS_ftruncate,
        SYS_futex,
        SYS_getcwd,
        SYS_getdents64,
        SYS_getegid,
        SYS_geteuid,
        SYS_getgid,
        SYS_getpeername,
        SYS_getpgrp,
        SYS_getpid,
        SYS_getppid,
        SYS_getrandom,
        SYS_getrlimit,
        SYS_getsockname,
        SYS_getsockopt,
        SYS_gettid,
        SYS_gettimeofday,
        SYS_getuid,
        SYS_io_uring_enter,
        SYS_io_uring_register,
        SYS_io_uring_setup,
        SYS_ioctl,
        SYS_kill,
        SYS_listen,
        SYS_lseek,
        SYS_lstat,
        SYS_madvise,
        SYS_membarrier,
        SYS_mkdir,
        SYS_mkdirat,
        SYS_mmap,
        SYS_mprotect,
        SYS_mremap,
        SYS_msync,
        SYS_munmap,
        SYS_nanosleep,
        SYS_newfstatat,
        SYS_open,
        SYS_openat,
        SYS_pipe,
        SYS_pipe2,
        SYS_poll,
        SYS_ppoll,
        SYS_prctl,
        SYS_pread64,
        SYS_preadv,
        SYS_prlimit64,
        SYS_pselect6,
        SYS_pwrite64,
        SYS_pwritev,
        SYS_read,
        SYS_readlink,
        SYS_readlinkat,
        SYS_readv,
        SYS_recvfrom,
        SYS_recvmmsg,
        SYS_recvmsg,
        SYS_rename,
        SYS_renameat,
        SYS_renameat2,
        SYS_restart_syscall,
        SYS_rmdir,
        SYS_rseq,
        SYS_rt_sigaction,
        SYS_rt_sigprocmask,
        SYS_rt_sigreturn,
        SYS_rt_sigtimedwait,
        SYS_sched_getaffinity,
        SYS_sched_setaffinity,
        SYS_sched_yield,
        SYS_select,
        SYS_sendmmsg,
        SYS_sendmsg,
        SYS_sendto,
        SYS_set_robust_list,
        SYS_set_tid_address,
        SYS_setrlimit,
        SYS_setsockopt,
        SYS_shutdown,
        SYS_sigaltstack,
        SYS_socket,
        SYS_socketpair,
        SYS_stat,
        SYS_statfs,
        SYS_statx,
        SYS_sync_file_range,
        SYS_sysinfo,
        SYS_tgkill,
        SYS_tkill,
        SYS_uname,
        SYS_unlink,
        SYS_unlinkat,
        SYS_write,
        SYS_writev
    )
    .into_iter()
    .collect()
}

/// The shipped profile (`docker run --security-opt seccomp=packaging/seccomp.json`), made into
/// the same allow-list filter: sluice starts on io_uring under it (io_uring allowed, nothing
/// said about epoll), relays, signs, answers its management API, reloads and stops cleanly; and
/// the loadgen and sink run under it too. A call the profile misses would fail with EPERM.
#[cfg(target_arch = "x86_64")]
#[test]
fn the_shipped_seccomp_profile_runs_sluice_on_io_uring() {
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/seccomp.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO", "everything not listed is refused");
    let numbers = syscall_numbers();
    let mut allowed: Vec<i64> = profile["syscalls"][0]["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| *numbers.get(n.as_str().unwrap()).unwrap_or_else(|| panic!("{n}: add it to syscall_numbers")))
        .collect();
    allowed.sort_unstable();
    for io_uring in [libc::SYS_io_uring_setup, libc::SYS_io_uring_enter, libc::SYS_io_uring_register] {
        assert!(allowed.contains(&io_uring));
    }
    let filter = seccomp_filter(&allowed, false);

    let dir = TempDir::new("profile");
    let key = dir.path().join("dkim.pem");
    assert!(Command::new("openssl").args(["genrsa", "-out"]).arg(&key).arg("2048").status().unwrap().success());
    let sink_port = free_port("127.0.0.1");
    let sink = confine(&mut Command::new(BIN), filter)
        .args(["sink", "--listen", &format!("127.0.0.1:{sink_port}"), "--exit-after", "1000"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_port(([127, 0, 0, 1], sink_port).into(), Duration::from_secs(10));
    let mgmt = free_port("127.0.0.1");
    let body = format!(
        "io-backend auto\nhttp-mgmt-port 127.0.0.1:{mgmt}\nhttp-access 127.0.0.1 admin\ndomain-key s1,*,{key}\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{sink_port}\n dkim-sign yes\n</domain>\n",
        key = key.display()
    );
    let mut relay = Relay::prepare(&body, Some(2), &[]);
    relay.seccomp = Some(filter);
    relay.spawn();
    let (code, out) = run(confine(&mut Command::new(BIN), filter)
        .args([
            "loadgen",
            "--quiet",
            "--json",
            "-",
            "--messages",
            "1000",
            "--connections",
            "10",
            "--size",
            "2K:9,100K:1",
        ])
        .args(["--target", &relay.addr().to_string()]));
    assert_eq!((code, json_u64(&out, "messages_ok")), (0, 1000), "{out}");
    assert_eq!(relay.wait_rows("d", 1000, Duration::from_secs(60)).len(), 1000);
    let (code, out) = run(Command::new(BIN).args(["show", "status", "-c"]).arg(&relay.config));
    assert_eq!(code, 0, "{out}");
    let (code, out) = run(Command::new(BIN).args(["reload", "-c"]).arg(&relay.config));
    assert_eq!(code, 0, "{out}");
    assert_eq!(relay.terminate(Duration::from_secs(20)), 0, "a clean stop: {}", tail(&relay.log(), 20));
    let log = relay.log();
    assert!(log.contains("backend=\"io_uring\""), "on io_uring: {}", tail(&log, 30));
    assert!(!log.contains("io_uring is refused") && !log.contains("Operation not permitted"), "{}", tail(&log, 30));
    let mut sink = sink;
    assert!(sink.wait().unwrap().success());
}

/// `io-uring-sqpoll yes`: the shards' rings are polled by kernel threads; every message is
/// still relayed once, and the relay stops cleanly.
#[test]
fn with_a_polled_submission_queue_every_message_is_relayed() {
    const N: u64 = 2_000;
    let sink = SluiceSink::start(&[], N);
    let body = format!(
        "io-backend io_uring\nio-uring-sqpoll yes\n<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n</domain>\n",
        sink.port
    );
    let mut relay = Relay::start(&body, Some(2));
    let (code, out) = run(Command::new(BIN)
        .args(["loadgen", "--quiet", "--json", "-", "--messages", &N.to_string(), "--connections", "10"])
        .args(["--size", "1K:9,50K:1", "--target", &relay.addr().to_string()]));
    assert_eq!((code, json_u64(&out, "messages_ok")), (0, N), "{out}");
    let st = sink.finish();
    assert_eq!((json_u64(&st, "messages"), json_u64(&st, "corrupt")), (N, 0), "{st}");
    assert_eq!(relay.wait_rows("d", N as usize, Duration::from_secs(30)).len(), N as usize);
    assert_eq!(relay.terminate(Duration::from_secs(20)), 0, "{}", tail(&relay.log(), 20));
}

/// `io-uring-multishot-receive yes` (sockets read through multishot receives and the shards'
/// provided buffer rings: 16 KiB buffers, a stash bounded at 256 KiB a socket) and
/// `io-uring-registered-files yes` (sockets in the rings' file tables), each alone and both:
/// messages of 1 KiB to 4 MiB from 50 connections, every one relayed once and intact (the
/// sink checks each body's sum), and the relay stops cleanly.
#[test]
fn with_multishot_receive_and_registered_files_every_message_is_relayed_intact() {
    const N: u64 = 600;
    for options in [
        "io-uring-multishot-receive yes\n",
        "io-uring-registered-files yes\n",
        "io-uring-multishot-receive yes\nio-uring-registered-files yes\n",
    ] {
        let sink = SluiceSink::start(&[], N);
        let body = format!(
            "io-backend io_uring\n{options}<source 127.0.0.1>\n always-allow-relaying yes\n</source>\n<domain *>\n smtp-hosts [127.0.0.1]:{}\n max-smtp-out 20\n</domain>\n",
            sink.port
        );
        let mut relay = Relay::start(&body, Some(2));
        let (code, out) = run(Command::new(BIN)
            .args(["loadgen", "--quiet", "--json", "-", "--messages", &N.to_string(), "--connections", "50"])
            .args(["--size", "1K:800,20K:150,300K:48,4M:2", "--domains", "30", "--target", &relay.addr().to_string()]));
        assert_eq!((code, json_u64(&out, "messages_ok")), (0, N), "{options}: {out}");
        let st = sink.finish();
        assert_eq!(
            (json_u64(&st, "messages"), json_u64(&st, "corrupt"), json_u64(&st, "duplicates")),
            (N, 0, 0),
            "{options}: every message delivered once, intact: {st}"
        );
        assert_eq!(relay.wait_rows("d", N as usize, Duration::from_secs(30)).len(), N as usize);
        assert_eq!(relay.terminate(Duration::from_secs(20)), 0, "{options}: {}", tail(&relay.log(), 20));
        let log = relay.log();
        assert!(log.contains("backend=\"io_uring\""), "{}", tail(&log, 30));
        assert!(
            !log.contains("no provided buffer rings") && !log.contains("no sparse file table"),
            "{}",
            tail(&log, 30)
        );
    }
}
