"""The programs built on top of cnnjax's libraries (train, explain, data, pretrained, viz).

`report` is explain.py's body (load a run or a weight file, decode photos, run the explainers, write figures) and
`serve` the page of `explain.py --serve`. They live here, not in cnnjax.explain, so that the explainers depend on
the models alone: importing them pulls in neither the training loop nor the data pipeline nor plotting.
"""
