"""The one pre-flight of every command: the command line's configs composed and validated with the
world size each run will have (command_line.py), then for tools/train.py and tools/evaluate.py the
run folder, the model's shapes on the meta device and every annotation file through the dataset's
own checks (commands.py, annotations.py); every problem one line, exit status 2, before any image
is opened or folder made. What it parsed goes explicitly to the run (``Parsed``)."""
from .annotations import Parsed, SplitSummary, annotation_problems, read_split
from .command_line import check_command_line, command_line_problems, planned_world_size, preflight
from .commands import evaluate_problems, model_problems, train_problems

__all__ = ["Parsed", "SplitSummary", "annotation_problems", "check_command_line", "command_line_problems",
           "evaluate_problems", "model_problems", "planned_world_size", "preflight", "read_split", "train_problems"]
