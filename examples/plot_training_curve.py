"""Draw a SAR-SFT run's held-out learning curve from its `trainer_state.json`: per-mask agreement with the
verifying model (`eval_sar_agreement_j`, what greedy SPACE accepts on the base model's own text) against the step.

    python examples/plot_training_curve.py data/run/checkpoint-450/trainer_state.json --output curve.png \
        --reference "shipped adapter=0.588,0.403,0.262,0.189"
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def agreement_curve(state: dict) -> dict[int, list[tuple[int, float]]]:
    """{mask j: [(step, agreement), ...]} from the evaluations in `log_history`."""
    curve: dict[int, list[tuple[int, float]]] = {}
    for entry in state["log_history"]:
        for key, value in entry.items():
            if key.startswith("eval_sar_agreement_"):
                curve.setdefault(int(key.rsplit("_", 1)[1]), []).append((entry["step"], value))
    if not curve:
        raise SystemExit("no eval_sar_agreement_* in log_history: train with --eval_data and --eval_strategy steps")
    return curve


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("state", help="trainer_state.json of the run's last checkpoint.")
    parser.add_argument("--output", required=True, help="PNG to write.")
    parser.add_argument("--reference", action="append", default=[],
                        help="NAME=a1,a2,...: another model's agreement per mask, drawn as dashed lines.")
    args = parser.parse_args()
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = agreement_curve(json.loads(Path(args.state).read_text()))
    figure, axis = plt.subplots(figsize=(7, 4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for j, points in sorted(curve.items()):
        steps, values = zip(*sorted(points), strict=True)
        axis.plot(steps, values, marker="o", color=colours[j - 1], label=f"mask {j}")
    for number, reference in enumerate(args.reference):
        name, values = reference.split("=", 1)
        for j, value in enumerate(float(v) for v in values.split(",")):
            axis.axhline(value, color=colours[j], linestyle="--" if number == 0 else ":", linewidth=1,
                         label=name if j == 0 else None)
    axis.set(xlabel="training step", ylabel="agreement with the verifier (held-out)", ylim=(0, 1),
             title="SAR-SFT held-out learning curve")
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(args.output, dpi=120)
    print(f"learning curve written to {args.output}")


if __name__ == "__main__":
    main()
