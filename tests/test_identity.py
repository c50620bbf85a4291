"""Process identity against the kernel's own record of real processes: start ticks from
/proc, zombies, pid reuse, reboots (a changed boot id), ownership and ancestry."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from omnid import identity
from omnid.identity import ProcessIdentity, boot_id, check_ancestor, inspect, is_alive, owner_process
from omnid_client import Invalid, NotFound, PermissionDenied
from tests.helpers import no_free_fds, open_fds, start_ticks, wait_for

KERNEL_BOOT_ID = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
NOBODY = 65534


def real_identity(pid: int) -> ProcessIdentity:
    return ProcessIdentity(pid, start_ticks(pid), KERNEL_BOOT_ID)


def run_python(code: str, **env: str) -> str:
    """``code`` run by a fresh interpreter (a fresh boot id cache) with ``env`` added."""
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


# --- inspect: what the kernel says ------------------------------------------------------


@pytest.fixture(params=["pidfs", "no-pidfs"])
def kernel(request, monkeypatch) -> str:
    """Both ways ``inspect`` reads Linux: with pidfs (6.9+) it also holds a pidfd, whose inode
    it records; before, every pidfd shared one inode and /proc's state letter alone tells a
    zombie (as the kernel's answer to ``pidfd_inodes_unique``, which is probed once)."""
    if request.param == "no-pidfs":
        monkeypatch.setattr(identity, "pidfd_inodes_unique", lambda: False)
    elif not identity.pidfd_inodes_unique():
        pytest.skip("this kernel has no pidfs")
    return request.param


def test_both_kernels_read_the_same_identity_and_only_pidfs_an_inode(kernel, spawn_owner, zombie):
    owner = spawn_owner()
    before = open_fds()
    info = inspect(owner.pid)
    assert info is not None and info.identity == real_identity(owner.pid) and info.uid == os.getuid()
    assert info.identity.ino == (identity.pidfd_inode(owner.pid) if kernel == "pidfs" else None)
    assert open_fds() == before
    assert inspect(zombie()) is None
    owner.kill()
    owner.wait()
    assert inspect(owner.pid) is None
    assert inspect(2).kernel, "kthreadd"


def test_inspect_reads_the_start_ticks_and_owner_of_a_running_process(spawn_owner):
    owner = spawn_owner()
    info = inspect(owner.pid)
    assert info is not None
    assert info.identity == real_identity(owner.pid)
    assert info.uid == os.getuid()


def test_inspect_sees_another_users_process_as_theirs(spawn_owner):
    owner = spawn_owner(user=NOBODY)
    info = inspect(owner.pid)
    assert info is not None and info.uid == NOBODY
    assert info.identity == real_identity(owner.pid)


def test_a_zombie_is_not_running(zombie):
    pid = zombie()
    assert inspect(pid) is None


def test_an_exited_and_reaped_process_is_not_running(spawn_owner):
    owner = spawn_owner()
    owner.kill()
    owner.wait()
    assert inspect(owner.pid) is None


def test_a_command_name_with_spaces_and_parentheses_does_not_shift_the_fields(tmp_path):
    # The kernel puts the command name in parentheses; a name holding ") " must not move
    # the start time read from the fields after it.
    odd = tmp_path / "a) b (c"
    odd.symlink_to("/bin/sleep")
    proc = subprocess.Popen([str(odd), "600"])
    try:
        info = inspect(proc.pid)
        assert info is not None and info.identity == real_identity(proc.pid)
    finally:
        proc.kill()
        proc.wait()


# --- is_alive: the very same process, or why not ------------------------------------------


def test_the_recorded_process_is_alive(spawn_owner):
    owner = spawn_owner()
    assert is_alive(real_identity(owner.pid)) == (True, "running")


def test_a_zombie_owner_is_dead(zombie):
    pid = zombie()
    assert is_alive(ProcessIdentity(pid, start_ticks(pid), KERNEL_BOOT_ID)) == (False, "process exited")


@pytest.mark.parametrize("shift", [1, -1], ids=["started-later", "started-earlier"])
def test_a_pid_whose_start_differs_is_another_process(spawn_owner, shift):
    owner = spawn_owner()
    recorded = ProcessIdentity(owner.pid, start_ticks(owner.pid) + shift, KERNEL_BOOT_ID)
    assert is_alive(recorded) == (False, "pid reused by another process")


def test_a_process_of_the_previous_boot_is_dead_even_if_its_pid_and_start_match(spawn_owner):
    owner = spawn_owner()
    recorded = ProcessIdentity(owner.pid, start_ticks(owner.pid), "a-previous-boot")
    assert is_alive(recorded) == (False, "machine rebooted")


# --- the boot id and its test seam ----------------------------------------------------------


def test_the_boot_id_is_the_kernels():
    assert boot_id() == KERNEL_BOOT_ID


def test_the_boot_id_file_seam_stands_in_for_the_kernels(tmp_path):
    seam = tmp_path / "boot_id"
    seam.write_text("simulated-boot-2\n")
    code = (
        "from omnid.identity import boot_id, inspect; import os; "
        "print(boot_id(), inspect(os.getpid()).identity.boot_id)"
    )
    assert run_python(code, OMNID_BOOT_ID_FILE=str(seam)).split() == ["simulated-boot-2"] * 2


@pytest.mark.parametrize("make", ["missing", "empty", "link"])
def test_an_unusable_boot_id_file_is_an_error_naming_it(tmp_path, make):
    seam = tmp_path / "boot_id"
    if make == "empty":
        seam.write_text("\n")
    elif make == "link":
        (tmp_path / "target").write_text("planted\n")
        seam.symlink_to(tmp_path / "target")
    code = (
        "from omnid.identity import boot_id\n"
        "try:\n    print(boot_id())\nexcept RuntimeError as e:\n    print('error', e)"
    )
    out = run_python(code, OMNID_BOOT_ID_FILE=str(seam))
    assert out.startswith("error OMNID_BOOT_ID_FILE=") and str(seam) in out


# --- owner_process: who a session may be bound to -------------------------------------------


def test_a_running_process_of_the_caller_may_own_a_session(spawn_owner):
    owner = spawn_owner()
    info = owner_process(owner.pid, os.getuid())
    assert info.identity == real_identity(owner.pid) and info.uid == os.getuid()


def test_a_zombie_may_not_own_a_session(zombie):
    pid = zombie()
    with pytest.raises(NotFound) as exc:
        owner_process(pid, os.getuid())
    assert exc.value.details == {"field": "pid"}


def test_another_users_process_may_not_own_a_session(spawn_owner):
    owner = spawn_owner(user=NOBODY)
    with pytest.raises(PermissionDenied) as exc:
        owner_process(owner.pid, os.getuid())
    assert exc.value.details == {"field": "pid"}
    assert owner_process(owner.pid, NOBODY).uid == NOBODY


@pytest.mark.parametrize("pid", [0, -1, True, identity.pid_max() + 1])
def test_pids_out_of_range_are_invalid(pid):
    with pytest.raises(Invalid) as exc:
        owner_process(pid, os.getuid())
    assert exc.value.details == {"field": "pid"}


def test_the_highest_pid_is_in_range_but_runs_nothing():
    # Pids run up to pid_max - 1, so pid_max passes the range check and is found by no one.
    with pytest.raises(NotFound):
        owner_process(identity.pid_max(), os.getuid())


def test_pid_max_is_the_kernels():
    assert identity.pid_max() == int(Path("/proc/sys/kernel/pid_max").read_text())


def test_what_the_reaper_knows_is_trusted_without_a_look_at_proc(spawn_owner):
    owner = spawn_owner()
    known = identity.ProcessInfo(ProcessIdentity(owner.pid, 12345, "known-boot"), os.getuid())
    assert owner_process(owner.pid, os.getuid(), known) is known


# --- check_ancestor ------------------------------------------------------------------------


def test_the_caller_and_its_ancestors_are_allowed_and_others_not(spawn_owner):
    me = os.getpid()
    check_ancestor(me, me)
    check_ancestor(os.getppid(), me)
    check_ancestor(1, me)
    stranger = spawn_owner()
    with pytest.raises(PermissionDenied) as exc:
        check_ancestor(stranger.pid, me)
    assert exc.value.details["field"] == "pid"
    assert exc.value.details["ancestors"][0] == os.getppid()


def test_cwd_of_a_process_and_of_none(spawn_owner):
    owner = spawn_owner()
    assert identity.cwd_of(owner.pid) == os.getcwd()
    owner.kill()
    owner.wait()
    assert identity.cwd_of(owner.pid) is None


# --- the portable path (psutil), which macOS and the BSDs take, checked against /proc -------


@pytest.fixture
def portable(monkeypatch):
    """identity as it runs where there is no /proc/PID/stat to read."""
    monkeypatch.setattr(identity, "LINUX", False)


def test_the_portable_path_reads_the_kernels_create_time_in_microseconds(portable, spawn_owner):
    owner = spawn_owner()
    info = inspect(owner.pid)
    assert info is not None and info.uid == os.getuid()
    created = round(psutil.Process(owner.pid).create_time() * 1_000_000)
    assert info.identity == ProcessIdentity(owner.pid, created, boot_id())
    assert is_alive(info.identity) == (True, "running")
    other = spawn_owner(user=NOBODY)
    assert inspect(other.pid).uid == NOBODY


def test_the_portable_path_sees_zombies_and_exited_processes_as_gone(portable, spawn_owner, zombie):
    assert inspect(zombie()) is None
    gone = spawn_owner()
    gone.kill()
    gone.wait()
    assert inspect(gone.pid) is None


# --- ranges, messages, uids and ancestry in detail ----------------------------------------------


def test_init_and_the_daemon_itself_are_in_range_but_may_not_own_a_session():
    with pytest.raises(PermissionDenied, match=r"^pid 1 is the init process, which never exits: a session bound") as e:
        owner_process(1, os.getuid())
    assert e.value.details == {"field": "pid"}
    daemon = rf"^pid {os.getpid()} is the omnid daemon itself, which cannot own a session$"
    with pytest.raises(Invalid, match=daemon) as e:
        owner_process(os.getpid(), os.getuid())
    assert e.value.details == {"field": "pid"}
    with pytest.raises(PermissionDenied, match=r"^process 2 is a kernel thread, which no tool runs in") as e:
        owner_process(2, os.getuid())  # kthreadd
    assert e.value.details == {"field": "pid"}


def test_refusals_say_which_pid_and_why(spawn_owner, zombie):
    with pytest.raises(Invalid, match=rf"^pid 0 is out of range: must be between 1 and {identity.pid_max()}$") as e:
        owner_process(0, os.getuid())
    assert e.value.details == {"field": "pid"}
    pid = zombie()
    with pytest.raises(NotFound, match=rf"^no running process has pid {pid}$") as e:
        owner_process(pid, os.getuid())
    assert e.value.details == {"field": "pid"}
    other = spawn_owner(user=NOBODY)
    not_the_callers = rf"^process {other.pid} belongs to uid {NOBODY}, not to the caller \(uid 4242\)$"
    with pytest.raises(PermissionDenied, match=not_the_callers) as e:
        owner_process(other.pid, 4242)
    assert e.value.details == {"field": "pid"}
    stranger = spawn_owner()
    not_an_ancestor = rf"^process {stranger.pid} is neither the caller \(pid {os.getpid()}\) nor one of its ancestors$"
    with pytest.raises(PermissionDenied, match=not_an_ancestor):
        check_ancestor(stranger.pid, os.getpid())


def test_a_process_whose_real_uid_is_the_callers_is_the_callers_whatever_its_effective_uid(tmp_path):
    """A setuid program run by the user: /proc shows it as owned by its effective uid, but
    the user started it and it may own the user's sessions."""
    if os.getuid() != 0:
        pytest.skip("needs root to make a process with differing real and effective uids")
    code = (
        f"import os, sys; os.setresuid({NOBODY}, 0, 0); sys.stdout.write('ready\\n'); sys.stdout.flush(); "
        "sys.stdin.read()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline() == "ready\n"
        info = owner_process(proc.pid, NOBODY)
        assert info.identity == real_identity(proc.pid) and info.uid == 0
        with pytest.raises(PermissionDenied):
            owner_process(proc.pid, 4242)
    finally:
        proc.kill()
        proc.wait()


def test_ancestors_are_those_of_the_caller_named(spawn_owner):
    child = spawn_owner()
    check_ancestor(os.getpid(), child.pid)  # the test process is the child's parent
    with pytest.raises(PermissionDenied) as exc:
        check_ancestor(spawn_owner().pid, child.pid)
    assert exc.value.details["ancestors"][:2] == [os.getpid(), os.getppid()]


def test_a_caller_that_is_gone_has_no_ancestors(spawn_owner):
    gone = spawn_owner()
    gone.kill()
    gone.wait()
    with pytest.raises(PermissionDenied) as exc:
        check_ancestor(1, gone.pid)
    assert exc.value.details == {"field": "pid", "ancestors": []}


def test_the_boot_id_file_is_read_in_full_up_to_its_first_256_bytes(tmp_path):
    seam = tmp_path / "boot_id"
    seam.write_text("  boot-x \n")
    assert identity._boot_id_from(str(seam)) == "boot-x"
    seam.write_text("y" * 300)
    assert identity._boot_id_from(str(seam)) == "y" * 256
    os.mkfifo(tmp_path / "fifo")  # nothing writes to it: must not block
    with pytest.raises(RuntimeError, match="the file is empty"):
        identity._boot_id_from(str(tmp_path / "fifo"))


def test_a_missing_boot_id_file_is_named_with_the_reason(tmp_path):
    missing = tmp_path / "missing"
    with pytest.raises(RuntimeError, match=rf"^OMNID_BOOT_ID_FILE={missing}: No such file or directory$"):
        identity._boot_id_from(str(missing))


def test_the_ancestors_named_in_a_refusal_are_the_nearest_16(spawn_owner, tmp_path):
    nest = tmp_path / "nest.sh"  # each level runs the next and then `true`, so none execs away
    nest.write_text('if [ "$1" -gt 0 ]; then bash "$0" $(($1 - 1)); else sleep 600; fi; true\n')
    chain = subprocess.Popen(["bash", str(nest), "18"], start_new_session=True)
    try:
        def innermost():
            sleeps = [p for p in psutil.Process(chain.pid).children(recursive=True) if p.name() == "sleep"]
            return sleeps[0] if sleeps else None

        caller = wait_for(innermost, what="the innermost process of the chain")
        expected = [p.pid for p in caller.parents()][:16]
        with pytest.raises(PermissionDenied) as exc:
            check_ancestor(spawn_owner().pid, caller.pid)
        assert exc.value.details["ancestors"] == expected and len(expected) == 16
    finally:
        os.killpg(chain.pid, signal.SIGKILL)
        chain.wait()


def test_what_the_reaper_knew_of_a_process_since_gone_does_not_make_it_the_callers(spawn_owner):
    """The uid the reaper recorded differs from the caller's, and the real uid cannot be
    read any more: the process is not the caller's, whatever uid the caller has."""
    gone = spawn_owner()
    known = identity.ProcessInfo(real_identity(gone.pid), os.getuid())
    gone.kill()
    gone.wait()
    for caller_uid in (1, 4242):
        with pytest.raises(PermissionDenied, match=rf"^process {gone.pid} belongs to uid {os.getuid()}, not"):
            owner_process(gone.pid, caller_uid, known)


def test_a_pidfd_inode_is_that_of_a_pidfd_of_the_running_process_and_none_once_it_is_gone(spawn_owner):
    proc = spawn_owner()
    fd = os.pidfd_open(proc.pid)
    try:
        expected = os.fstat(fd).st_ino
    finally:
        os.close(fd)
    before = open_fds()
    assert identity.pidfd_inode(proc.pid) == expected
    assert open_fds() == before, "the pidfd is closed again"
    if identity.pidfd_inodes_unique():
        assert identity.pidfd_inode(os.getpid()) != expected
    proc.kill()
    proc.wait()
    assert identity.pidfd_inode(proc.pid) is None


def test_a_boot_id_file_that_is_not_utf8_is_read_with_replacement_characters(tmp_path):
    seam = tmp_path / "boot_id"
    seam.write_bytes(b"boot-\xff\xfe-1\n")
    assert identity._boot_id_from(str(seam)) == "boot-\ufffd\ufffd-1"


def test_a_boot_id_file_that_is_a_link_is_refused_not_followed(tmp_path):
    (tmp_path / "target").write_text("planted\n")
    seam = tmp_path / "boot_id"
    seam.symlink_to(tmp_path / "target")
    with pytest.raises(RuntimeError, match=rf"^OMNID_BOOT_ID_FILE={seam}: Too many levels of symbolic links$"):
        identity._boot_id_from(str(seam))


def test_a_pidfd_on_descriptor_0_is_used_and_closed_too(spawn_owner):
    """A daemon started with stdin closed (``omnid serve <&-``) gets its pidfds from fd 0 up."""
    if not identity.pidfd_inodes_unique():
        pytest.skip("this kernel has no pidfs")
    owner = spawn_owner()
    stdin = os.dup(0)
    os.close(0)
    try:
        info = inspect(owner.pid)
        with pytest.raises(OSError):
            os.fstat(0)  # closed again
    finally:
        os.dup2(stdin, 0)
        os.close(stdin)
    assert info is not None and info.identity.ino == identity.pidfd_inode(owner.pid)


@pytest.mark.parametrize("free", [1, 2])
def test_with_one_descriptor_left_inspect_reads_proc_without_the_pidfd_and_with_two_with_it(spawn_owner, zombie, free):
    """Out of file descriptors but one, the pidfd would take the one /proc needs: the start
    time alone has to do (as when no pidfd can be opened), rather than no answer at all."""
    if not identity.pidfd_inodes_unique():
        pytest.skip("this kernel has no pidfs: inspect holds no pidfd")
    owner, dead = spawn_owner(), zombie()
    ino = identity.pidfd_inode(owner.pid)
    before = open_fds()
    with no_free_fds(leave=free):
        info, gone = inspect(owner.pid), inspect(dead)
    assert info is not None and info.identity == real_identity(owner.pid) and info.uid == os.getuid()
    assert info.identity.ino == (ino if free == 2 else None)
    assert gone is None
    assert open_fds() == before, "every descriptor it opened is closed again"
