"""Supervisor-side confinement: what an agent may reach, and its process tree."""
