"""The names of the files in a run folder (the tree is drawn in lambexp/folders/layout.py): the
writer, the readers and the config loader all spell them from here. Torch-free."""

CONFIG_FILE = "config.yaml"  # the resolved config, written before training
ENVIRONMENT_FILE = "environment.json"  # command line, versions, device, git commit
METRICS_FILE = "metrics.jsonl"  # an arm's every logged number, exact
SUMMARY_FILE = "summary.json"  # an arm's outcome
CHECKPOINT_FILE = "checkpoint.pt"  # while an arm is unfinished
MODEL_FILE = "model.pt"  # an arm's final weights, once finished
TUNING_FILE = "tuning.json"  # a tuned experiment's picks, each arm's chosen point and every point tried
