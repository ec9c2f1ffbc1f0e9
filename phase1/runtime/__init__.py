"""The worker processes phase1 runs: its worker classes on the engine, bounded shutdown, the
supervisor, periodic maintenance (orphan sweep, reconciler), start-up checks and the monitor
that `phase1 info` reads."""
