"""The Python surface of ganctl: train a run, continue it, load its generator, sample, export
and score it.

    import ganctl
    run = ganctl.train(dataset="shapes", steps=1500, out="runs/shapes")
    G = ganctl.load("runs/shapes")              # or a checkpoint file, "latest", "best"
    G.grid(n=64).save("grid.png")               # the 8x8 grid `ganctl sample -n 64` writes
    scores = ganctl.evaluate("runs/shapes", num=10000)

These are what the command line runs, with the same checks, files and messages: every command
calls them and only formats their results. Failures raise ganctl.errors exceptions (GanctlError
and its subclasses, one-line messages); nothing here exits the interpreter.
  training.py   train, resume (and run_training, run_resume: with the CLI's progress log)
  generator.py  load -> Generator: sample, images, grid in memory
  files.py      sample_to_file, export_images, interpolate, style_mix, export
  scores.py     evaluate, inspect, runs, plot
  datasets.py   describe_data, caches, remove_caches
  importing.py  import_network (an NVlabs .pkl as a checkpoint; every function above also takes
                a .pkl where it takes a checkpoint, imported on the fly)
  checks.py     the argument checks they share; outputs.py what an output file may be
"""

from ganctl.api.datasets import caches, describe_data, remove_caches
from ganctl.api.files import export, export_images, interpolate, sample_to_file, style_mix
from ganctl.api.generator import Generator, load
from ganctl.api.importing import import_network
from ganctl.api.scores import evaluate, inspect, plot, runs
from ganctl.api.training import Run, resume, run_resume, run_training, train

__all__ = ["Generator", "Run", "caches", "describe_data", "evaluate", "export", "export_images",
           "import_network", "inspect", "interpolate", "load", "plot", "remove_caches", "resume",
           "run_resume", "run_training", "runs", "sample_to_file", "style_mix", "train"]
