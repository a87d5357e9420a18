"""Landlock: the agent's filesystem, TCP and scope rules, through raw syscalls.

A Landlock domain is what the kernel enforces on this process and every
descendant, for good: nothing it does later can widen it. The rights below
are those of ``include/uapi/linux/landlock.h``; which ones a kernel knows
depends on its Landlock ABI, so they are kept as one table (the ABI that
added them). A ruleset *handles* every right of the detected ABI: what it
handles and no rule allows is denied; a right it does not handle (one newer
than this table) stays as the kernel leaves it, allowed, which is why the
report names the ABI whose rights were enforced.

The syscalls are the same on x86_64 and aarch64 (the generic numbers).
"""

from __future__ import annotations

import ctypes
import os
import stat
from dataclasses import dataclass

from capsup.agents.confine._libc import describe_errno, prctl, syscall
from capsup.agents.confine.errors import ConfinementError

__all__ = [
    "DEVICE_FILES",
    "ETC_FILES",
    "FilesystemRules",
    "LandlockReport",
    "abi_version",
    "restrict_self",
]

_SYS_CREATE_RULESET = 444
_SYS_ADD_RULE = 445
_SYS_RESTRICT_SELF = 446
_CREATE_RULESET_VERSION = 1 << 0
_RULE_PATH_BENEATH = 1
_PR_SET_NO_NEW_PRIVS = 38

# Filesystem rights.
EXECUTE = 1 << 0
WRITE_FILE = 1 << 1
READ_FILE = 1 << 2
READ_DIR = 1 << 3
REMOVE_DIR = 1 << 4
REMOVE_FILE = 1 << 5
MAKE_CHAR = 1 << 6
MAKE_DIR = 1 << 7
MAKE_REG = 1 << 8
MAKE_SOCK = 1 << 9
MAKE_FIFO = 1 << 10
MAKE_BLOCK = 1 << 11
MAKE_SYM = 1 << 12
REFER = 1 << 13
TRUNCATE = 1 << 14
IOCTL_DEV = 1 << 15
# Network rights.
BIND_TCP = 1 << 0
CONNECT_TCP = 1 << 1
# Scopes.
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0
SCOPE_SIGNAL = 1 << 1


@dataclass(frozen=True, slots=True)
class _Rights:
    fs: int = 0
    net: int = 0
    scoped: int = 0


#: What each Landlock ABI added; an ABI handles its row and every row before it.
_ADDED_BY_ABI: dict[int, _Rights] = {
    1: _Rights(
        fs=EXECUTE
        | WRITE_FILE
        | READ_FILE
        | READ_DIR
        | REMOVE_DIR
        | REMOVE_FILE
        | MAKE_CHAR
        | MAKE_DIR
        | MAKE_REG
        | MAKE_SOCK
        | MAKE_FIFO
        | MAKE_BLOCK
        | MAKE_SYM
    ),
    2: _Rights(fs=REFER),  # link and rename across directories (denied by ABI 1 outright)
    3: _Rights(fs=TRUNCATE),  # truncate(), ftruncate() and open(O_TRUNC)
    4: _Rights(net=BIND_TCP | CONNECT_TCP),
    5: _Rights(fs=IOCTL_DEV),  # ioctl() on device files opened after restriction
    6: _Rights(scoped=SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL),
    7: _Rights(),  # audit logging flags for restrict_self only; no new right
}
#: The newest ABI this table knows.
_KNOWN_ABI = max(_ADDED_BY_ABI)

#: The only rights a rule on a non-directory may carry (others are EINVAL).
_FILE_RIGHTS = EXECUTE | WRITE_FILE | READ_FILE | TRUNCATE | IOCTL_DEV

#: Each kind of grant of :class:`FilesystemRules` and the rights it gives
#: beneath its paths (intersected with what the ABI handles).
_GRANTS: tuple[tuple[str, int], ...] = (
    ("read_exec", READ_FILE | READ_DIR | EXECUTE),
    ("read_only", READ_FILE | READ_DIR),
    ("read_write", ~0),  # everything the ABI handles: make, remove, refer, truncate...
    # TRUNCATE because a shell's `> /dev/null` opens with O_TRUNC.
    ("devices", READ_FILE | WRITE_FILE | TRUNCATE | IOCTL_DEV),
)

