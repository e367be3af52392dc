"""The files a finished simulation run leaves, for tests that read run folders."""

import json
import math


def write_run(run_dir, *, accuracy, epsilons, examples, state="complete"):
    """The files a finished run leaves: status.json and metrics.jsonl."""
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(
        json.dumps({"state": state, "final_accuracy": accuracy, "final_round": 2})
    )
    clients = [
        {"num-examples": n, "epsilon": e, "delta": 1e-3, "noise-multiplier": 1.5}
        if e is not None
        else {"num-examples": n}
        for n, e in zip(examples, epsilons, strict=True)
    ]
    finite = [e for e in epsilons if e is not None]
    rows = [
        {"round": 0, "central-accuracy": 0.1},
        {
            "round": 2,
            "epsilon-max": max(finite) if finite else math.nan,
            "clients": clients,
        },
    ]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return run_dir
