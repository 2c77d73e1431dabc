"""``caretally worker`` under pyinstrument, switched on and off by signals.

    CARETALLY_PROFILE_OUT=FILE.json python benchmarks/pipeline_profiled_worker.py worker ...

``benchmarks/pipeline.py --profile`` starts the worker through this when py-spy is not
installed. The arguments are ``caretally``'s. ``START_SIGNAL`` starts the profiler and
``STOP_SIGNAL`` stops it and saves the session (pyinstrument JSON) to
``$CARETALLY_PROFILE_OUT``, written to a temporary name and then renamed, so the file
appears whole. The real-time signals are used because Faust's worker (mode) takes SIGINT,
SIGTERM, SIGUSR1 and SIGUSR2.

The sampler is wall-clock, main thread only (the event loop: the worker's consumers,
producer and fold all run there), ``async_mode="disabled"``: time waiting in
``epoll`` shows as the selector's frame, which is the worker's idle time.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path
from types import FrameType

ROOT = Path(__file__).resolve().parent.parent
START_SIGNAL = signal.SIGRTMIN + 3
STOP_SIGNAL = signal.SIGRTMIN + 4
INTERVAL_S = 0.001


def main() -> None:
    from pyinstrument import Profiler

    out = Path(os.environ["CARETALLY_PROFILE_OUT"])
    profiler = Profiler(interval=INTERVAL_S, async_mode="disabled")

    def start(_sig: int, _frame: FrameType | None) -> None:
        if not profiler.is_running:
            profiler.start()

    def stop(_sig: int, _frame: FrameType | None) -> None:
        if not profiler.is_running:
            return
        session = profiler.stop()
        part = out.with_name(out.name + ".part")
        session.save(part)
        part.rename(out)

    signal.signal(START_SIGNAL, start)
    signal.signal(STOP_SIGNAL, stop)
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from streams.cli.main import main as caretally

    sys.argv = ["caretally", *sys.argv[1:]]
    caretally()


if __name__ == "__main__":
    main()