#: Files under /etc that ordinary programs read at run time; grant them read-only.
ETC_FILES: tuple[str, ...] = (
    "/etc/ld.so.cache",  # the dynamic linker finds shared libraries through it
    "/etc/ld.so.conf",  # the library path configuration, read by ldconfig -p and loaders
    "/etc/ld.so.conf.d",  # ... and its included fragments
    "/etc/localtime",  # the local time zone (time.localtime, date, logging)
    "/etc/timezone",  # Debian's time zone name, read by tzlocal and friends
    "/etc/ssl/certs",  # TLS roots: OpenSSL's default CA directory and bundle
    "/etc/ssl/openssl.cnf",  # OpenSSL reads its configuration when it starts (import ssl)
    "/etc/ca-certificates",  # TLS roots on Arch (/etc/ssl/certs links into it)
    "/etc/pki/tls",  # TLS roots and OpenSSL configuration on Fedora and RHEL
    "/etc/pki/ca-trust",  # ... where /etc/pki/tls/certs links to
    "/etc/nsswitch.conf",  # which sources getpwuid, getaddrinfo and friends consult
    "/etc/passwd",  # getpwuid: Python's `~` expansion without HOME, getpass, ls -l
    "/etc/group",  # getgrgid: id, ls -l, shutil.chown by name
    "/etc/hosts",  # name resolution of localhost and local names
    "/etc/resolv.conf",  # the resolver's configuration, read by getaddrinfo
    "/etc/gai.conf",  # getaddrinfo's address ordering
    "/etc/host.conf",  # the resolver's options
    "/etc/services",  # getservbyname, getaddrinfo with a service name ("https")
    "/etc/protocols",  # getprotobyname (socket modules resolve "tcp")
    "/etc/locale.alias",  # setlocale resolves locale aliases
    "/etc/mime.types",  # Python's mimetypes module
)

#: Device files programs open by name: bit buckets, randomness, the terminal.
DEVICE_FILES: tuple[str, ...] = (
    "/dev/null",
    "/dev/zero",
    "/dev/random",
    "/dev/urandom",
    "/dev/full",
    "/dev/tty",
)


@dataclass(frozen=True, slots=True)
class FilesystemRules:
    """What a process may reach beneath each path once restricted.

    - ``read_exec``: read files, list directories, execute (the runtime);
    - ``read_only``: read files and list directories, never execute;
    - ``read_write``: every filesystem right of the ABI (create, remove,
      rename, truncate, make sockets and fifos...);
    - ``devices``: read and write device files (and their ioctls, ABI 5+).

    A path that is not a directory gets the file rights among these only.
    A path that does not exist is skipped (and listed in the report).
    """

    read_exec: tuple[str, ...] = ()
    read_only: tuple[str, ...] = ()
    read_write: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()


@dataclass(frozen=True)
class LandlockReport:
    """What :func:`restrict_self` enforced: the ABI whose rights were handled
    (the kernel's, capped at the newest this module knows), and which kinds
    of rule beyond the filesystem's that ABI has."""

    abi: int
    tcp: bool
    scoped: bool
    skipped: tuple[str, ...]


class _RulesetAttr(ctypes.Structure):
    _fields_ = (
        ("handled_access_fs", ctypes.c_uint64),
        ("handled_access_net", ctypes.c_uint64),
        ("scoped", ctypes.c_uint64),
    )


class _PathBeneathAttr(ctypes.Structure):
    _pack_ = 1  # the kernel's struct is __attribute__((packed))
    _fields_ = (
        ("allowed_access", ctypes.c_uint64),
        ("parent_fd", ctypes.c_int32),
    )


