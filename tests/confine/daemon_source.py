"""Source text the child pythons of the cgroup and reaper tests share (they
run with ``python -c``, so they take code as text, not as an import)."""

#: Defines ``daemonize()``: starts a daemon that has left the process tree
#: (setsid, fork, the middle process exits and is reaped before it returns)
#: and waits, its standard descriptors closed, to be killed; returns its pid.
DAEMONIZE = r"""
import os, signal

def daemonize():
    read_end, write_end = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            os.write(write_end, str(os.getpid()).encode())
            os.closerange(0, 3)
            signal.pause()
        os._exit(0)
    os.close(write_end)
    daemon = int(os.read(read_end, 32))
    os.close(read_end)
    os.wait()
    return daemon
"""
