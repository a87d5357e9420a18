"""The trusted side of capsup: kernel, store, policy, server, watcher, CLI."""
