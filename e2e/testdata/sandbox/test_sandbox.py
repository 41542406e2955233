"""Tests that pass only inside ci's sandbox: each asserts one defence."""
import os
import socket

import pytest


def test_not_root():
    assert os.getuid() != 0
    assert os.getgid() != 0


def test_home_is_writable_tmp():
    assert os.environ["HOME"] == "/tmp"
    with open("/tmp/scratch.txt", "w") as f:
        f.write("tests may write here")


def test_project_is_read_only():
    with pytest.raises(OSError):
        with open("/workspace/new_file.txt", "w") as f:
            f.write("x")
    with pytest.raises(OSError):
        with open(__file__, "a") as f:
            f.write("# tampered\n")


def test_root_fs_is_read_only():
    for path in ("/evil", "/etc/evil", "/usr/evil"):
        with pytest.raises(OSError):
            open(path, "w").close()


def test_only_loopback():
    assert os.listdir("/sys/class/net") == ["lo"]
    with pytest.raises(OSError):
        socket.create_connection(("1.1.1.1", 53), timeout=1)


def status_field(name):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(name + ":"):
                return line.split(":", 1)[1].strip()
    return None


def test_no_capabilities():
    assert int(status_field("CapEff"), 16) == 0
    assert int(status_field("CapBnd"), 16) == 0


def test_no_new_privileges():
    assert status_field("NoNewPrivs") == "1"


def read_first(*paths):
    for p in paths:
        try:
            with open(p) as f:
                return f.read().strip()
        except OSError:
            continue
    return None


def test_memory_and_pids_are_limited():
    mem = read_first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes")
    assert mem is not None and mem != "max" and int(mem) <= 64 << 30
    pids = read_first("/sys/fs/cgroup/pids.max", "/sys/fs/cgroup/pids/pids.max")
    assert pids is not None and pids != "max"
