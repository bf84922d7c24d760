"""The run folder as one concept: its layout (:mod:`.layout`), its status and owner (:mod:`.status`),
the config keys that do or do not matter to a resume, a result or a setting (:mod:`.keys`), and the
files a run must not write through a symlink (:mod:`.links`). Imports only gn_detect.io, yaml and omegaconf:
every package may ask it."""
from .keys import flatten
from .layout import RunFolder, run_folder_of, run_subfolder
from .status import finished, load_status, owner_gone, pid_alive, read_status, write_status

__all__ = ["RunFolder", "finished", "flatten", "load_status", "owner_gone", "pid_alive", "read_status", "run_folder_of",
           "run_subfolder", "write_status"]
