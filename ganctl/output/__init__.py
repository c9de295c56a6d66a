"""What ganctl shows and sends: the terminal (console), a run's progress and records
(progress), and the sinks that watch a run (sinks)."""
