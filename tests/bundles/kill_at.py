"""``python -m monai.bundle <args>``, killed with SIGKILL right after its N-th training iteration (counted over every
trainer the run starts, stage after stage): a crash at a chosen point, for the resume tests.

Usage: ``python tests/bundles/kill_at.py N run --config_file ...``; ``N = 0`` never kills. When the run ends (not
killed), the last line of stdout is ``TRAINERS <json>``: for each trainer the run started, in order, its class, epoch
length, the epoch it started after (``0``, or the epoch it resumed from) and the iterations it ran.
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys

from ignite.engine import Engine, Events
from monai.engines import Trainer


def main() -> None:
    limit = int(sys.argv[1])
    trainers: list[dict] = []
    fire = Engine._fire_event

    def counting(self: Engine, event_name, *args, **kwargs):
        if event_name == Events.STARTED and isinstance(self, Trainer):
            trainers.append({"trainer": type(self).__name__, "iterations": 0, "engine": id(self)})
        fire(self, event_name, *args, **kwargs)
        if event_name == Events.STARTED and isinstance(self, Trainer):
            trainers[-1].update(start_epoch=int(self.state.epoch), epoch_length=int(self.state.epoch_length or 0))
        if event_name == Events.ITERATION_COMPLETED and isinstance(self, Trainer):
            trainers[-1]["iterations"] += 1
            if limit and sum(t["iterations"] for t in trainers) == limit:
                sys.stdout.flush()
                sys.stderr.flush()
                os.kill(os.getpid(), signal.SIGKILL)

    Engine._fire_event = counting
    atexit.register(lambda: print("TRAINERS " + json.dumps([{k: v for k, v in t.items() if k != "engine"}
                                                            for t in trainers]), flush=True))
    sys.argv = ["monai.bundle", *sys.argv[2:]]
    runpy.run_module("monai.bundle", run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