def abi_version() -> int:
    """The kernel's Landlock ABI; 0 when Landlock is absent, disabled at boot
    or refused (a seccomp filter of a container, say)."""
    try:
        return syscall(
            "landlock",
            "landlock_create_ruleset",
            _SYS_CREATE_RULESET,
            0,
            0,
            _CREATE_RULESET_VERSION,
        )
    except ConfinementError:
        return 0


def _handled(abi: int) -> _Rights:
    """Every right of ``abi``: the rows of the table up to it."""
    fs = net = scoped = 0
    for version, added in _ADDED_BY_ABI.items():
        if version <= abi:
            fs, net, scoped = fs | added.fs, net | added.net, scoped | added.scoped
    return _Rights(fs, net, scoped)


def restrict_self(rules: FilesystemRules, *, abi: int | None = None) -> LandlockReport:
    """Confine this process (and its future children) to ``rules``, for good.

    Handles every filesystem right of ``abi`` (by default the kernel's),
    TCP bind and connect from ABI 4 (no network rule: all TCP is denied),
    and scopes abstract unix sockets and signals to the new domain from
    ABI 6. Sets ``PR_SET_NO_NEW_PRIVS`` first, as Landlock requires of an
    unprivileged process. Call it single-threaded: other threads stay
    unrestricted. Raises :class:`ConfinementError` (``"landlock"``) when
    anything fails, before or after the point of no return: fail closed.
    A path that does not exist is skipped; one that exists but cannot be
    opened (``EACCES`` on the way to it) is such a failure.
    """
    kernel = abi_version()
    if abi is None:
        abi = kernel
    if abi < 1:
        raise ConfinementError(
            "landlock", "Landlock is not available (needs Linux 5.13+ booted with lsm=landlock)"
        )
    if abi > kernel:
        raise ConfinementError("landlock", f"ABI {abi} asked for, the kernel has ABI {kernel}")
    abi = min(abi, _KNOWN_ABI)
    handled = _handled(abi)
    prctl("landlock", "PR_SET_NO_NEW_PRIVS", _PR_SET_NO_NEW_PRIVS, 1)
    attr = _RulesetAttr(handled.fs, handled.net, handled.scoped)
    ruleset = syscall(
        "landlock",
        "landlock_create_ruleset",
        _SYS_CREATE_RULESET,
        ctypes.addressof(attr),
        ctypes.sizeof(attr),
        0,
    )
    try:
        skipped = _add_rules(ruleset, rules, handled.fs)
        syscall("landlock", "landlock_restrict_self", _SYS_RESTRICT_SELF, ruleset, 0)
    finally:
        os.close(ruleset)
    return LandlockReport(
        abi=abi,
        tcp=handled.net != 0,
        scoped=handled.scoped != 0,
        skipped=skipped,
    )


def _add_rules(ruleset: int, rules: FilesystemRules, handled_fs: int) -> tuple[str, ...]:
    """Add one path-beneath rule per path; the paths that do not exist."""
    skipped: list[str] = []
    for kind, rights in _GRANTS:
        for path in getattr(rules, kind):
            if not _add_path(ruleset, path, rights & handled_fs):
                skipped.append(path)
    return tuple(skipped)


def _add_path(ruleset: int, path: str, rights: int) -> bool:
    """Allow ``rights`` beneath ``path``; False if it does not exist."""
    try:
        # O_PATH opens without reading or executing; a symlink is followed,
        # so the rule lands on its target (where the kernel checks access).
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as error:
        raise ConfinementError(
            "landlock", f"cannot open {path!r} for a rule: {describe_errno(error.errno or 0)}"
        ) from None
    try:
        if not stat.S_ISDIR(os.fstat(fd).st_mode):
            rights &= _FILE_RIGHTS
        beneath = _PathBeneathAttr(rights, fd)
        try:
            syscall(
                "landlock",
                "landlock_add_rule",
                _SYS_ADD_RULE,
                ruleset,
                _RULE_PATH_BENEATH,
                ctypes.addressof(beneath),
                0,
            )
        except ConfinementError as error:
            raise ConfinementError("landlock", f"{error.message} for {path!r}") from None
    finally:
        os.close(fd)
    return True
