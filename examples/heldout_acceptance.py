"""How often a SPACE model's masks are right, on held-out prompts no training run can draw.

For each model (a gated adapter folder from `save_space_adapter`, or any SPACE model folder such as a
training checkpoint) it runs greedy SPACE decoding at the full layout (every trained mask, every group: the
paper's layout, independent of this machine's speed) on prompts of the HELD-OUT split of
`transformers_space.training.distill` (code: library functions phrased as requests, chat: ShareGPT first
turns; a fixed 1-in-20 share chosen by hash, never written by `make_distill_data.py`), and reports per
suite the acceptance rate of each mask (alpha_j = P(mask j right | masks before it right)) and the tokens
each pass emitted. With several checkpoints of one run it also draws the learning curve (first-mask
acceptance and tokens per pass against the training step) as a PNG.

    python examples/heldout_acceptance.py --models hub_configs/smollm2-135m-space-gated \
        data/run/checkpoint-100 data/run/checkpoint-200 --code 12 --chat 12 --output bench_out/heldout
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from pathlib import Path

import torch
from tqdm.auto import tqdm

from transformers_space import SpaceConfig, SpaceLayoutPlan
from transformers_space.arguments import add_dtype_argument
from transformers_space.decoding.lookup import LOOKUP_EXTENSION
from transformers_space.decoding.planning import acceptance_rates
from transformers_space.loading import load_model
from transformers_space.prompts import encode_prompts
from transformers_space.training.distill import select_prompts

logger = logging.getLogger("heldout_acceptance")
HELDOUT_SEED = 0  # the order of held-out prompts; the split itself does not depend on it


def measure(model, tokenizer, prompts: list[str], max_new_tokens: int, context_lookup: bool = True,
            lookup_extension: int = LOOKUP_EXTENSION) -> dict:
    """Per-mask acceptance and tokens per pass of greedy SPACE at the full layout, pooled over `prompts`.

    With the lookup's extension, a pass after one that accepted an extension in part has no drafts and counts as a
    rejection of mask 0 here: `lookup_extension=0` gives the masks' own rates."""
    trained = SpaceConfig.of(model).num_mask_tokens
    emitted, accepted = [], []
    for prompt in tqdm(prompts, desc="held-out prompts", leave=False):
        ids = encode_prompts(tokenizer, [prompt])["input_ids"]
        out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, use_space=True,
                             return_dict_in_generate=True, space_layout=SpaceLayoutPlan.full(trained),
                             context_lookup=context_lookup, lookup_extension=lookup_extension)
        passes = out.tokens_per_pass[0]
        emitted += passes[1:]  # the first pass (prefill) has no candidates to verify
        accepted += [count - 1 for count in passes[1:-1]]  # the last pass may be cut short by a stop
    return {"acceptance": acceptance_rates(accepted, trained), "tokens_per_pass": sum(emitted) / len(emitted),
            "passes": len(emitted)}


def step_of(path: str) -> int | None:
    match = re.search(r"checkpoint-(\d+)", path)
    return int(match.group(1)) if match else None


def plot(results: dict[str, dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError as error:
        raise SystemExit("Drawing the learning curve needs matplotlib: pip install 'transformers-space[bench]'") \
            from error
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curve = sorted((step_of(name), name) for name in results if step_of(name) is not None)
    suites = sorted({suite for result in results.values() for suite in result})
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for suite in suites:
        steps = [step for step, _ in curve]
        left.plot(steps, [results[name][suite]["acceptance"][0] for _, name in curve], marker="o", label=suite)
        right.plot(steps, [results[name][suite]["tokens_per_pass"] for _, name in curve], marker="o", label=suite)
    left.set(xlabel="training step", ylabel="first-mask acceptance", title="held-out first-mask acceptance")
    right.set(xlabel="training step", ylabel="tokens per pass (k=4, every group)", title="held-out tokens per pass")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True, help="Adapter folders or SPACE model folders.")
    parser.add_argument("--code", type=int, default=12, help="Held-out code prompts.")
    parser.add_argument("--chat", type=int, default=12, help="Held-out chat prompts.")
    parser.add_argument("--max-new-tokens", type=int, default=96)
    parser.add_argument("--packages", nargs="*", default=[], help="As given to make_distill_data.py.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-context-lookup", action="store_true",
                        help="Draft from the masks alone (default: with the context lookup, as generate does).")
    parser.add_argument("--lookup-extension", type=int, default=LOOKUP_EXTENSION,
                        help="Most lookup tokens drafted after the masks' drafts (default: as generate; 0: none).")
    add_dtype_argument(parser)
    parser.add_argument("--output", default="bench_out/heldout", help="Folder for results.json (and curve.png).")
    args = parser.parse_args()
    for name in ("code", "chat"):
        if getattr(args, name) < 0:
            parser.error(f"--{name} must be at least 0")
    if args.code + args.chat == 0:
        parser.error("ask for at least one held-out prompt (--code or --chat)")
    if args.max_new_tokens < 2:
        parser.error("--max-new-tokens must be at least 2")
    missing = [path for path in args.models if not Path(path).is_dir()]
    if missing:
        parser.error(f"no such folder: {', '.join(missing)}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.set_num_threads(args.threads)
    suites = {"code": select_prompts("code", args.code, "heldout", HELDOUT_SEED, args.packages),
              "chat": select_prompts("chat", args.chat, "heldout", HELDOUT_SEED)}
    results: dict[str, dict] = {}
    for path in args.models:
        model, tokenizer = load_model(path, dtype=getattr(torch, args.dtype))
        results[path] = {suite: measure(model, tokenizer, prompts, args.max_new_tokens, not args.no_context_lookup,
                                        args.lookup_extension)
                         for suite, prompts in suites.items() if prompts}
        for suite, result in results[path].items():
            logger.info("%s %s: acceptance per mask %s, %.2f tokens per pass (%d passes)", path, suite,
                        [round(rate, 3) for rate in result["acceptance"]], result["tokens_per_pass"],
                        result["passes"])
        del model
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    settings = {"code": args.code, "chat": args.chat, "max_new_tokens": args.max_new_tokens,
                "packages": args.packages, "dtype": args.dtype, "context_lookup": not args.no_context_lookup,
                "lookup_extension": args.lookup_extension}
    (output / "results.json").write_text(json.dumps({"settings": settings, "results": results}, indent=2) + "\n")
    if sum(step_of(path) is not None for path in args.models) >= 2:
        plot(results, output / "curve.png")
        logger.info("learning curve: %s", output / "curve.png")
    print(f"{'model':60s} {'suite':5s} {'alpha_1..k':28s} tokens/pass")
    for path, per_suite in results.items():
        for suite, result in per_suite.items():
            rates = " ".join(f"{rate:.2f}" for rate in result["acceptance"])
            print(f"{path[-60:]:60s} {suite:5s} {rates:28s} {result['tokens_per_pass']:.2f}")


if __name__ == "__main__":
    main()
