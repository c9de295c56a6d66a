"""The metrics ganctl ships, one file each: a Metric (its scores, how they are shown, its protocol
line) and the function that computes it, which imports the maths (ganctl/metrics/fid.py, kid.py,
pr.py) when it runs. ganctl.metrics.METRICS registers each with one line."""
