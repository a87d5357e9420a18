"""Confinement of an agent process, applied by the bootstrap before the
agent's code runs: Landlock, seccomp, resource limits, privileges and a
private ``/dev/shm``. Trusted code that runs in the agent's process; it
imports nothing from the supervisor.
"""
